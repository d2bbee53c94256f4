"""Linear probe: multinomial L2-regularised logistic regression on frozen image features.

The objective is scikit-learn's ``LogisticRegression(C)`` (which is not a dependency):
``mean_n CE(W f_n + b, y_n) + |W|^2 / (2 C N)``, bias unpenalised, minimised full-batch with L-BFGS
(strong Wolfe line search, float64) to a gradient max-norm of TOLERANCE or MAX_ITER iterations.

C is chosen on the few-shot val split only: the grid C_GRID, then REFINE_STEPS steps of a log-space
bisection starting from [peak / 10, peak * 10]; each step scores both ends and keeps the half on the
better side (CoOp's linear-probe search). Unlike that search, which keeps the last step's classifier,
the C with the best val score over every fit is kept; scores compare val accuracy, then val
cross-entropy, so ties between the few val images resolve towards the better-calibrated fit.

Features: AUGMENT_EPOCHS 0 (default) encodes each support image once with the test transform, the
classical linear-probe protocol (CLIP, CoOp): a closed-form fit gains nothing from one random crop
per image, and train and test features then come from the same transform. AUGMENT_EPOCHS E > 0 uses E
augmented views of every image as E training samples (BiomedCoOp's main.py used one augmented pass).
"""
import math

import torch
from torch.nn import functional as F
from vmfcoop.engine import TRAINER_REGISTRY, compute_accuracy

from .feature_utils import FEATURE_DEFAULTS, FeatureTrainer, FittedParts

C_GRID = [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6]


def logistic_objective(features, labels, weight, bias, c):
    """``mean CE + |W|^2 / (2 C N)``: scikit-learn's multinomial objective divided by N."""
    logits = features @ weight.t() + bias
    return F.cross_entropy(logits, labels) + weight.pow(2).sum() / (2.0 * c * features.shape[0])


def fit_logistic_regression(features, labels, num_classes, c, max_iter=1000, tolerance=1e-4):
    """``(weight [C, d], bias [C])`` minimising :func:`logistic_objective` from zeros, with L-BFGS."""
    x = features.detach().double()
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = logistic_objective(x, labels, weight, bias, c)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().to(features.dtype), bias.detach().to(features.dtype)


def search_log_scale(score, grid, refine_steps):
    """``(best value, its score, {value: score})`` maximising ``score(value)`` over ``grid`` and a
    log10 bisection of [peak / 10, peak * 10]. Scores are compared as tuples; the first best wins ties."""
    scores = {}

    def scored(value):
        if value not in scores:
            scores[value] = score(value)
        return scores[value]

    peak = max(grid, key=scored)
    low, high = math.log10(peak) - 1.0, math.log10(peak) + 1.0
    for _ in range(refine_steps):
        middle = 0.5 * (low + high)
        if scored(10.0 ** high) > scored(10.0 ** low):
            low = middle
        else:
            high = middle
    best = max(scores, key=scores.get)
    return best, scores[best], scores


class LinearClassifier(FittedParts):
    """``W [C, d]``, ``b [C]`` and the chosen C, all fitted in closed form (buffers)."""

    def __init__(self, classnames, dim):
        super().__init__(classnames)
        self.register_buffer("weight", torch.zeros(len(classnames), dim))
        self.register_buffer("bias", torch.zeros(len(classnames)))
        self.register_buffer("c", torch.tensor(1.0))


@TRAINER_REGISTRY.register()
class LinearProbe(FeatureTrainer):
    """Closed-form fit before the loop; OPTIM.MAX_EPOCH 1 gives the epoch that writes the checkpoint."""

    PER_BATCH_STEP = False

    CFG_NODE = "LINEAR_PROBE"
    CFG_DEFAULTS = dict(FEATURE_DEFAULTS, AUGMENT_EPOCHS=0, C_GRID=list(C_GRID), REFINE_STEPS=8, MAX_ITER=1000,
                        TOLERANCE=1e-4)

    def build_parts(self):
        return LinearClassifier(self.classnames, self.backbone.joint_dim)

    def fitted_logits(self, features, class_map):
        return features @ self.learner.weight[class_map].t() + self.learner.bias[class_map]

    def fit(self, features, labels, c):
        node = self.method_cfg
        return fit_logistic_regression(features, labels, len(self.classnames), c, node.MAX_ITER, node.TOLERANCE)

    def before_train(self):
        super().before_train()
        if self.start_epoch > 0:  # resumed: the fit comes from the checkpoint
            return
        views, labels = self.support_features()
        features, labels = views.flatten(0, 1), labels.repeat(views.shape[0])
        c = self.choose_c(features, labels)
        weight, bias = self.fit(features, labels, c)
        self.learner.weight.copy_(weight)
        self.learner.bias.copy_(bias)
        self.learner.c.fill_(c)
        train_acc = compute_accuracy(features @ weight.t() + bias, labels)[0].item()
        print(f"Linear probe: C = {c:.4g}, train accuracy {train_acc:.2f}% on {len(labels)} features")

    def choose_c(self, features, labels):
        """C with the best (val accuracy, -val cross-entropy); 1.0 (scikit-learn's default) without a val split."""
        if self.val_data is None:
            print("No val split: C = 1.0")
            return 1.0
        val_features, val_labels = self.val_data

        def score(c):
            weight, bias = self.fit(features, labels, c)
            logits = val_features @ weight.t() + bias
            return compute_accuracy(logits, val_labels)[0].item(), -F.cross_entropy(logits, val_labels).item()

        node = self.method_cfg
        c, (val_acc, neg_loss), _ = search_log_scale(score, list(node.C_GRID), node.REFINE_STEPS)
        print(f"Searched on val: C = {c:.4g}, val accuracy {val_acc:.2f}%, val cross-entropy {-neg_loss:.4f}")
        return c

    def run_epoch(self):
        print(f"epoch [{self.epoch + 1}/{self.max_epoch}] fitted in closed form before the loop: nothing to step")

    def forward_backward(self, batch):
        raise RuntimeError("LinearProbe is fitted in closed form on cached features; it has no per-batch step")
