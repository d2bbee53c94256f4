"""Optimizers and epoch-wise learning-rate schedules with warmup.

The schedule is a closed-form function of the epoch, so the scheduler's state is plain numbers
(checkpoints load with ``weights_only=True``) and it works on every torch version.
"""
import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from .errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "single_step", "multi_step", "constant")
WARMUP_TYPES = ("constant", "linear")


def build_optimizer(model_or_params, optim_cfg, param_groups=None):
    if param_groups is not None:
        params = param_groups
    elif isinstance(model_or_params, torch.nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = [p for p in model_or_params if p.requires_grad]
    if not params:
        raise ConfigError("build_optimizer: nothing to optimise (no parameter requires grad)")
    name, lr, wd = optim_cfg.NAME, optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)
    raise ConfigError(f"OPTIM.NAME {name!r} is not supported; choose one of {OPTIMIZERS}")


def schedule_factor(epoch, max_epoch, kind, stepsize=(-1,), gamma=0.1):
    """Multiplier of the base lr at ``epoch`` (0-based) for the main schedule."""
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max_epoch))
    if kind == "single_step":
        step = stepsize[-1] if stepsize[-1] > 0 else max_epoch
        return gamma ** (epoch // step)
    if kind == "multi_step":
        return gamma ** sum(1 for milestone in stepsize if epoch >= milestone)
    if kind == "constant":
        return 1.0
    raise ConfigError(f"OPTIM.LR_SCHEDULER {kind!r} is not supported; choose one of {SCHEDULERS}")


def warmup_lr(epoch, base_lr, warmup_epochs, warmup_type, cons_lr, min_lr):
    """Learning rate during warmup (``epoch < warmup_epochs``)."""
    if warmup_type == "constant":
        return cons_lr
    if warmup_type == "linear":
        return min_lr if epoch == 0 else base_lr * epoch / warmup_epochs
    raise ConfigError(f"OPTIM.WARMUP_TYPE {warmup_type!r} is not supported; choose one of {WARMUP_TYPES}")


def lr_at_epoch(epoch, base_lr, optim_cfg):
    """Dassl semantics: warmup for W epochs, then the main schedule shifted by W (not compressed)."""
    warmup = max(optim_cfg.WARMUP_EPOCH, 0)
    if epoch < warmup:
        return warmup_lr(epoch, base_lr, warmup, optim_cfg.WARMUP_TYPE,
                         optim_cfg.WARMUP_CONS_LR, optim_cfg.WARMUP_MIN_LR)
    shifted = epoch - warmup if optim_cfg.WARMUP_RECOUNT else epoch
    return base_lr * schedule_factor(shifted, optim_cfg.MAX_EPOCH, optim_cfg.LR_SCHEDULER,
                                     tuple(optim_cfg.STEPSIZE), optim_cfg.GAMMA)


class EpochScheduler(LRScheduler):
    """``step()`` once per epoch; lr of every group follows :func:`lr_at_epoch`."""

    def __init__(self, optimizer, optim_cfg):
        self.settings = {
            "WARMUP_EPOCH": optim_cfg.WARMUP_EPOCH, "WARMUP_TYPE": optim_cfg.WARMUP_TYPE,
            "WARMUP_CONS_LR": optim_cfg.WARMUP_CONS_LR, "WARMUP_MIN_LR": optim_cfg.WARMUP_MIN_LR,
            "WARMUP_RECOUNT": optim_cfg.WARMUP_RECOUNT, "MAX_EPOCH": optim_cfg.MAX_EPOCH,
            "LR_SCHEDULER": optim_cfg.LR_SCHEDULER, "STEPSIZE": list(optim_cfg.STEPSIZE),
            "GAMMA": optim_cfg.GAMMA,
        }
        # Validate eagerly so a bad name fails at build time, not at the first epoch boundary.
        lr_at_epoch(0, 1.0, _Settings(self.settings))
        lr_at_epoch(max(optim_cfg.WARMUP_EPOCH, 0), 1.0, _Settings(self.settings))
        super().__init__(optimizer)

    def get_lr(self):
        settings = _Settings(self.settings)
        return [lr_at_epoch(self.last_epoch, base, settings) for base in self.base_lrs]


class _Settings:
    def __init__(self, values):
        self.__dict__.update(values)


def build_lr_scheduler(optimizer, optim_cfg):
    return EpochScheduler(optimizer, optim_cfg)
