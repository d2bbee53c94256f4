"""Base class for every trainer on a frozen CLIP-style backbone.

It builds the backbone named by ``MODEL.BACKBONE.NAME``, splits inference into "images -> features"
(frozen) and "features -> logits", computes fixed text features once per evaluation, and registers the
trainer's learnable module as ``prompt_learner`` (Dassl's checkpoint layout).
"""
import contextlib
import os

import torch
from torch.nn import functional as F
from tqdm import tqdm
from vmfcoop.clip_backbones import build_backbone_from_cfg
from vmfcoop.engine import TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy
from vmfcoop.engine.cache import cache_from_cfg, text_digest
from vmfcoop.engine.config import add_node
from vmfcoop.engine.errors import ConfigError

from .text_features import llm_prompt_features, template_features

PROMPT_DEFAULTS = {"N_CTX": 4, "CTX_INIT": "a photo of a", "CSC": False, "CLASS_TOKEN_POSITION": "end"}
PRECISIONS = ("fp32", "amp")


class ClipTrainer(TrainerX):
    """Subclasses set ``CFG_NODE``/``CFG_DEFAULTS`` and implement ``build_learner`` and ``forward_backward``."""

    CFG_NODE = None
    CFG_DEFAULTS = {}
    MODULE_NAME = "prompt_learner"
    # True when test-time image features do not depend on anything learned, so they can be cached.
    FROZEN_IMAGE_FEATURES = True
    # False for methods fitted on cached features in run_epoch (no forward_backward per batch).
    PER_BATCH_STEP = True

    @classmethod
    def extend_cfg(cls, cfg):
        if cls.CFG_NODE:
            add_node(cfg, "TRAINER." + cls.CFG_NODE, dict(cls.CFG_DEFAULTS))

    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.CFG_NODE]

    def check_cfg(self, cfg):
        if cfg.TRAINER.PREC not in PRECISIONS:
            raise ConfigError(f"TRAINER.PREC must be one of {PRECISIONS}, got {cfg.TRAINER.PREC!r}")

    # ------------------------------------------------------------ model

    def build_model(self):
        self.feature_cache = cache_from_cfg(self.cfg)
        self.backbone = build_backbone_from_cfg(self.cfg, device=self.device)
        self.classnames = list(self.dm.dataset.classnames)
        self.learner = self.build_learner()
        self.model = self.learner
        if self.learner is None:
            return
        self.learner.to(self.device)
        trainable = [p for p in self.learner.parameters() if p.requires_grad]
        optim = sched = None
        if trainable:
            optim = build_optimizer(trainable, self.cfg.OPTIM)
            sched = build_lr_scheduler(optim, self.cfg.OPTIM)
        self.optim, self.sched = optim, sched
        self.register_model(self.MODULE_NAME, self.learner, optim, sched)

    def build_learner(self):
        """Return the nn.Module holding everything learned (or None for training-free methods)."""
        raise NotImplementedError

    # ------------------------------------------------------------ features and logits

    def autocast(self):
        if self.cfg.TRAINER.PREC == "amp" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def image_features(self, images):
        """Normalised features from the frozen image encoder."""
        with self.autocast():
            feats = self.backbone.encode_image(images)
        return F.normalize(feats.float(), dim=-1)

    def template_features(self, template):
        """``[C, d]`` frozen features of a hand-crafted template (disk-cached per backbone)."""
        return template_features(self.backbone, self.classnames, template, cache=self.feature_cache)

    def llm_prompt_features(self):
        """``[C, P, d]`` frozen features of the configured LLM prompt banks (disk-cached per backbone)."""
        return llm_prompt_features(self.cfg, self.backbone, self.classnames, cache=self.feature_cache)

    def logits(self, image_features, text_features):
        return self.backbone.logit_scale * image_features @ text_features.t()

    def learned_text_features(self):
        """``[C, d]`` normalised features of the learned prompts (with gradients)."""
        embeds, mask = self.learner.prompt_learner()
        return F.normalize(self.backbone.encode_prompt(embeds, mask).float(), dim=-1)

    def eval_text_features(self):
        """Class text features used at test time; computed once per evaluation."""
        return self.learned_text_features()

    def before_test(self):
        with torch.no_grad():
            self._eval_text = self.eval_text_features()

    def after_test(self):
        self._eval_text = None

    def classify(self, image_features):
        return self.logits(image_features, self._eval_text)

    def model_inference(self, images):
        return self.classify(self.image_features(images))

    def inference_batches(self, loader, split):
        """With a frozen image encoder, classify precomputed (disk-cached) features of the split."""
        if not (self.FROZEN_IMAGE_FEATURES and self.feature_cache.enabled):
            yield from super().inference_batches(loader, split)
            return
        features = self.split_image_features(loader, split).to(self.device)
        labels = self.split_labels(loader)
        for begin in range(0, len(labels), loader.batch_size):
            yield self.classify(features[begin:begin + loader.batch_size]), labels[begin:begin + loader.batch_size]

    def split_labels(self, loader):
        """``[N]`` labels of an evaluation loader's split, in the order of its (unshuffled) items."""
        return torch.tensor([item.label for item in loader.dataset.data_source], device=self.device)

    def split_image_features(self, loader, split):
        """``[N, d]`` normalised features of a (non-shuffled) evaluation split, computed once per backbone
        weights, image files and test transform, and shared by every trainer, seed and shot count."""
        files = [(item.impath, *file_identity(item.impath)) for item in loader.dataset.data_source]
        key = {
            "kind": "image", "backbone": self.backbone.name, "fingerprint": self.backbone.fingerprint(),
            "transform": repr(loader.dataset.transform), "precision": self.cfg.TRAINER.PREC,
            "files": text_digest([repr(f) for f in files]), "count": len(files),
        }

        def compute():
            chunks = []
            for batch in tqdm(loader, desc=f"encode {split} images", leave=False, dynamic_ncols=True):
                chunks.append(self.image_features(batch["img"].to(self.device)).cpu())
            return torch.cat(chunks)

        return self.feature_cache.get_or_compute(key, compute)

    # ------------------------------------------------------------ training helpers

    def update(self, loss, logits, labels, **terms):
        """Backward + step, scheduler at the epoch's end, and the loss summary for the log line."""
        self.model_backward_and_update(loss)
        self.finish_batch()
        summary = {"loss": loss.item(), "acc": compute_accuracy(logits, labels)[0].item()}
        summary.update({name: float(value) for name, value in terms.items()})
        return summary


def file_identity(path):
    """Size and modification time: a replaced image invalidates cached features."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def prompt_learner_from_cfg(backbone, classnames, node):
    from .prompt_learner import PromptLearner

    return PromptLearner(backbone, classnames, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
                         position=node.CLASS_TOKEN_POSITION)


class LearnedParts(torch.nn.Module):
    """Container for a trainer's learnable modules; its state_dict is the checkpoint."""

    def __init__(self, **modules):
        super().__init__()
        for name, module in modules.items():
            setattr(self, name, module)
