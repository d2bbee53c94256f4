"""Zero-shot baselines: a single template, the LLM prompt ensemble, and its selective (pruned) variant.

They train nothing (MAX_EPOCH 0 in their configs); running them through the normal train command
just evaluates, so every method shares one protocol and one output layout.
"""
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY

from .base import ClipTrainer
from .losses import masked_prompt_mean, select_prompts_by_outlier_rule


@TRAINER_REGISTRY.register()
class ZeroShot(ClipTrainer):
    """``"a photo of a {}."`` per class (TRAINER.ZEROSHOT.TEMPLATE)."""

    CFG_NODE = "ZEROSHOT"
    CFG_DEFAULTS = {"TEMPLATE": "a photo of a {}.", "TAU": 1.5}

    def build_learner(self):
        return None

    def eval_text_features(self):
        return self.template_features(self.method_cfg.TEMPLATE)

    def forward_backward(self, batch):
        raise RuntimeError(f"{type(self).__name__} has nothing to train; set OPTIM.MAX_EPOCH 0 or use --eval-only")


@TRAINER_REGISTRY.register()
class ZeroShotEnsemble(ZeroShot):
    """Mean of the normalised LLM prompt features of each class, renormalised."""

    def eval_text_features(self):
        return F.normalize(self.llm_prompt_features().mean(1), dim=-1)


@TRAINER_REGISTRY.register()
class ZeroShotSelective(ZeroShotEnsemble):
    """BiomedCoOp's outlier rule per test batch: keep prompts whose score is within TAU std of the mean."""

    def eval_text_features(self):
        return self.llm_prompt_features()

    def classify(self, image_features):
        prompts = self._eval_text  # [C, P, d]
        keep = select_prompts_by_outlier_rule(image_features, prompts, self.backbone.logit_scale, self.method_cfg.TAU)
        return self.logits(image_features, masked_prompt_mean(prompts, keep))
