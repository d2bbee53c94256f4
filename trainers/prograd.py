"""ProGrad (Zhu et al., ICCV 2023): keep only the part of the CE gradient that does not contradict
the zero-shot teacher's (KL) gradient.

The teacher is the frozen backbone with the hand-crafted template: a true zero-shot model. (The
reference BiomedCLIP port distils from the student itself, which makes the KL gradient vanish.)
"""
import torch
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY, compute_accuracy

from .base import PROMPT_DEFAULTS, ClipTrainer, LearnedParts, prompt_learner_from_cfg
from .losses import project_conflicting_gradient, soft_cross_entropy


@TRAINER_REGISTRY.register()
class ProGrad(ClipTrainer):
    CFG_NODE = "PROGRAD"
    CFG_DEFAULTS = dict(PROMPT_DEFAULTS, T=1.0, LAMBDA=1.0, TEMPLATE="a photo of a {}.")

    def build_learner(self):
        self.teacher_text = self.template_features(self.method_cfg.TEMPLATE)
        return LearnedParts(prompt_learner=prompt_learner_from_cfg(self.backbone, self.classnames, self.method_cfg))

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        feats = self.image_features(images)
        logits = self.logits(feats, self.learned_text_features())
        teacher = self.logits(feats, self.teacher_text)
        ce = F.cross_entropy(logits, labels)
        kl = soft_cross_entropy(logits, teacher, self.method_cfg.T)
        self.detect_anomaly(ce + kl)
        self.projected_step(ce, kl)
        self.finish_batch()
        return {"loss": ce.item(), "kl": kl.item(), "acc": compute_accuracy(logits, labels)[0].item()}

    def projected_step(self, ce, kl):
        params = [p for p in self.learner.parameters() if p.requires_grad]
        grads_kl = torch.autograd.grad(kl, params, retain_graph=True, allow_unused=True)
        grads_ce = torch.autograd.grad(ce, params, allow_unused=True)
        self.optim.zero_grad()
        for param, g_ce, g_kl in zip(params, grads_ce, grads_kl):
            if g_ce is None:
                continue
            param.grad = g_ce if g_kl is None else project_conflicting_gradient(g_ce, g_kl, self.method_cfg.LAMBDA)
        self.optim.step()
