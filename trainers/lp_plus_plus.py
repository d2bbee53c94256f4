"""LP++ (Huang et al., CVPR 2024): a linear probe blended with the text classifier, class-wise.

logits = f V^T + b + alpha (.) (f T^T), with T the zero-shot template features (cosines, no logit scale),
V and b a linear layer and alpha one multiplier per class. Full batch on the cached support features
(AUGMENT_EPOCHS views per image as separate samples); each Dassl epoch is one block-coordinate step:

- V, b: SGD with momentum (OPTIM.MOMENTUM 0.9) at lr_V = 4N / lambda_max(F^T F), computed from the data
  (OPTIM.LR is not used);
- alpha: every ALPHA_UPDATE_EVERY epochs, a plain gradient step at lr_alpha = N / (4 max_c sum_n (f_n . t_c)^2).

Initialisation as in the LP++ code (the paper describes class means): V = per-class *sums* of the
features, b = 0 (the code keeps nn.Linear's random bias), and every alpha_c = 250 * mean over (c, k) of
the class-mean cosine mean_{n in c} f_n . t_k (the code's ``250 / shots * shots * class mean``; with
unequal class sizes the means use each class's own count). The alpha step uses the current
epoch's gradient (the LP++ code never zeroes alpha's gradient, so it applies the sum since epoch 1).
TEST.FINAL_MODEL best_val keeps the best epoch on the val split (the code keeps the last of equals).
"""
import torch
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY, compute_accuracy

from .feature_utils import FEATURE_DEFAULTS, FeatureTrainer, FittedParts


def class_sums(features, labels, num_classes):
    """``[C, d]``: sum of the features of each class."""
    return F.one_hot(labels, num_classes).to(features.dtype).t() @ features


def class_means(features, labels, num_classes):
    """``[C, d]``: mean of the features of each class."""
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(features.dtype)
    return class_sums(features, labels, num_classes) / counts[:, None]


def initial_alpha(features, labels, text_features, init_scale=250.0):
    """``init_scale * mean_{c,k} (mean_{n in c} f_n . t_k)`` (a float)."""
    return init_scale * class_means(features @ text_features.t(), labels, len(text_features)).mean().item()


def visual_lr(features):
    """``4 N / lambda_max(F^T F)`` (float64 eigenvalues)."""
    gram = features.double().t() @ features.double()
    return 4.0 * features.shape[0] / torch.linalg.eigvalsh(gram).max().item()


def alpha_lr(features, text_features):
    """``N / (4 max_c sum_n (f_n . t_c)^2)``."""
    return features.shape[0] / (4.0 * (features @ text_features.t()).pow(2).sum(0).max().item())


def lp_plus_plus_logits(features, weight, bias, alpha, text_features):
    return features @ weight.t() + bias + alpha * (features @ text_features.t())


def alpha_gradient(logits, labels, text_logits):
    """``d mean CE / d alpha_c = mean_n (p_nc - y_nc) (f_n . t_c)`` (``text_logits = F T^T``)."""
    residual = F.softmax(logits, dim=-1) - F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return (residual * text_logits).mean(0)


def set_learning_rate(optimizer, scheduler, lr):
    """Make ``lr`` the base rate of every group (the epoch scheduler recomputes lr from its base rates)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lr
    if scheduler is not None:
        scheduler.base_lrs = [lr for _ in optimizer.param_groups]


class BlendedProbe(FittedParts):
    """Linear layer ``weight [C, d]``, ``bias [C]`` (trained by the optimizer) and ``alpha [C]`` (a buffer
    stepped by hand every ALPHA_UPDATE_EVERY epochs)."""

    def __init__(self, classnames, dim):
        super().__init__(classnames)
        self.weight = torch.nn.Parameter(torch.zeros(len(classnames), dim))
        self.bias = torch.nn.Parameter(torch.zeros(len(classnames)))
        self.register_buffer("alpha", torch.zeros(len(classnames)))


@TRAINER_REGISTRY.register()
class LPPlusPlus(FeatureTrainer):

    PER_BATCH_STEP = False
    CFG_NODE = "LP_PLUS_PLUS"
    CFG_DEFAULTS = dict(FEATURE_DEFAULTS, ALPHA_UPDATE_EVERY=10, ALPHA_INIT_SCALE=250.0)

    def build_parts(self):
        return BlendedProbe(self.classnames, self.backbone.joint_dim)

    def fitted_logits(self, features, class_map):
        probe = self.learner
        return lp_plus_plus_logits(features, probe.weight[class_map], probe.bias[class_map], probe.alpha[class_map],
                                   self.text_features)

    def before_train(self):
        super().before_train()
        views, labels = self.support_features()
        self.train_features, self.train_labels = views.flatten(0, 1), labels.repeat(views.shape[0])
        features, text = self.train_features, self.text_features
        lr_visual, self.lr_alpha = visual_lr(features), alpha_lr(features, text)
        set_learning_rate(self.optim, self.sched, lr_visual)
        if self.start_epoch == 0:  # a resumed run keeps the checkpoint's weights
            with torch.no_grad():
                self.learner.weight.copy_(class_sums(features, self.train_labels, len(self.classnames)))
                self.learner.bias.zero_()
                alpha = initial_alpha(features, self.train_labels, text, self.method_cfg.ALPHA_INIT_SCALE)
                self.learner.alpha.fill_(alpha)
        print(f"LP++: {len(features)} features, lr_V {lr_visual:.4g}, lr_alpha {self.lr_alpha:.4g}, "
              f"alpha_0 {self.learner.alpha.mean().item():.4g}")

    def run_epoch(self):
        """One full-batch step of the linear layer, and of alpha every ALPHA_UPDATE_EVERY epochs."""
        self.set_model_mode("train")
        probe, features, labels = self.learner, self.train_features, self.train_labels
        logits = lp_plus_plus_logits(features, probe.weight, probe.bias, probe.alpha, self.text_features)
        loss = F.cross_entropy(logits, labels)
        self.model_backward_and_update(loss)
        if (self.epoch + 1) % self.method_cfg.ALPHA_UPDATE_EVERY == 0:
            text_logits = features @ self.text_features.t()
            probe.alpha.sub_(self.lr_alpha * alpha_gradient(logits.detach(), labels, text_logits))
        self.update_lr()
        if self.epoch_is_logged():
            print(f"epoch [{self.epoch + 1}/{self.max_epoch}] loss {loss.item():.4f} "
                  f"acc {compute_accuracy(logits, labels)[0].item():.2f} alpha {probe.alpha.mean().item():.4g} "
                  f"lr {self.get_current_lr():.4e}")

    def forward_backward(self, batch):
        raise RuntimeError("LPPlusPlus steps full-batch on cached features in run_epoch; it has no per-batch step")
