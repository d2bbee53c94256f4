"""CLIP-Adapter (Gao et al., IJCV 2024): a residual bottleneck MLP on the frozen image features.

f' = normalize(ALPHA * A(f) + (1 - ALPHA) * f) with A = ReLU(Linear(d/R -> d)) o ReLU(Linear(d -> d/R)),
both without bias; logits = s * f' W^T against the zero-shot template features W. Trained with
cross-entropy on freshly augmented images every epoch (the images are re-encoded, as in the reference).

f' is renormalised, as in the official CLIP-Adapter code (BiomedCoOp's copy skips it, so its logits
scale with |f'|). The adapter does not depend on the classes, so base-to-new evaluation applies it to
the new classes' template features.
"""
from torch import nn
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY
from vmfcoop.engine.errors import ConfigError

from .base import ClipTrainer, LearnedParts


def residual_blend(features, adapted, ratio):
    """``normalize(ratio * adapted + (1 - ratio) * features)``."""
    return F.normalize(ratio * adapted + (1.0 - ratio) * features, dim=-1)


class BottleneckAdapter(nn.Module):
    """``ReLU(up(ReLU(down(f))))`` with a ``dim / reduction`` wide bottleneck, no biases."""

    def __init__(self, dim, reduction):
        super().__init__()
        self.down = nn.Linear(dim, max(dim // reduction, 1), bias=False)
        self.up = nn.Linear(max(dim // reduction, 1), dim, bias=False)

    def forward(self, features):
        return F.relu(self.up(F.relu(self.down(features))))


@TRAINER_REGISTRY.register()
class CLIPAdapter(ClipTrainer):
    CFG_NODE = "CLIP_ADAPTER"
    CFG_DEFAULTS = {"ALPHA": 0.5, "REDUCTION": 4, "TEMPLATE": "a photo of a {}."}

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = cfg.TRAINER.CLIP_ADAPTER
        if not 0.0 <= node.ALPHA <= 1.0 or node.REDUCTION < 1:
            raise ConfigError("TRAINER.CLIP_ADAPTER needs 0 <= ALPHA <= 1 and REDUCTION >= 1; "
                              f"got ALPHA {node.ALPHA}, REDUCTION {node.REDUCTION}")

    def build_learner(self):
        self.text_features = self.template_features(self.method_cfg.TEMPLATE)
        return LearnedParts(adapter=BottleneckAdapter(self.backbone.joint_dim, self.method_cfg.REDUCTION))

    def eval_text_features(self):
        return self.text_features

    def adapt(self, image_features):
        return residual_blend(image_features, self.learner.adapter(image_features), self.method_cfg.ALPHA)

    def classify(self, image_features):
        return self.logits(self.adapt(image_features), self._eval_text)

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        logits = self.logits(self.adapt(self.image_features(images)), self.text_features)
        loss = F.cross_entropy(logits, labels)
        return self.update(loss, logits, labels)
