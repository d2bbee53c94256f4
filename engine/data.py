"""Datum / DatasetBase with Dassl's attribute names, plus the data loaders built from a config."""
import os

import torch
from tabulate import tabulate
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .build import build_dataset
from .transforms import build_transform
from .utils import read_image


class Datum:
    """One labelled image. ``impath`` must be an existing file (as in Dassl)."""

    __slots__ = ("_impath", "_label", "_domain", "_classname")

    def __init__(self, impath="", label=0, domain=0, classname=""):
        if not isinstance(impath, str):
            raise TypeError(f"Datum.impath must be a str, got {type(impath).__name__}: {impath!r}")
        if not os.path.isfile(impath):
            raise FileNotFoundError(f"Image listed in the split does not exist: {impath}")
        self._impath = impath
        self._label = int(label)
        self._domain = int(domain)
        self._classname = classname

    impath = property(lambda self: self._impath)
    label = property(lambda self: self._label)
    domain = property(lambda self: self._domain)
    classname = property(lambda self: self._classname)

    def __repr__(self):
        return f"Datum({self._impath!r}, {self._label}, {self._classname!r})"


class DatasetBase:
    """Holds the splits; class names come from ``train_x`` ordered by label (Dassl semantics)."""

    dataset_dir = ""
    domains = []

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    train_x = property(lambda self: self._train_x)
    train_u = property(lambda self: self._train_u)
    val = property(lambda self: self._val)
    test = property(lambda self: self._test)
    lab2cname = property(lambda self: self._lab2cname)
    classnames = property(lambda self: self._classnames)
    num_classes = property(lambda self: self._num_classes)

    @staticmethod
    def get_num_classes(data_source):
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source):
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]


class DatasetWrapper(TorchDataset):
    def __init__(self, data_source, transform):
        self.data_source = data_source
        self.transform = transform

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        img = self.transform(read_image(item.impath))
        return {"img": img, "label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}


def build_data_loader(cfg, data_source, batch_size, tfm, is_train):
    generator = torch.Generator()
    generator.manual_seed(max(cfg.SEED, 0))
    loader = DataLoader(
        DatasetWrapper(data_source, tfm),
        batch_size=batch_size,
        shuffle=is_train,
        generator=generator if is_train else None,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
        persistent_workers=False,
    )
    if len(loader) == 0:
        raise ValueError("The data loader is empty: the split has no images.")
    return loader


class DataManager:
    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None):
        dataset = build_dataset(cfg)
        self.tfm_train = custom_tfm_train or build_transform(cfg, is_train=True)
        self.tfm_test = custom_tfm_test or build_transform(cfg, is_train=False)
        self.train_loader_x = build_data_loader(
            cfg, dataset.train_x, cfg.DATALOADER.TRAIN_X.BATCH_SIZE, self.tfm_train, is_train=True
        )
        self.train_loader_u = None
        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg, dataset.val, cfg.DATALOADER.TEST.BATCH_SIZE, self.tfm_test, is_train=False
            )
        self.test_loader = build_data_loader(
            cfg, dataset.test, cfg.DATALOADER.TEST.BATCH_SIZE, self.tfm_test, is_train=False
        )
        self.dataset = dataset
        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    num_classes = property(lambda self: self._num_classes)
    num_source_domains = property(lambda self: self._num_source_domains)
    lab2cname = property(lambda self: self._lab2cname)

    def show_dataset_summary(self, cfg):
        rows = [["Dataset", cfg.DATASET.NAME], ["# classes", f"{self.num_classes:,}"],
                ["# train_x", f"{len(self.dataset.train_x):,}"]]
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        rows.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(rows))
