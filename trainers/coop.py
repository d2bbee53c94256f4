"""CoOp (Zhou et al., IJCV 2022): learn the prompt context with cross-entropy only."""
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY

from .base import PROMPT_DEFAULTS, ClipTrainer, LearnedParts, prompt_learner_from_cfg


@TRAINER_REGISTRY.register()
class CoOp(ClipTrainer):
    CFG_NODE = "COOP"
    CFG_DEFAULTS = dict(PROMPT_DEFAULTS)

    def build_learner(self):
        return LearnedParts(prompt_learner=prompt_learner_from_cfg(self.backbone, self.classnames, self.method_cfg))

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        logits = self.logits(self.image_features(images), self.learned_text_features())
        loss = F.cross_entropy(logits, labels)
        return self.update(loss, logits, labels)
