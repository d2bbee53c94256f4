"""UK Biobank liver MRI (restricted data: bring your own images and split file).

Layout: ``<ROOT>/LiverMRI/LiverMRI/<images>`` and ``<ROOT>/LiverMRI/split_LiverMRI.json`` in the usual
``[relpath, label, classname]`` format. The vMFCoOp paper does not publish the class names, so they are
read from your split file; set ``DATASET.CLASSNAMES`` to pin (and check) their label order.
"""
from vmfcoop.engine.build import DATASET_REGISTRY

from .base import UK_BIOBANK_NOTE, SplitDataset


@DATASET_REGISTRY.register()
class LiverMRI(SplitDataset):
    MODALITY = "liver MRI"
    MANUAL_DOWNLOAD_NOTE = UK_BIOBANK_NOTE
