"""Colorectal histology MNIST (Kaggle: kmader/colorectal-histology-mnist)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class CHMNIST(SplitDataset):
    MODALITY = "colorectal histopathology"
    CLASSNAMES = (
        "adipose tissue",
        "complex stroma",
        "debris",
        "empty background",
        "immune cells",
        "normal mucosal glands",
        "simple stroma",
        "tumour epithelium",
    )
    DOWNLOAD = biomedcoop_download("CHMNIST", gdrive_id="1tyQiYQmqAGNaY4SCK_8U5vEbbaa1AD-g")
