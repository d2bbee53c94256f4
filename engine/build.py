"""The registries and their builders."""
from .errors import ConfigError
from .registry import Registry, unknown_name_message

TRAINER_REGISTRY = Registry("TRAINER")
DATASET_REGISTRY = Registry("DATASET")


def _lookup(registry, kind, name, key):
    if not name:
        raise ConfigError(f"{key} is empty: choose a {kind}, e.g. one of {sorted(registry.registered_names())}")
    if name not in registry:
        raise ConfigError(unknown_name_message(kind, name, registry.registered_names()) + f" (set by {key})")
    return registry.get(name)


def build_trainer(cfg):
    cls = _lookup(TRAINER_REGISTRY, "trainer", cfg.TRAINER.NAME, "--trainer / TRAINER.NAME")
    if cfg.VERBOSE:
        print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return cls(cfg)


def build_dataset(cfg):
    cls = _lookup(DATASET_REGISTRY, "dataset", cfg.DATASET.NAME, "DATASET.NAME")
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return cls(cfg)
