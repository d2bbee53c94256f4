"""UK Biobank pancreas MRI (restricted data: bring your own images and split file).

Layout: ``<ROOT>/PancreasMRI/PancreasMRI/<images>`` and ``<ROOT>/PancreasMRI/split_PancreasMRI.json`` in the usual
``[relpath, label, classname]`` format. The vMFCoOp paper does not publish the class names, so they are
read from your split file; set ``DATASET.CLASSNAMES`` to pin (and check) their label order.
"""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import UK_BIOBANK_NOTE, SplitDataset


@DATASET_REGISTRY.register()
class PancreasMRI(SplitDataset):
    MODALITY = "pancreas MRI"
    MANUAL_DOWNLOAD_NOTE = UK_BIOBANK_NOTE
