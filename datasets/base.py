"""The shared base of every dataset: split file -> (cached) few-shot sample -> base/new -> Datum lists.

A concrete dataset only declares its modality, class names in label order and download source::

    @DATASET_REGISTRY.register()
    class BTMRI(SplitDataset):
        MODALITY = "brain MRI"
        CLASSNAMES = ("glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain")
        DOWNLOAD = biomedcoop_download("BTMRI", gdrive_id="...")
"""
import os
import warnings

from vmfcoop.engine.data import DatasetBase, Datum
from vmfcoop.engine.utils import read_json, write_json

from .download import download_dataset
from .fewshot import make_fewshot_split, subsample_classes
from .layout import (
    DatasetNotFoundError,
    DatasetPaths,
    SplitFileError,
    check_classnames,
    check_images_present,
    parse_split,
    read_split,
)

UK_BIOBANK_NOTE = ("UK Biobank data are restricted: apply for access at https://www.ukbiobank.ac.uk, export the "
                   "images, and write the split file yourself.")


def cfg_get(node, key, default):
    """``node.key`` if the config defines it (older configs may lack the newer keys)."""
    return node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)


class SplitDataset(DatasetBase):
    MODALITY = ""
    CLASSNAMES = None  # tuple in label order; None: taken from the split file (DATASET.CLASSNAMES may pin it)
    DOWNLOAD = None  # a download.DownloadSpec, or None when the user must supply the data
    MANUAL_DOWNLOAD_NOTE = "It cannot be downloaded automatically; supply the images and split file yourself."

    @classmethod
    def extend_cfg(cls, cfg):
        """Dataset keys beyond Dassl's (called by vmfcoop.engine.config.extend_cfg)."""
        from vmfcoop.engine.config import add_node

        add_node(cfg, "DATASET", {"DOWNLOAD": True, "CLASSNAMES": []})
        add_node(cfg, "DATASET.PROMPTS", {"SOURCES": ["claude"], "N_PROMPTS": 50, "DIRS": [], "BANK_NAME": ""})

    def __init__(self, cfg):
        self.paths = self.locate(cfg)
        self.dataset_dir = self.paths.dataset_dir
        self.image_dir = self.paths.image_dir
        self.split_path = self.paths.split_path
        self.split_fewshot_dir = self.paths.fewshot_dir
        self.ensure_available(cfg)

        splits = read_split(self.split_path)
        declared = self.declared_classnames(cfg)
        if declared:
            check_classnames(splits, declared, self.split_path, self.dataset_name)
        check_images_present(splits, self.image_dir, self.split_path)

        train, val, test = splits["train"], splits["val"], splits["test"]
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            fewshot = self.load_or_make_fewshot(train, val, num_shots, cfg.SEED)
            train, val = fewshot["train"], fewshot["val"]
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=self.to_datums(train), val=self.to_datums(val), test=self.to_datums(test))

    @property
    def dataset_name(self):
        return type(self).__name__

    @property
    def modality(self):
        return self.MODALITY

    def locate(self, cfg):
        return DatasetPaths.under_root(cfg.DATASET.ROOT, self.dataset_name)

    def declared_classnames(self, cfg):
        pinned = list(cfg_get(cfg.DATASET, "CLASSNAMES", []) or [])
        if self.CLASSNAMES is not None and pinned and pinned != list(self.CLASSNAMES):
            raise SplitFileError(
                f"DATASET.CLASSNAMES {pinned} differs from the class names built into {self.dataset_name} "
                f"{list(self.CLASSNAMES)}; leave DATASET.CLASSNAMES empty for this dataset."
            )
        return list(self.CLASSNAMES) if self.CLASSNAMES is not None else pinned

    def ensure_available(self, cfg):
        """Download the dataset when it is missing and allowed; otherwise explain where to put it."""
        if self.paths.is_complete():
            return
        allowed = bool(cfg_get(cfg.DATASET, "DOWNLOAD", True))
        if self.DOWNLOAD is not None and allowed:
            download_dataset(self.DOWNLOAD, os.path.dirname(self.paths.dataset_dir))
            return
        if self.DOWNLOAD is None:
            how = self.MANUAL_DOWNLOAD_NOTE
        else:
            how = (f"Automatic download is disabled (DATASET.DOWNLOAD False): set it to True, or run "
                   f"`python -m vmfcoop.tools.download_datasets {self.dataset_name} --root "
                   f"{os.path.dirname(self.paths.dataset_dir)}`.")
        raise DatasetNotFoundError(f"{self.dataset_name} not found.\n{self.paths.layout_help()}\n{how}")

    def load_or_make_fewshot(self, train, val, num_shots, seed):
        """The (K, seed) sample, read from its JSON cache or drawn and cached (relative paths, no pickle)."""
        cache_path = self.paths.fewshot_path(num_shots, seed)
        if os.path.isfile(cache_path):
            cached = self.read_fewshot_cache(cache_path, train, val)
            if cached is not None:
                return cached
        fewshot = make_fewshot_split(train, val, num_shots, seed, dataset_name=self.dataset_name)
        try:
            write_json({"num_shots": num_shots, "seed": seed,
                        "train": [list(e) for e in fewshot["train"]],
                        "val": [list(e) for e in fewshot["val"]]}, cache_path)
        except OSError as err:  # a read-only dataset folder still works, just without the cache
            warnings.warn(f"Could not write the few-shot cache {cache_path}: {err}")
        return fewshot

    def read_fewshot_cache(self, cache_path, train, val):
        raw = read_json(cache_path)
        cached = parse_split({**raw, "test": []}, cache_path)
        if set(cached["train"]) <= set(train) and set(cached["val"]) <= set(val):
            return cached
        warnings.warn(f"{cache_path} lists images that are not in {self.split_path} (the split changed); "
                      "drawing the few-shot sample again and overwriting the cache.")
        return None

    def to_datums(self, entries):
        return [Datum(impath=os.path.join(self.image_dir, relpath), label=label, classname=classname)
                for relpath, label, classname in entries]
