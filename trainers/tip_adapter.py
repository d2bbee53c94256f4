"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the support set.

logits = s * f W^T + alpha * exp(-beta * (1 - f K^T)) V, where W holds the zero-shot template features,
K the support features (mean of AUGMENT_EPOCHS augmented views per image, renormalised) and V their
one-hot labels. Tip-Adapter trains nothing: its single epoch has nothing to step, and (alpha, beta) come
from a grid search on the few-shot val split after it. Tip-Adapter-F also trains K (initialised from
the cache) with cross-entropy at (INIT_ALPHA, INIT_BETA) on freshly augmented images every epoch,
then runs the same search; TEST.FINAL_MODEL best_val keeps its best-val epoch.

The grid is Tip-Adapter's: SEARCH_STEP[i] values from 0.1 in steps of (SEARCH_SCALE[i] - 0.1) /
SEARCH_STEP[i], i = 0 for beta and 1 for alpha; the first best (beta, alpha) in that order wins.
"""
import torch
from torch import nn
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY
from vmfcoop.engine.errors import ConfigError

from .feature_utils import FEATURE_DEFAULTS, FeatureTrainer, FittedParts


def tip_cache_logits(features, keys, values, alpha, beta):
    """``alpha * exp(-beta * (1 - f K^T)) V``: features ``[B, d]``, keys ``[N, d]``, values ``[N, C]``."""
    affinity = features @ keys.t()
    return alpha * torch.exp(-beta * (1.0 - affinity)) @ values


def search_grid(scale, steps):
    """Tip-Adapter's grid: ``steps`` values ``0.1 + i * (scale - 0.1) / steps``."""
    return [0.1 + i * (scale - 0.1) / steps for i in range(steps)]


@torch.no_grad()
def search_alpha_beta(zero_shot_logits, features, labels, keys, values, betas, alphas):
    """``(beta, alpha, accuracy)`` maximising accuracy of ``zero_shot_logits + cache logits``.

    Loops over beta; all alphas of one beta are scored at once. Ties keep the first (beta, alpha).
    """
    alpha_column = torch.tensor(alphas, dtype=features.dtype, device=features.device)[:, None, None]
    best = (None, None, -1.0)
    for beta in betas:
        cache = tip_cache_logits(features, keys, values, 1.0, beta)
        predictions = (zero_shot_logits + alpha_column * cache).argmax(-1)  # [A, B]
        scores = 100.0 * (predictions == labels).float().mean(-1)
        index = int(scores.argmax())
        if scores[index].item() > best[2]:
            best = (beta, alphas[index], scores[index].item())
    return best


class TipCache(FittedParts):
    """Cache keys ``[N, d]`` (a parameter when trainable), one-hot values ``[N, C]``, searched alpha and beta."""

    def __init__(self, classnames, labels, dim, alpha, beta, trainable_keys):
        super().__init__(classnames)
        keys = torch.zeros(len(labels), dim)
        if trainable_keys:
            self.keys = nn.Parameter(keys)
        else:
            self.register_buffer("keys", keys)
        self.register_buffer("values", F.one_hot(labels, len(classnames)).float())
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("beta", torch.tensor(float(beta)))


class CacheTrainer(FeatureTrainer):
    """What both variants share: the cache built from the support features and the val search."""

    CFG_NODE = "TIP_ADAPTER"
    CFG_DEFAULTS = dict(FEATURE_DEFAULTS, INIT_ALPHA=1.0, INIT_BETA=1.0, SEARCH_SCALE=[50.0, 50.0],
                        SEARCH_STEP=[200, 200], ADAM_EPS=1e-4)
    TRAINABLE_KEYS = False

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = cfg.TRAINER.TIP_ADAPTER
        if len(node.SEARCH_SCALE) != 2 or len(node.SEARCH_STEP) != 2 or min(node.SEARCH_STEP) < 1:
            raise ConfigError("TRAINER.TIP_ADAPTER.SEARCH_SCALE and SEARCH_STEP take [beta, alpha] pairs with "
                              f"steps >= 1; got {list(node.SEARCH_SCALE)} and {list(node.SEARCH_STEP)}")

    def build_parts(self):
        labels = torch.tensor([item.label for item in self.dm.dataset.train_x])
        node = self.method_cfg
        return TipCache(self.classnames, labels, self.backbone.joint_dim, node.INIT_ALPHA, node.INIT_BETA,
                        self.TRAINABLE_KEYS)

    def fitted_logits(self, features, class_map):
        cache = self.learner
        return self.zero_shot_logits(features) + tip_cache_logits(
            features, cache.keys, cache.values[:, class_map], cache.alpha, cache.beta)

    def before_train(self):
        super().before_train()
        if self.start_epoch > 0:  # resumed: the cache (and trained keys) come from the checkpoint
            return
        views, labels = self.support_features()
        if not torch.equal(labels.cpu(), self.learner.values.argmax(-1).cpu()):
            raise RuntimeError(f"{type(self).__name__}: the extracted support labels do not follow train_x's order")
        with torch.no_grad():
            self.learner.keys.copy_(F.normalize(views.mean(0), dim=-1))
        print(f"Cache: {len(labels)} keys, each the mean of {views.shape[0]} view(s)")

    def search_hyperparameters(self):
        """Set the cache's (alpha, beta) by grid search on the few-shot val split (never the test split)."""
        node = self.method_cfg
        if self.val_data is None:
            print(f"No val split: keeping alpha {node.INIT_ALPHA}, beta {node.INIT_BETA}")
            return
        features, labels = self.val_data
        beta, alpha, best = search_alpha_beta(
            self.zero_shot_logits(features), features, labels, self.learner.keys.detach(), self.learner.values,
            search_grid(node.SEARCH_SCALE[0], node.SEARCH_STEP[0]),
            search_grid(node.SEARCH_SCALE[1], node.SEARCH_STEP[1]))
        self.learner.alpha.fill_(alpha)
        self.learner.beta.fill_(beta)
        print(f"Searched on val: beta {beta:.2f}, alpha {alpha:.2f}, val accuracy {best:.2f}%")

    def after_epoch(self):
        self.search_hyperparameters()  # before the engine's best-val check and checkpoint
        super().after_epoch()


@TRAINER_REGISTRY.register()
class TipAdapter(CacheTrainer):
    """Training-free (OPTIM.MAX_EPOCH 1: one epoch with nothing to step, then the search and checkpoint)."""

    PER_BATCH_STEP = False

    def run_epoch(self):
        print(f"epoch [{self.epoch + 1}/{self.max_epoch}] training-free: nothing to step "
              f"({self.learner.keys.shape[0]} cache keys)")

    def forward_backward(self, batch):
        raise RuntimeError("TipAdapter trains nothing; TipAdapterF fine-tunes the cache keys")


@TRAINER_REGISTRY.register()
class TipAdapterF(CacheTrainer):
    """The cache keys are trained (AdamW; its eps is TRAINER.TIP_ADAPTER.ADAM_EPS)."""

    TRAINABLE_KEYS = True

    def build_model(self):
        super().build_model()
        if self.optim is not None and self.cfg.OPTIM.NAME in ("adam", "adamw"):
            for group in self.optim.param_groups:  # the engine's OPTIM node has no eps key
                group["eps"] = self.method_cfg.ADAM_EPS

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        features = self.image_features(images)
        node = self.method_cfg
        logits = self.zero_shot_logits(features) + tip_cache_logits(
            features, self.learner.keys, self.learner.values, node.INIT_ALPHA, node.INIT_BETA)
        loss = F.cross_entropy(logits, labels)
        return self.update(loss, logits, labels)
