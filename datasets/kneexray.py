"""Knee osteoarthritis severity X-rays (Kaggle: shashwatwork/knee-osteoarthritis-dataset-with-severity)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class KneeXray(SplitDataset):
    MODALITY = "knee X-ray"
    CLASSNAMES = (
        "healthy knee",
        "doubtful osteoarthritis",
        "minimal osteoarthritis",
        "moderate osteoarthritis",
        "severe osteoarthritis",
    )
    DOWNLOAD = biomedcoop_download("KneeXray", gdrive_id="1DBVraYJmxy2UcQ_nGLYvTB2reITOm453")
