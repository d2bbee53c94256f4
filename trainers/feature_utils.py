"""Shared pieces of the feature-based baselines (Tip-Adapter(-F), linear probe, LP++).

- Features of the few-shot train images from the frozen encoder are extracted once per run and
  disk-cached (``engine.cache``) under a key naming everything they depend on: backbone weights, dataset,
  K, seed, class subset, the exact image files and labels, the transform and the number of views.
  Val features come from the base trainer's split cache (test transform).
  Augmented views are drawn from a forked RNG seeded by ``SEED``, so they are the same whether they
  come from the cache or not, and the rest of the run sees the same random state either way.
- What these methods learn is per class. The learner records which classes it was fitted on
  (``class_digests``); on classes it never saw (base-to-new evaluation) the trainer falls back to the
  zero-shot template classifier, the only part that transfers.
- Learned tensors are sized by the training data, so loading adopts the checkpoint's shapes.
"""
import hashlib

import torch
from torch import nn
from vmfcoop.engine import compute_accuracy
from vmfcoop.engine.cache import text_digest
from vmfcoop.engine.data import build_data_loader
from vmfcoop.engine.errors import ConfigError

from .base import ClipTrainer, file_identity

FEATURE_DEFAULTS = {"TEMPLATE": "a photo of a {}.", "AUGMENT_EPOCHS": 1}


# ---------------------------------------------------------------- pure helpers


def class_digests(classnames):
    """``[C]`` int64 ids of the class names (first 8 bytes of their sha256): a checkpoint-safe class record."""
    return torch.tensor(
        [int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True) for name in classnames],
        dtype=torch.long,
    )


def class_index_map(trained_digests, classnames):
    """Index of each of ``classnames`` among the trained classes, or None if any was not trained on."""
    position = {int(d): i for i, d in enumerate(trained_digests.tolist())}
    indices = [position.get(int(d)) for d in class_digests(classnames).tolist()]
    if not indices or any(i is None for i in indices):
        return None
    return torch.tensor(indices, dtype=torch.long, device=trained_digests.device)


@torch.no_grad()
def extract_features(encode, loader, device):
    """``(features [N, d], labels [N])`` on the CPU, in the loader's order."""
    features, labels = [], []
    for batch in loader:
        features.append(encode(batch["img"].to(device)).cpu())
        labels.append(batch["label"])
    return torch.cat(features), torch.cat(labels)


