"""LC25000 lung and colon histopathology (Kaggle: andrewmvd/lung-and-colon-cancer-histopathological-images)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class LungColon(SplitDataset):
    MODALITY = "lung and colon histopathology"
    CLASSNAMES = (
        "colon adenocarcinoma",
        "colon benign tissue",
        "lung adenocarcinoma",
        "lung benign tissue",
        "lung squamous cell carcinoma",
    )
    DOWNLOAD = biomedcoop_download("LungColon", gdrive_id="1YIu5fqMXgyemisiL1L1HCvES2nVpCtun")
