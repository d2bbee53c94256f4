"""KgCoOp (Yao et al., CVPR 2023): CE plus W * (1 - mean cosine) to the hand-crafted template features."""
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY

from .base import PROMPT_DEFAULTS, ClipTrainer, LearnedParts, prompt_learner_from_cfg
from .losses import knowledge_distance


@TRAINER_REGISTRY.register()
class KgCoOp(ClipTrainer):
    CFG_NODE = "KGCOOP"
    CFG_DEFAULTS = dict(PROMPT_DEFAULTS, W=8.0, TEMPLATE="a photo of a {}.")

    def build_learner(self):
        self.hand_features = self.template_features(self.method_cfg.TEMPLATE)
        return LearnedParts(prompt_learner=prompt_learner_from_cfg(self.backbone, self.classnames, self.method_cfg))

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        text = self.learned_text_features()
        logits = self.logits(self.image_features(images), text)
        ce = F.cross_entropy(logits, labels)
        kg = knowledge_distance(text, self.hand_features)
        return self.update(ce + self.method_cfg.W * kg, logits, labels, ce=ce.item(), kg=kg.item())
