"""OCTMNIST (MedMNIST retinal OCT). Label order follows MedMNIST (CNV=0, DME=1, drusen=2, normal=3);
the official split file is not in the public BiomedCoOp repository, so this order is checked against
the split shipped in the dataset zip when it is loaded."""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import SplitDataset
from .download import biomedcoop_download


@DATASET_REGISTRY.register()
class OCTMNIST(SplitDataset):
    MODALITY = "retinal OCT"
    CLASSNAMES = (
        "choroidal neovascularization",
        "diabetic macular edema",
        "drusen",
        "normal OCT scan",
    )
    DOWNLOAD = biomedcoop_download("OCTMNIST", gdrive_id="1mYZNWxbPxnnVvcwHQYybA8gdMzQAoOem")
