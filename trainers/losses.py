"""Loss terms and prompt-selection rules of the baseline prompt learners, as small pure functions."""
import math

import torch
from torch.nn import functional as F


def knowledge_distance(text_features, hand_features):
    """KgCoOp's term: ``1 - mean_c cos(t_c, t_c^hand)`` (both inputs normalised, ``[C, d]``)."""
    return 1.0 - (text_features * hand_features).sum(-1).mean()


def soft_cross_entropy(student_logits, teacher_logits, temperature=1.0):
    """ProGrad's KL term: ``T^2 * mean_b sum_c -softmax(teacher/T) * log_softmax(student/T)``."""
    teacher = F.softmax(teacher_logits / temperature, dim=-1)
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    return temperature ** 2 * (-(teacher * log_student).sum(-1)).mean()


def project_conflicting_gradient(grad, reference, strength=1.0, eps=1e-12):
    """ProGrad: if ``grad`` points against ``reference`` (cos < 0) remove ``strength`` times its
    component along ``reference``; otherwise return ``grad`` unchanged. A zero reference changes nothing.
    """
    ref_norm = reference.norm()
    if ref_norm <= eps:
        return grad
    unit = reference / ref_norm
    along = (grad * unit).sum()
    return grad - strength * along * unit if along < 0 else grad


def prompt_scores(image_features, prompt_features, scale):
    """Per prompt index i: mean over the batch of the max-class logit ``s * f . E[:, i]`` -> ``[P]``."""
    logits = scale * torch.einsum("bd,cpd->bpc", image_features, prompt_features)
    return logits.max(-1).values.mean(0)


def outlier_keep_mask(scores, tau, eps=1e-12):
    """BiomedCoOp's rule: robust z = (s - median)/MAD, kept where |standardised z| <= tau.

    Re-standardising z cancels the median/MAD step, so this equals ``|s - mean| <= tau * std`` (unbiased
    std). Degenerate cases (all scores equal, or nothing kept) keep every prompt instead of producing NaN.
    Computed without host synchronisation.
    """
    if scores.numel() < 2:
        return torch.ones_like(scores, dtype=torch.bool)
    median = scores.median()
    mad = (scores - median).abs().median()
    z = (scores - median) / mad.clamp_min(eps)
    standardised = (z - z.mean()) / z.std().clamp_min(eps)
    keep = standardised.abs() <= tau
    degenerate = (mad <= eps) | ~keep.any()
    return keep | degenerate


def select_prompts_by_outlier_rule(image_features, prompt_features, scale, tau):
    """Boolean mask over the P prompts of ``prompt_features [C, P, d]``."""
    return outlier_keep_mask(prompt_scores(image_features, prompt_features, scale), tau)


def masked_prompt_mean(prompt_features, keep):
    """Normalised mean over the kept prompts, ``[C, d]`` (a weighted sum: no host sync)."""
    weights = keep.to(prompt_features.dtype)
    return F.normalize((prompt_features * weights[None, :, None]).sum(1) / weights.sum(), dim=-1)


def distillation_kl(student_logits, teacher_logits):
    """BiomedCoOp's KD: ``KL(p_teacher || p_student)`` summed, divided by ``B * C``."""
    batch, classes = student_logits.shape
    return F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1),
                    log_target=True, reduction="sum") / (batch * classes)


def consistency_mse(text_features, anchor_features):
    """BiomedCoOp's SCCM: element-wise MSE between normalised learned and LLM-mean text features."""
    return F.mse_loss(text_features, anchor_features)


# ---------------------------------------------------------------- vMFCoOp


def symmetric_cross_entropy(logits, labels, eps=1e-4):
    """vMFCoOp's eq. 10: ``-(1/B) sum_b [log p_{b,y} + sum_c p_{b,c} log(q_{b,c} + eps)]``, q one-hot.

    The reverse term equals ``p_y log(1 + eps) + (1 - p_y) log(eps)``, so ``eps`` sets its weight
    (``-log eps``, about 9.2 at 1e-4). p enters it linearly, so it needs no clamp.
    """
    log_p = F.log_softmax(logits, dim=-1)
    p_true = log_p.gather(1, labels[:, None]).squeeze(1).exp()
    reverse = p_true * math.log1p(eps) + (1.0 - p_true) * math.log(eps)
    return F.nll_loss(log_p, labels) - reverse.mean()


def annealed_scale(step, total_steps, scale_start, scale_end):
    """vMFCoOp's eq. 9: ``tau_end + (tau_start - tau_end)(1 + cos(pi t / T)) / 2``; ``t`` is clipped to [0, T]."""
    progress = min(max(step / total_steps, 0.0), 1.0) if total_steps > 0 else 1.0
    return scale_end + 0.5 * (scale_start - scale_end) * (1.0 + math.cos(math.pi * progress))


def capped_drift(drift, cap):
    """Rescale rows of ``drift [C, d]`` whose norm exceeds ``cap`` down to ``cap`` (cap <= 0: unchanged)."""
    if cap <= 0:
        return drift
    norms = drift.norm(dim=-1, keepdim=True)
    return drift * (cap / norms.clamp_min(cap))


def dynamic_anchor_targets(anchors, drift):
    """vMFCoOp's eq. 5: ``normalize(u_i + alpha delta_i)`` with ``drift = alpha * delta`` (``[C, d]``)."""
    return F.normalize(anchors + drift, dim=-1)


def anchor_alignment_loss(text_features, targets):
    """vMFCoOp's eq. 6: ``(1/C) sum_i ||P_i - target_i||^2`` (squared L2 over d, mean over classes)."""
    return (text_features - targets).pow(2).sum(-1).mean()


def semantic_contrastive_loss(text_features, anchors, scale):
    """vMFCoOp's eqs. 7-8: cross-entropy of ``scale * P U^T`` with class i matched to anchor i."""
    logits = scale * text_features @ anchors.t()
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
