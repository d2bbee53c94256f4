"""DermaMNIST (MedMNIST, HAM10000 dermatoscopic images)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class DermaMNIST(SplitDataset):
    MODALITY = "dermatoscopy"
    CLASSNAMES = (
        "actinic keratosis",
        "basal cell carcinoma",
        "benign keratosis",
        "dermatofibroma",
        "melanoma",
        "melanocytic nevus",
        "vascular lesion",
    )
    DOWNLOAD = biomedcoop_download("DermaMNIST", gdrive_id="1Jxd1-DWljunRDZ8fY80dl5zUMefriQXt")
