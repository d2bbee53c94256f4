"""Checkpoint files in Dassl's layout: ``<dir>/<name>/model.pth.tar-<epoch>`` plus a ``checkpoint`` pointer."""
import os
import shutil

import torch

from .errors import VmfcoopError
from .utils import atomic_write, mkdir_if_missing


class CheckpointError(VmfcoopError, RuntimeError):
    """A checkpoint that cannot be loaded safely."""


def save_checkpoint(state, save_dir, is_best=False, model_name=""):
    """Write atomically; strip DataParallel's ``module.`` prefix."""
    mkdir_if_missing(save_dir)
    state = dict(state)
    state["state_dict"] = {k[7:] if k.startswith("module.") else k: v for k, v in state["state_dict"].items()}
    fpath = os.path.join(save_dir, model_name or f"model.pth.tar-{state['epoch']}")
    with atomic_write(fpath) as tmp:
        torch.save(state, tmp)
    with atomic_write(os.path.join(save_dir, "checkpoint")) as tmp:
        with open(tmp, "w") as f:
            f.write(os.path.basename(fpath) + "\n")
    print(f'Checkpoint saved to "{fpath}"')
    if is_best:
        best = os.path.join(save_dir, "model-best.pth.tar")
        with atomic_write(best) as tmp:
            shutil.copy(fpath, tmp)
    return fpath


def load_checkpoint(fpath, map_location="cpu"):
    """Load with ``weights_only=True``: checkpoints hold tensors and plain numbers only."""
    if not os.path.isfile(fpath):
        raise FileNotFoundError(f'No checkpoint at "{fpath}"')
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f'Unable to load checkpoint "{fpath}" safely ({type(err).__name__}: {err}). '
            "Only checkpoints written by vmfcoop (tensors and plain values) are accepted."
        ) from None


def latest_checkpoint(fdir):
    pointer = os.path.join(fdir, "checkpoint")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = f.readline().strip()
    path = os.path.join(fdir, name)
    return path if os.path.isfile(path) else None
