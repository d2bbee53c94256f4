"""Eye disease fundus photographs (Kaggle: gunavenkatdoddi/eye-diseases-classification)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class RETINA(SplitDataset):
    MODALITY = "color fundus photography"
    CLASSNAMES = (
        "diabetic retinopathy",
        "glaucoma",
        "cataract",
        "normal retina",
    )
    DOWNLOAD = biomedcoop_download("RETINA", gdrive_id="18U-Gc22h5QryomNNzY4r4Qfrq52yf5EO")
