"""CoCoOp (Zhou et al., CVPR 2022): a meta-net turns each image's feature into a shift of the context."""
import torch
from torch import nn
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY

from .base import PROMPT_DEFAULTS, ClipTrainer, LearnedParts, prompt_learner_from_cfg


def meta_net(joint_dim, ctx_dim, reduction=16):
    """Linear(d -> d/16) -> ReLU -> Linear(-> ctx_dim), as in CoCoOp."""
    hidden = max(joint_dim // reduction, 1)
    return nn.Sequential(nn.Linear(joint_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, ctx_dim))


@TRAINER_REGISTRY.register()
class CoCoOp(ClipTrainer):
    CFG_NODE = "COCOOP"
    CFG_DEFAULTS = dict(PROMPT_DEFAULTS)

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        if cfg.TRAINER.COCOOP.CSC:
            from vmfcoop.engine.errors import ConfigError

            raise ConfigError("CoCoOp conditions one shared context on each image; TRAINER.COCOOP.CSC must be False")

    def build_learner(self):
        return LearnedParts(
            prompt_learner=prompt_learner_from_cfg(self.backbone, self.classnames, self.method_cfg),
            meta_net=meta_net(self.backbone.joint_dim, self.backbone.ctx_dim),
        )

    def conditional_text_features(self, image_features):
        """``[B, C, d]``: the class prompts re-encoded for each image's context shift."""
        bias = self.learner.meta_net(image_features)  # [B, ctx_dim]
        embeds, mask = self.learner.prompt_learner(bias)  # [B, C, L, D]
        batch, classes = embeds.shape[:2]
        flat = self.backbone.encode_prompt(embeds.flatten(0, 1), mask.repeat(batch, 1))
        return F.normalize(flat.float(), dim=-1).view(batch, classes, -1)

    def conditional_logits(self, image_features):
        text = self.conditional_text_features(image_features)
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", image_features, text)

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        logits = self.conditional_logits(self.image_features(images))
        loss = F.cross_entropy(logits, labels)
        return self.update(loss, logits, labels)

    def eval_text_features(self):
        return None  # text depends on each image

    def classify(self, image_features):
        return self.conditional_logits(image_features)
