"""Trainers: importing this package registers every method in ``TRAINER_REGISTRY``."""
from . import (  # noqa: F401
    biomedap,
    biomedcoop,
    biovlm,
    clip_adapter,
    cocoop,
    coop,
    kgcoop,
    linear_probe,
    lp_plus_plus,
    ogkd,
    prograd,
    tip_adapter,
    vmfcoop,
    zeroshot,
)
