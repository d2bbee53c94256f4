"""Optional: make this project's trainers and datasets usable from a real Dassl.pytorch install.

Dassl's builders only call ``cls(cfg)`` and read plain attributes, so registering our classes into its
registries is enough (duck typing). The project never requires Dassl.
"""
import copy

from .build import DATASET_REGISTRY, TRAINER_REGISTRY
from .config import extend_cfg, get_cfg_default


def import_dassl_registries():
    """Dassl's (trainer, dataset) registries, or None when Dassl is not installed.

    A broken install (Dassl present but one of its own imports failing) is reported, not hidden.
    """
    try:
        from dassl.data.datasets import DATASET_REGISTRY as dassl_datasets
        from dassl.engine import TRAINER_REGISTRY as dassl_trainers
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "dassl":
            return None
        raise ImportError(f"Dassl.pytorch is installed but cannot be imported ({err}); install what it needs.") from err
    return dassl_trainers, dassl_datasets


def register_into_dassl():
    """Register every trainer and dataset of this project into Dassl's registries (idempotent).

    Returns the names registered now, or None when Dassl is not installed.
    """
    from .cli import import_plugins

    registries = import_dassl_registries()
    if registries is None:
        return None
    import_plugins()
    added = []
    for ours, theirs in zip((TRAINER_REGISTRY, DATASET_REGISTRY), registries):
        present = set(theirs.registered_names())
        for name in ours.registered_names():
            if name not in present:
                theirs.register(ours.get(name))
                added.append(name)
    return added


def extend_dassl_cfg(cfg):
    """Add this project's keys (and every trainer's/dataset's) that a Dassl config lacks, in place."""
    ours = get_cfg_default()
    extend_cfg(ours)
    _merge_missing(cfg, ours)
    return cfg


def _merge_missing(target, source):
    for key, value in source.items():
        if key not in target:
            target[key] = copy.deepcopy(value)
        elif hasattr(value, "items") and hasattr(target[key], "items"):
            _merge_missing(target[key], value)
