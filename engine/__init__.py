"""Dassl-compatible engine: registries, config, data, trainers, optimisation and evaluation."""
from .build import DATASET_REGISTRY, TRAINER_REGISTRY, build_dataset, build_trainer
from .config import get_cfg_default
from .data import DataManager, DatasetBase, Datum
from .errors import ConfigError, VmfcoopError
from .evaluator import compute_accuracy
from .optim import build_lr_scheduler, build_optimizer
from .registry import Registry
from .trainer import SimpleTrainer, TrainerBase, TrainerX

__all__ = [
    "DATASET_REGISTRY", "TRAINER_REGISTRY", "build_dataset", "build_trainer", "get_cfg_default",
    "DataManager", "DatasetBase", "Datum", "ConfigError", "VmfcoopError", "compute_accuracy",
    "build_lr_scheduler", "build_optimizer", "Registry", "SimpleTrainer", "TrainerBase", "TrainerX",
]
