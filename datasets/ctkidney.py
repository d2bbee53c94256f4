"""Kidney CT (Kaggle: nazmul0087/ct-kidney-dataset-normal-cyst-tumor-and-stone)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class CTKidney(SplitDataset):
    MODALITY = "kidney CT"
    CLASSNAMES = (
        "cyst kidney",
        "kidney stone",
        "kidney tumor",
        "normal kidney",
    )
    DOWNLOAD = biomedcoop_download("CTKidney", gdrive_id="1PBZ299k--mZL8JU7nhC1Wy8yEmlqmVDh")
