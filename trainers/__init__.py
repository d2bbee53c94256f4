"""Trainers: importing this package registers every method in ``TRAINER_REGISTRY``."""
from . import biomedcoop, cocoop, coop, kgcoop, prograd, zeroshot  # noqa: F401
