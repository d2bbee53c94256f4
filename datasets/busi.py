"""Breast ultrasound images (Kaggle: aryashah2k/breast-ultrasound-images-dataset)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class BUSI(SplitDataset):
    MODALITY = "breast ultrasound"
    CLASSNAMES = (
        "benign tumor",
        "malignant tumor",
        "normal scan",
    )
    DOWNLOAD = biomedcoop_download("BUSI", gdrive_id="1hB5M7wcAUTV9EtiYrijACoQ36R6VmQaa")
