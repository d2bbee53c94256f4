"""BiomedCoOp (Koleilat et al., CVPR 2025): CoOp plus

- SCCM: MSE between the learned class features and the mean LLM-prompt features, and
- KD from the LLM ensemble after pruning outlier prompts (per batch, BiomedCoOp's rule).

The frozen image features serve as the zero-shot image features (the reference runs the same
frozen ViT a second time), and the pruning is vectorised.
"""
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY

from .base import PROMPT_DEFAULTS, ClipTrainer, LearnedParts, prompt_learner_from_cfg
from .losses import consistency_mse, distillation_kl, masked_prompt_mean, select_prompts_by_outlier_rule


@TRAINER_REGISTRY.register()
class BiomedCoOp(ClipTrainer):
    CFG_NODE = "BIOMEDCOOP"
    CFG_DEFAULTS = dict(PROMPT_DEFAULTS, SCCM_LAMBDA=1.0, KDSP_LAMBDA=1.0, TAU=1.5)

    def build_learner(self):
        self.llm_features = self.llm_prompt_features()  # [C, P, d]
        self.llm_mean = F.normalize(self.llm_features.mean(1), dim=-1)
        return LearnedParts(prompt_learner=prompt_learner_from_cfg(self.backbone, self.classnames, self.method_cfg))

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        feats = self.image_features(images)
        text = self.learned_text_features()
        logits = self.logits(feats, text)
        keep = select_prompts_by_outlier_rule(feats, self.llm_features, self.backbone.logit_scale, self.method_cfg.TAU)
        teacher = self.logits(feats, masked_prompt_mean(self.llm_features, keep))
        ce = F.cross_entropy(logits, labels)
        sccm = consistency_mse(text, self.llm_mean)
        kd = distillation_kl(logits, teacher)
        loss = ce + self.method_cfg.SCCM_LAMBDA * sccm + self.method_cfg.KDSP_LAMBDA * kd
        return self.update(loss, logits, labels, ce=ce.item(), sccm=sccm.item(), kd=kd.item())
