"""Few-shot sampling and base/new class subsampling, on plain ``(relpath, label, classname)`` entries.

Sampling is a pure function of (entries, K, seed): it uses its own ``random.Random`` seeded from
(K, seed, split name), never the global ``random`` state, so every method, run and machine draws the
same support set for the same (K, seed).
"""
import math
import random
import warnings
from collections import defaultdict

from vmfcoop.engine.errors import ConfigError

VAL_SHOTS_CAP = 4  # BiomedCoOp/CoOp convention: few-shot val holds min(K, 4) images per class


def group_by_label(entries):
    """``{label: [entries in split order]}`` with labels in ascending order."""
    groups = defaultdict(list)
    for entry in entries:
        groups[entry[1]].append(entry)
    return {label: groups[label] for label in sorted(groups)}


def sample_per_class(entries, num_shots, rng_seed, split_name="train", dataset_name=""):
    """Draw ``num_shots`` entries per label; a class with fewer keeps all of them (with a warning)."""
    rng = random.Random(rng_seed)
    picked = []
    for label, items in group_by_label(entries).items():
        if len(items) < num_shots:
            warnings.warn(
                f"{dataset_name}: class '{items[0][2]}' (label {label}) has only {len(items)} {split_name} "
                f"image(s), fewer than the {num_shots} requested; keeping all {len(items)}."
            )
            picked.extend(items)
        else:
            picked.extend(rng.sample(items, num_shots))
    return picked


def fewshot_seed(num_shots, seed, split_name):
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and PYTHONHASHSEED.
    return f"vmfcoop-fewshot/K={num_shots}/seed={seed}/{split_name}"


def make_fewshot_split(train, val, num_shots, seed, dataset_name=""):
    """Return ``{"train": K per class, "val": min(K, 4) per class}`` drawn deterministically."""
    val_shots = min(num_shots, VAL_SHOTS_CAP)
    return {
        "train": sample_per_class(train, num_shots, fewshot_seed(num_shots, seed, "train"), "train", dataset_name),
        "val": sample_per_class(val, val_shots, fewshot_seed(num_shots, seed, "val"), "val", dataset_name),
    }


def base_new_labels(labels):
    """Split sorted labels into (base, new): the first ceil(n/2) are base."""
    labels = sorted(set(labels))
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def subsample_classes(train, val, test, subsample="all"):
    """Keep the base or new half of the classes (decided on ``train``) and relabel them 0..k-1."""
    if subsample not in ("all", "base", "new"):
        raise ConfigError(f'DATASET.SUBSAMPLE_CLASSES must be "all", "base" or "new", got {subsample!r}')
    if subsample == "all":
        return train, val, test
    base, new = base_new_labels(entry[1] for entry in train)
    if not new:
        raise ConfigError(
            f"Base-to-novel needs at least 2 classes, but this dataset has {len(base)}; "
            'use DATASET.SUBSAMPLE_CLASSES "all".'
        )
    selected = base if subsample == "base" else new
    relabel = {old: new_label for new_label, old in enumerate(selected)}

    def keep(entries):
        return [(path, relabel[label], name) for path, label, name in entries if label in relabel]

    return keep(train), keep(val), keep(test)