def extract_views(encode, loader, device, views, seed):
    """``{"features": [V, N, d], "labels": [N]}``: ``views`` passes over an unshuffled loader.

    The passes run on a forked CPU RNG seeded with ``seed`` (random augmentations and loader worker
    seeds come from it), leaving the caller's random state untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        passes = [extract_features(encode, loader, device) for _ in range(views)]
    labels = passes[0][1]
    if any(not torch.equal(p[1], labels) for p in passes):
        raise RuntimeError("extract_views needs an unshuffled loader: the label order changed between passes")
    return {"features": torch.stack([p[0] for p in passes]), "labels": labels}


# ---------------------------------------------------------------- learner


class FittedParts(nn.Module):
    """Learned tensors of a feature-based method, plus the record of the classes they were fitted on.

    Their shapes depend on the training data (support-set size, number of classes), so loading a
    checkpoint adopts the checkpoint's shapes; an evaluation on other classes still loads, and
    ``class_digests`` tells the trainer whether the per-class parts apply.
    """

    def __init__(self, classnames):
        super().__init__()
        self.register_buffer("class_digests", class_digests(classnames))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, current in [*self._parameters.items(), *self._buffers.items()]:
            incoming = state_dict.get(prefix + name)
            if current is None or incoming is None or incoming.shape == current.shape:
                continue
            resized = current.new_empty(incoming.shape)
            if name in self._parameters:
                self._parameters[name] = nn.Parameter(resized, requires_grad=current.requires_grad)
            else:
                self._buffers[name] = resized
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ---------------------------------------------------------------- trainer base


class FeatureTrainer(ClipTrainer):
    """Base of Tip-Adapter(-F), LinearProbe and LPPlusPlus.

    Subclasses build a :class:`FittedParts` learner in ``build_parts`` and compute logits of the
    trained classes in ``fitted_logits(features, class_map)`` (``class_map`` reorders per-class
    tensors to the evaluated classes). The fixed zero-shot classifier is
    ``TRAINER.<NODE>.TEMPLATE`` encoded once.
    """

    def build_learner(self):
        self.text_features = self.template_features(self.method_cfg.TEMPLATE)
        self.val_data = None
        self.class_map = None
        return self.build_parts()

    def build_parts(self):
        raise NotImplementedError

    def fitted_logits(self, features, class_map):
        raise NotImplementedError

    def eval_text_features(self):
        return self.text_features

    def zero_shot_logits(self, features):
        return self.logits(features, self.text_features)

    # ------------------------------------------------------------ features

    def support_features(self):
        """``(features [V, N, d], labels [N])`` of the few-shot train split on the device: V =
        ``TRAINER.<NODE>.AUGMENT_EPOCHS`` passes with the train transform, or (0) one with the test transform."""
        views = self.method_cfg.AUGMENT_EPOCHS
        if views < 0:
            raise ConfigError(f"TRAINER.{self.CFG_NODE}.AUGMENT_EPOCHS must be >= 0, got {views}")
        tfm = self.dm.tfm_train if views > 0 else self.dm.tfm_test
        views = max(views, 1)
        data, cfg = self.dm.dataset.train_x, self.cfg
        loader = build_data_loader(cfg, data, cfg.DATALOADER.TEST.BATCH_SIZE, tfm, is_train=False)
        files = [(item.impath, *file_identity(item.impath), item.label) for item in data]
        key = {
            "kind": "support", "backbone": self.backbone.name, "fingerprint": self.backbone.fingerprint(),
            "dataset": cfg.DATASET.NAME, "num_shots": cfg.DATASET.NUM_SHOTS, "seed": cfg.SEED,
            "subsample": cfg.DATASET.SUBSAMPLE_CLASSES, "files": text_digest([repr(f) for f in files]),
            "count": len(files), "transform": repr(tfm), "views": views, "precision": cfg.TRAINER.PREC,
        }
        entry = self.feature_cache.get_or_compute(
            key, lambda: extract_views(self.image_features, loader, self.device, views, max(cfg.SEED, 0)))
        return entry["features"].to(self.device), entry["labels"].to(self.device)

    def val_features(self):
        """``(features [N, d], labels [N])`` of the few-shot val split (test transform), or None without one."""
        if self.val_loader is None:
            return None
        return self.split_image_features(self.val_loader, "val").to(self.device), self.split_labels(self.val_loader)

    def before_train(self):
        super().before_train()
        self.val_data = self.val_features()

    # ------------------------------------------------------------ evaluation

    def before_test(self):
        super().before_test()
        self.class_map = class_index_map(self.learner.class_digests, self.classnames)
        if self.class_map is None:
            trained = len(self.learner.class_digests)
            print(f"{type(self).__name__}: the evaluated classes are not all among the {trained} classes it was "
                  "trained on; its per-class parts do not apply, so it classifies with the zero-shot template "
                  f"'{self.method_cfg.TEMPLATE}'.")

    def classify(self, image_features):
        if self.class_map is None:
            return self.zero_shot_logits(image_features)
        return self.fitted_logits(image_features, self.class_map)

    @torch.no_grad()
    def classify_features(self, features):
        """Logits of precomputed features, with the evaluation-time state (as ``test()`` uses)."""
        self.set_model_mode("eval")
        self.before_test()
        try:
            return self.classify(features)
        finally:
            self.after_test()

    def epoch_is_logged(self):
        """Per-epoch lines follow TRAIN.PRINT_FREQ (plus the first and last epoch)."""
        return (self.epoch + 1) % self.cfg.TRAIN.PRINT_FREQ == 0 or self.epoch + 1 in (1, self.max_epoch)

    def test(self, split=None, write=True):
        """The val split is scored from its cached features (model selection runs it every epoch)."""
        if (split or self.cfg.TEST.SPLIT) == "val" and self.val_data is not None:
            features, labels = self.val_data
            result = compute_accuracy(self.classify_features(features), labels)[0].item()
            if self.epoch_is_logged():
                print(f"Evaluate on the *val* set (cached features): accuracy {result:.2f}%")
            return result
        return super().test(split, write)
