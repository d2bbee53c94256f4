"""Trainers: importing this package registers every method in ``TRAINER_REGISTRY``."""
from . import biomedcoop, cocoop, coop, kgcoop, prograd, vmfcoop, zeroshot  # noqa: F401
from . import clip_adapter, linear_probe, lp_plus_plus, tip_adapter  # noqa: F401
