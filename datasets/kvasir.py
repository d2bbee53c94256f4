"""Kvasir GI endoscopy (Kaggle: abdallahwagih/kvasir-dataset-for-classification-and-segmentation)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class Kvasir(SplitDataset):
    MODALITY = "gastrointestinal endoscopy"
    CLASSNAMES = (
        "dyed lifted polyps",
        "dyed resection margins",
        "esophagitis",
        "normal cecum",
        "normal pylorus",
        "normal z line",
        "polyps",
        "ulcerative colitis",
    )
    DOWNLOAD = biomedcoop_download("Kvasir", gdrive_id="1T_cqnNIjmGazNeg6gziarvCNWGsFEkRi")
