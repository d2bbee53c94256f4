"""Brain tumor MRI (Kaggle: masoudnickparvar/brain-tumor-mri-dataset)."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class BTMRI(SplitDataset):
    MODALITY = "brain MRI"
    CLASSNAMES = (
        "glioma tumor",
        "meningioma tumor",
        "pituitary tumor",
        "normal brain",
    )
    DOWNLOAD = biomedcoop_download("BTMRI", gdrive_id="1_lJLZRUmczqZqoN-dNqkAzGzmi4ONoU5")
