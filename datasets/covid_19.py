"""COVID-QU-Ex chest radiographs (Kaggle: tawsifurrahman/covid19-radiography-database)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class COVID_19(SplitDataset):
    MODALITY = "chest X-ray"
    CLASSNAMES = (
        "covid lungs",
        "lung opacity lungs",
        "viral pneumonia lungs",
        "normal lungs",
    )
    DOWNLOAD = biomedcoop_download("COVID_19", gdrive_id="1zMLN5q5e_tmH-deSZQiY4Xq0M1EqCrML")
