"""Disk cache for frozen features, keyed by everything they depend on.

A key is a dict (backbone fingerprint, dataset, split, transform, texts, ...). Its JSON form is hashed
into the file name and stored inside the file, so a collision or a stale entry is detected. Writes
are atomic (temp file + rename), so two concurrent runs at worst compute the same entry twice.
"""
import hashlib
import json
import os

import torch

from .utils import atomic_write


def default_cache_dir():
    base = os.environ.get("VMFCOOP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vmfcoop")
    return os.path.join(base, "features")


def cache_dir_from_cfg(cfg):
    return cfg.CACHE.DIR or default_cache_dir()


def key_digest(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def text_digest(texts):
    """Short stable digest of a list of strings (to keep keys small)."""
    return hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:32]


class FeatureCache:
    def __init__(self, directory, enabled=True):
        self.directory = directory
        self.enabled = enabled
        self.hits = self.misses = 0

    def path(self, key):
        return os.path.join(self.directory, f"{key.get('kind', 'features')}-{key_digest(key)}.pt")

    def get_or_compute(self, key, compute):
        """Return the cached tensor (or dict of tensors) for ``key``, computing and storing it if absent."""
        if not self.enabled:
            return compute()
        path = self.path(key)
        if os.path.isfile(path):
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
                if entry.get("key") == json.loads(json.dumps(key, sort_keys=True, default=str)):
                    self.hits += 1
                    return entry["value"]
            except Exception:  # a corrupt entry is recomputed and replaced
                pass
        self.misses += 1
        value = compute()
        with atomic_write(path) as tmp:
            torch.save({"key": json.loads(json.dumps(key, sort_keys=True, default=str)), "value": value}, tmp)
        return value


def cache_from_cfg(cfg):
    return FeatureCache(cache_dir_from_cfg(cfg), enabled=cfg.CACHE.ENABLED)
