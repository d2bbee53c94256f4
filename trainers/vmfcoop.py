"""vMFCoOp: CoOp's learned context regularised by von Mises-Fisher anchors in the joint space.

Loss: ``LAMBDA_ANC * L_anc + LAMBDA_SC * L_sc + L_SCE`` (paper eqs. 5-10), where

- L_SCE: symmetric cross-entropy of the image-prompt logits, scaled by the backbone's logit scale
  (plain CE with ``USE_SCE False``);
- L_anc: squared distance between each class's normalised prompt feature P_i and its dynamic anchor
  ``normalize(u_i + alpha delta_i)``; delta_i (per class, init 0) and alpha = softplus(rho) > 0
  (init ALPHA_INIT) are learned, or frozen at zero drift with ``STATIC_ANCHOR``;
- L_sc: cross-entropy of ``tau(t) P U^T`` over the static unified anchors U, with tau annealed per
  iteration from TAU_0 to TAU_MAX (<= 0: the backbone's logit scale).

Inference is plain CoOp (cosine logits); anchors are built and used only in training (base classes
only in base-to-novel runs). The anchor offsets are tied to the training class list: they are
checkpointed (resume restores them), and a checkpoint trained on other classes (base -> new
evaluation) leaves them out instead of failing on the shape.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY
from vmfcoop.engine.cache import text_digest
from vmfcoop.engine.errors import ConfigError

from .anchors import VOCAB_FILTERS, anchor_geometry_from_cfg, geometry_summary
from .base import PROMPT_DEFAULTS, ClipTrainer, LearnedParts, prompt_learner_from_cfg
from .losses import (
    anchor_alignment_loss,
    annealed_scale,
    capped_drift,
    dynamic_anchor_targets,
    semantic_contrastive_loss,
    symmetric_cross_entropy,
)
from .vmf import KAPPA_ESTIMATORS, angle_degrees

VMFCOOP_DEFAULTS = dict(
    PROMPT_DEFAULTS,
    LAMBDA_ANC=2.0,  # guess (paper's per-dataset values are in an unavailable appendix)
    LAMBDA_SC=0.5,
    USE_ANC=True,
    USE_SC=True,
    USE_SCE=True,  # False: plain cross-entropy
    SCE_EPS=1e-4,  # sets the reverse-CE weight -log(eps)
    TAU_0=10.0,
    TAU_MAX=0.0,  # <= 0: the backbone's logit scale, read at runtime
    KAPPA_ESTIMATOR="banerjee",  # paper's closed form; "exact" solves A_d(kappa) = R
    KAPPA_EPS=1e-6,
    KAPPA_MAX=1e5,
    VOCAB_FILTER="no_special",  # or "words"
    VOCAB_TEMPLATE="{}",
    POOL_SOURCES=True,  # several prompt sources: one pooled fit per class, else fields averaged
    STATIC_ANCHOR=False,  # True: no learned offsets, L_anc pulls to u_i itself
    ALPHA_INIT=0.1,
    DRIFT_CAP=0.0,  # > 0: cap ||alpha delta_i||
)


def inverse_softplus(value):
    return math.log(math.expm1(value))


def class_list_digest(classnames):
    """An int64 that identifies an ordered class list (stored in checkpoints next to the offsets)."""
    return int(text_digest(list(classnames))[:15], 16)


def mean_max(label, values, spec=".2f"):
    return f"{label} mean {float(values.mean()):{spec}} max {float(values.max()):{spec}}"


class AnchorOffsets(nn.Module):
    """Learned per-class offsets delta ``[C, d]`` and global scale alpha = softplus(rho)."""

    def __init__(self, classnames, dim, alpha_init=0.1):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(len(classnames), dim))
        self.rho = nn.Parameter(torch.tensor(inverse_softplus(alpha_init)))
        self.register_buffer("class_digest", torch.tensor(class_list_digest(classnames)))

    @property
    def alpha(self):
        return F.softplus(self.rho)

    def drift(self, cap=0.0):
        """``alpha * delta_i`` per class, optionally capped in norm."""
        return capped_drift(self.alpha * self.delta, cap)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Offsets trained for another class list mean nothing here (and are unused at inference).
        stored = state_dict.get(prefix + "class_digest")
        if stored is not None and int(stored) != int(self.class_digest):
            for name in ("delta", "rho", "class_digest"):
                state_dict.pop(prefix + name, None)
            print("Note: the checkpoint's anchor offsets belong to other classes; not loaded (inference "
                  "does not use them)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@TRAINER_REGISTRY.register()
class VMFCoOp(ClipTrainer):
    CFG_NODE = "VMFCOOP"
    CFG_DEFAULTS = VMFCOOP_DEFAULTS

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = cfg.TRAINER.VMFCOOP
        choices = {"VOCAB_FILTER": VOCAB_FILTERS, "KAPPA_ESTIMATOR": KAPPA_ESTIMATORS}
        for key, allowed in choices.items():
            if node[key] not in allowed:
                raise ConfigError(f"TRAINER.VMFCOOP.{key} must be one of {allowed}, got {node[key]!r}")
        for key in ("SCE_EPS", "TAU_0", "ALPHA_INIT", "KAPPA_EPS", "KAPPA_MAX"):
            if not node[key] > 0:
                raise ConfigError(f"TRAINER.VMFCOOP.{key} must be > 0, got {node[key]}")
        for key in ("LAMBDA_ANC", "LAMBDA_SC"):
            if node[key] < 0:
                raise ConfigError(f"TRAINER.VMFCOOP.{key} must be >= 0, got {node[key]}")

    @property
    def uses_anchors(self):
        return self.method_cfg.USE_ANC or self.method_cfg.USE_SC

    @property
    def learns_offsets(self):
        return self.method_cfg.USE_ANC and not self.method_cfg.STATIC_ANCHOR

    def build_learner(self):
        node = self.method_cfg
        parts = {"prompt_learner": prompt_learner_from_cfg(self.backbone, self.classnames, node)}
        self.geometry = self._anchors = None  # fitted on first use: evaluation never needs them
        self.tau_max = node.TAU_MAX if node.TAU_MAX > 0 else float(self.backbone.logit_scale)
        if self.learns_offsets:
            parts["anchor_offsets"] = AnchorOffsets(self.classnames, self.backbone.joint_dim, node.ALPHA_INIT)
        return LearnedParts(**parts)

    @property
    def anchors(self):
        """Unified anchors ``[C, d]`` of the training classes, fitted on first use (cached on disk)."""
        if self._anchors is None:
            self.geometry = anchor_geometry_from_cfg(self.cfg, self.backbone, self.classnames, self.method_cfg)
            self._anchors = self.geometry.anchors.to(self.device)
            self.print_geometry()
        return self._anchors

    # ------------------------------------------------------------ loss terms

    def anchor_targets(self):
        """Dynamic anchors ``[C, d]`` (the static ones when offsets are not learned)."""
        if not self.learns_offsets:
            return self.anchors
        return dynamic_anchor_targets(self.anchors, self.learner.anchor_offsets.drift(self.method_cfg.DRIFT_CAP))

    def current_tau(self):
        """L_sc's scale at this iteration: TAU_0 at the first one, tau_max at the last."""
        step = self.epoch * self.num_batches + self.batch_idx
        return annealed_scale(step, self.max_epoch * self.num_batches - 1, self.method_cfg.TAU_0, self.tau_max)

    def forward_backward(self, batch):
        node = self.method_cfg
        images, labels = self.parse_batch_train(batch)
        text = self.learned_text_features()
        logits = self.logits(self.image_features(images), text)
        if node.USE_SCE:
            loss = symmetric_cross_entropy(logits, labels, node.SCE_EPS)
            terms = {"sce": loss.item()}
        else:
            loss = F.cross_entropy(logits, labels)
            terms = {"ce": loss.item()}
        if node.USE_ANC:
            anc = anchor_alignment_loss(text, self.anchor_targets())
            loss = loss + node.LAMBDA_ANC * anc
            terms["anc"] = anc.item()
        if node.USE_SC:
            tau = self.current_tau()
            sc = semantic_contrastive_loss(text, self.anchors, tau)
            loss = loss + node.LAMBDA_SC * sc
            terms.update(sc=sc.item(), tau=tau)
        return self.update(loss, logits, labels, **terms)

    # ------------------------------------------------------------ logging

    def print_geometry(self):
        stats = geometry_summary(self.geometry)
        node, prompts = self.method_cfg, self.cfg.DATASET.PROMPTS
        print(f"vMF CLIP field: {stats['vocab_size']} tokens (filter {node.VOCAB_FILTER}, template "
              f"{node.VOCAB_TEMPLATE!r}), R_C {stats['R_C']:.4f}, kappa_C {stats['kappa_C']:.2f}, "
              f"d {self.backbone.joint_dim}")
        sources = ", ".join(prompts.SOURCES)
        how = "pooled" if node.POOL_SOURCES or len(prompts.SOURCES) == 1 else "per-source fields averaged"
        kappas = ", ".join(f"{name}: {k:.1f}" for name, k in zip(self.classnames, self.geometry.llm_kappas))
        print(f"vMF LLM fields ({sources}; {how}): kappa_L {kappas}")
        print(f"vMF anchors: {mean_max('angle(u,mu_L) deg', stats['angle_u_muL'])} "
              f"{mean_max('angle(u,mu_C) deg', stats['angle_u_muC'])} "
              f"mean pairwise cos {stats['anchor_pairwise_cos']:.4f}")

    @torch.no_grad()
    def anchor_log_line(self):
        stats = geometry_summary(self.geometry)
        angle_prompt = angle_degrees(self.learned_text_features(), self.anchors)
        parts = [f"vmf epoch [{self.epoch + 1}/{self.max_epoch}] kappa_C {stats['kappa_C']:.2f}",
                 f"kappa_L [{stats['kappa_L_min']:.2f}, {stats['kappa_L_max']:.2f}]",
                 mean_max("angle(u,mu_L)", stats["angle_u_muL"]), mean_max("angle(P,u)", angle_prompt)]
        if self.learns_offsets:
            offsets = self.learner.anchor_offsets
            drift = offsets.drift(self.method_cfg.DRIFT_CAP)
            angle_target = angle_degrees(self.anchors, dynamic_anchor_targets(self.anchors, drift))
            parts += [mean_max("drift |alpha delta|", drift.norm(dim=-1), ".4g"),
                      mean_max("angle(u,target)", angle_target, ".3f"), f"alpha {float(offsets.alpha):.4f}"]
        return " ".join(parts)

    def after_epoch(self):
        if self.geometry is not None:
            print(self.anchor_log_line())
        super().after_epoch()
