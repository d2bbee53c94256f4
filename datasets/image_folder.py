"""ImageFolderSplit: any image folder plus a split file, configured without writing code.

    DATASET:
      NAME: ImageFolderSplit
      ROOT: /data                          # relative paths below are resolved against it
      IMAGE_FOLDER:
        DIR: my_set/images                 # split paths are relative to this folder
        SPLIT_FILE: my_set/split.json      # {"train"|"val"|"test": [[relpath, label, classname], ...]}
        MODALITY: "abdominal ultrasound"   # used in prompts
        FEWSHOT_DIR: ""                    # "" = split_fewshot/<split file stem>/ beside the split file
      CLASSNAMES: []                       # optional: pin and check the label order
      PROMPTS:
        BANK_NAME: MySet                   # prompt bank file name (<source>/MySet.json)
"""
import os

from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .layout import DatasetNotFoundError, DatasetPaths


def resolve(root, path):
    path = os.path.expanduser(path)
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(os.path.expanduser(root), path))


@DATASET_REGISTRY.register()
class ImageFolderSplit(SplitDataset):
    MANUAL_DOWNLOAD_NOTE = "Check DATASET.IMAGE_FOLDER.DIR and DATASET.IMAGE_FOLDER.SPLIT_FILE."

    @classmethod
    def extend_cfg(cls, cfg):
        from vmfcoop.engine.config import add_node

        super().extend_cfg(cfg)
        add_node(cfg, "DATASET.IMAGE_FOLDER", {"DIR": "", "SPLIT_FILE": "", "MODALITY": "", "FEWSHOT_DIR": ""})

    def locate(self, cfg):
        folder_cfg = cfg.DATASET.IMAGE_FOLDER
        if not folder_cfg.DIR or not folder_cfg.SPLIT_FILE:
            raise DatasetNotFoundError(
                "ImageFolderSplit needs DATASET.IMAGE_FOLDER.DIR (the image folder) and "
                "DATASET.IMAGE_FOLDER.SPLIT_FILE (the split JSON); relative paths are resolved against DATASET.ROOT."
            )
        self._modality = folder_cfg.MODALITY
        split_path = resolve(cfg.DATASET.ROOT, folder_cfg.SPLIT_FILE)
        stem = os.path.splitext(os.path.basename(split_path))[0]
        fewshot_dir = (resolve(cfg.DATASET.ROOT, folder_cfg.FEWSHOT_DIR) if folder_cfg.FEWSHOT_DIR
                       else os.path.join(os.path.dirname(split_path), "split_fewshot", stem))
        return DatasetPaths(name="ImageFolderSplit", dataset_dir=os.path.dirname(split_path),
                            image_dir=resolve(cfg.DATASET.ROOT, folder_cfg.DIR), split_path=split_path,
                            fewshot_dir=fewshot_dir)

    @property
    def modality(self):
        return self._modality
