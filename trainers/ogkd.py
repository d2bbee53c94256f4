"""OGKD (Tran Dinh Tien and Zhiqiang Shen, arXiv 2606.04922): BiomedCoOp with its KD term replaced by two
geometry-aware distillation terms whose teacher is smoothed along an LLM-derived class graph.

Loss: ``CE + SCCM_LAMBDA * SCCM + GAD_LAMBDA * GAD + LGD_LAMBDA * LGD``, where

- SCCM is BiomedCoOp's MSE between the learned class features and the mean LLM-prompt features;
- the teacher is BiomedCoOp's: frozen image features against the mean of the LLM prompts kept by the
  per-batch outlier rule (``TAU``);
- the class graph is ``W = row_softmax(GRAPH_ALPHA * P P^T)``, P the normalised mean LLM-prompt feature
  of each training class (frozen, built once);
- the smoothed teacher is ``l~ = (1 - GAMMA) l + GAMMA l W`` with ``l`` the teacher's log-probabilities;
- GAD (global): ``(1/(B C)) sum exp(l~)(l~ - log p)`` on the image features;
- LGD (patches): the same with the image's patch tokens (after the tower's final norm, projected by its
  head, normalised) on the ``TOP_K_RATIO`` share of patches whose teacher logit for the true class is
  largest in magnitude ("attentive" patches), on the true-class channel only.

Only the text context is learned; inference is plain CoOp (cosine logits of the pooled image feature).
It needs a ViT image tower (BiomedCLIP, CLIP, PubMedCLIP); other backbones fail at build time.

Where this differs from the released code (github.com/tientrandinh/OGKD, ``trainers/method``), and why:

- The released trainer hard-codes BiomedCLIP (``MODEL.BACKBONE.NAME`` is ignored) and encodes the
  teacher prompts with a second and a third BiomedCLIP copy; here the configured backbone serves all
  three roles, and the prompts come from ``DATASET.PROMPTS`` (the released code uses BiomedCoOp's
  GPT-4 set: ``DATASET.PROMPTS.SOURCES ('biomedcoop-gpt4',)``; like our BiomedCoOp, the default is the
  packaged source).
- The released code defines a base-to-novel "novel folding" of the graph (``W_bb + 0.1 W_bn W_nb``) that
  never runs (it reads dataset attributes no dataset defines) and would use novel class names during
  base training. It is left out: the graph covers the training classes only, which is what the
  released code effectively runs.
- The smoothed teacher ``exp(l~)`` is not a probability vector (its sum ``Z`` can be far below 1 for
  large GAMMA), so GAD is a KL only up to the per-sample factor ``Z``. The README calls it a smoothed
  teacher *distribution*; ``RENORMALIZE_TEACHER True`` log-softmaxes ``l~`` into one. The default
  (False) keeps the released form, because the released per-dataset GAD/LGD weights were tuned with it
  (with renormalisation they would need retuning).
- The outlier rule is vectorised (no per-prompt Python loop with host syncs), as in our BiomedCoOp.
- The patch teacher and student logits share one image pass with the global ones, as released.
"""
import torch
from torch.nn import functional as F
from vmfcoop.clip_backbones.vision_tokens import encode_image_with_tokens, vit_tower
from vmfcoop.engine import TRAINER_REGISTRY
from vmfcoop.engine.errors import ConfigError

from .base import PROMPT_DEFAULTS
from .biomedcoop import BiomedCoOp
from .losses import (
    attentive_patch_indices,
    class_relation_graph,
    consistency_mse,
    geometry_aware_distillation,
    label_guided_distillation,
    masked_prompt_mean,
    select_prompts_by_outlier_rule,
)

OGKD_DEFAULTS = dict(
    PROMPT_DEFAULTS,
    SCCM_LAMBDA=1.0,
    TAU=1.5,
    GAD_LAMBDA=1.0,
    LGD_LAMBDA=0.1,
    GAMMA=0.5,  # strength of the graph smoothing
    GRAPH_ALPHA=4.0,  # sharpness of the class graph (released: 4 few-shot, 1 base-to-novel)
    TOP_K_RATIO=0.1,  # share of patches LGD distils on
    RENORMALIZE_TEACHER=False,  # True: the smoothed teacher is a probability vector (not the released form)
)


@TRAINER_REGISTRY.register()
class OGKD(BiomedCoOp):
    CFG_NODE = "OGKD"
    CFG_DEFAULTS = OGKD_DEFAULTS

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = cfg.TRAINER.OGKD
        if not 0.0 <= node.GAMMA <= 1.0:
            raise ConfigError(f"TRAINER.OGKD.GAMMA must be in [0, 1], got {node.GAMMA}")
        if not 0.0 < node.TOP_K_RATIO <= 1.0:
            raise ConfigError(f"TRAINER.OGKD.TOP_K_RATIO must be in (0, 1], got {node.TOP_K_RATIO}")

    def build_learner(self):
        vit_tower(self.backbone)  # fail now, not at the first step, on a non-ViT backbone
        learner = super().build_learner()
        self.class_graph = class_relation_graph(self.llm_mean, self.method_cfg.GRAPH_ALPHA)
        return learner

    @torch.no_grad()
    def image_and_patch_features(self, images):
        """Normalised ``(pooled [B, d], patches [B, N, d])`` from one frozen image pass."""
        with self.autocast():
            pooled, patches = encode_image_with_tokens(self.backbone, images)
        return F.normalize(pooled.float(), dim=-1), F.normalize(patches.float(), dim=-1)

    def forward_backward(self, batch):
        node = self.method_cfg
        images, labels = self.parse_batch_train(batch)
        feats, patches = self.image_and_patch_features(images)
        text = self.learned_text_features()
        logits = self.logits(feats, text)

        scale = self.backbone.logit_scale
        keep = select_prompts_by_outlier_rule(feats, self.llm_features, scale, node.TAU)
        teacher_text = masked_prompt_mean(self.llm_features, keep)
        teacher = self.logits(feats, teacher_text)
        teacher_patches = scale * patches @ teacher_text.t()  # [B, N, C]
        chosen = attentive_patch_indices(teacher_patches, labels, node.TOP_K_RATIO)  # [B, K]
        chosen_patches = patches.gather(1, chosen[..., None].expand(-1, -1, patches.shape[-1]))
        teacher_chosen = teacher_patches.gather(1, chosen[..., None].expand(-1, -1, teacher_patches.shape[-1]))

        ce = F.cross_entropy(logits, labels)
        sccm = consistency_mse(text, self.llm_mean)
        gad = geometry_aware_distillation(logits, teacher, self.class_graph, node.GAMMA, node.RENORMALIZE_TEACHER)
        lgd = label_guided_distillation(self.logits(chosen_patches, text), teacher_chosen, self.class_graph, labels,
                                        node.GAMMA, node.RENORMALIZE_TEACHER)
        loss = ce + node.SCCM_LAMBDA * sccm + node.GAD_LAMBDA * gad + node.LGD_LAMBDA * lgd
        return self.update(loss, logits, labels, ce=ce.item(), sccm=sccm.item(), gad=gad.item(), lgd=lgd.item())
