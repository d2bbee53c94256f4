"""Loss terms and prompt-selection rules of the baseline prompt learners, as small pure functions."""
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
