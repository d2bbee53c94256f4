"""Datasets: importing this package registers every dataset in ``DATASET_REGISTRY``.

The shared machinery lives in ``base`` (split file, few-shot cache, base/new), ``download``
(archive download, safe extraction, atomic install) and ``prompt_bank`` (LLM description banks).
"""
from . import (  # noqa: F401  (imported to register the datasets)
    btmri,
    busi,
    cardiacmri,
    chmnist,
    covid_19,
    ctkidney,
    dermamnist,
    image_folder,
    kneexray,
    kvasir,
    livermri,
    lungcolon,
    octmnist,
    pancreasmri,
    retina,
    synthetic,
)
