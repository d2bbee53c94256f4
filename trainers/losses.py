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


# ---------------------------------------------------------------- BioVLM


def kept_count(total, ratio):
    """How many of ``total`` candidates a ``ratio`` keeps: ``floor(ratio * total)``, at least 1 (BioVLM's rule)."""
    return max(1, min(total, int(ratio * total + 1e-9)))


def softmax_entropy(logits):
    """Shannon entropy (nats) of ``softmax(logits)`` over the last axis."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def select_confident(logits, keep):
    """Per row of ``logits [B, K, C]``, the ``keep`` candidates with the lowest prediction entropy -> ``[B, keep, C]``.

    The selection itself carries no gradient; the selected logits do.
    """
    index = softmax_entropy(logits.detach()).topk(keep, dim=1, largest=False).indices
    return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))


def marginal_entropy(selected_logits):
    """TPT-style marginal entropy ``mean_b H(mean_k softmax(z_bk))`` of ``[B, k, C]`` logits (differentiable)."""
    log_p = F.log_softmax(selected_logits, dim=-1)
    log_mean = torch.logsumexp(log_p, dim=1) - math.log(selected_logits.shape[1])
    return -(log_mean.exp() * log_mean).sum(-1).mean()


def attribute_alignment_loss(bank_text_features, attribute_means):
    """``1 - mean_{m,c} cos(t_{m,c}, a_c)``: each bank entry's class feature ``[M, C, d]`` against the
    class mean of the attribute features ``[C, d]`` (cosine over the feature axis)."""
    cosine = F.cosine_similarity(bank_text_features, attribute_means.unsqueeze(0).expand_as(bank_text_features), dim=-1)
    return 1.0 - cosine.mean()


# ---------------------------------------------------------------- OGKD


def class_relation_graph(prototypes, alpha):
    """OGKD's class graph ``W = row_softmax(alpha * P P^T)`` over the normalised prototypes ``P [C, d]``."""
    unit = F.normalize(prototypes.float(), dim=-1)
    return F.softmax(alpha * unit @ unit.t(), dim=-1)


def graph_smoothed_log_teacher(teacher_logits, graph, gamma, renormalize=False):
    """``l~ = (1 - gamma) l + gamma l W`` with ``l = log_softmax(teacher_logits)`` (``[..., C]``, no gradient).

    ``l~_j`` mixes class j's log-probability with its graph neighbours' (``sum_k l_k W_kj``): a geometric
    mixture, so ``exp(l~)`` does not sum to 1 unless ``renormalize`` (then ``l~`` is log-softmaxed again).
    """
    log_teacher = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    smoothed = (1.0 - gamma) * log_teacher + gamma * log_teacher @ graph
    return F.log_softmax(smoothed, dim=-1) if renormalize else smoothed


def geometry_aware_distillation(student_logits, teacher_logits, graph, gamma, renormalize=False):
    """OGKD's GAD: ``(1/(B C)) sum_{b,j} exp(l~_bj) (l~_bj - log p_bj)``, p = softmax(student) (``[B, C]``)."""
    target = graph_smoothed_log_teacher(teacher_logits, graph, gamma, renormalize)
    log_student = F.log_softmax(student_logits, dim=-1)
    return (target.exp() * (target - log_student)).sum() / student_logits.numel()


def attentive_patch_indices(teacher_patch_logits, labels, ratio):
    """``[B, K]`` indices of the K = max(1, round(N * ratio)) patches whose teacher logit for the true class
    has the largest magnitude (``teacher_patch_logits [B, N, C]``, ``labels [B]``)."""
    patches = teacher_patch_logits.shape[1]
    k = min(patches, max(1, round(patches * ratio)))
    true_class = teacher_patch_logits.gather(-1, labels[:, None, None].expand(-1, patches, 1)).squeeze(-1)
    return true_class.abs().topk(k, dim=1).indices


def label_guided_distillation(student_patch_logits, teacher_patch_logits, graph, labels, gamma, renormalize=False):
    """OGKD's LGD on selected patches ``[B, K, C]``: the true-class channel only,
    ``(1/(B K)) sum_{b,n} exp(l~_bny) (l~_bny - log p_bny)`` (a teacher-weighted patch NLL, not a full KL)."""
    target = graph_smoothed_log_teacher(teacher_patch_logits, graph, gamma, renormalize)
    log_student = F.log_softmax(student_patch_logits, dim=-1)
    index = labels[:, None, None].expand(-1, student_patch_logits.shape[1], 1)
    target, log_student = target.gather(-1, index).squeeze(-1), log_student.gather(-1, index).squeeze(-1)
    return (target.exp() * (target - log_student)).mean()


# ---------------------------------------------------------------- Biomed-DPT / BiomedAP


def anchor_l1(text_features, anchors):
    """Biomed-DPT's text anchor term: mean absolute difference over ``[C, d]``."""
    return F.l1_loss(text_features, anchors)


def dual_anchor_loss(text_features, high_anchors, low_anchors, high_weight, low_weight):
    """BiomedAP's dual-anchor constraint ``w_high L1(T, A_high) + w_low L1(T, A_low)``; a zero weight skips its term."""
    loss = text_features.new_zeros(())
    if high_weight:
        loss = loss + high_weight * anchor_l1(text_features, high_anchors)
    if low_weight:
        loss = loss + low_weight * anchor_l1(text_features, low_anchors)
    return loss


def gated_residual(tokens, update, gate):
    """``tokens + gate * update``: a zero gate leaves the tokens unchanged, a one gate adds the full update."""
    return tokens + gate * update


def context_alignment_loss(enhanced_contexts, context):
    """BiomedAP's prompt alignment: mean over fusion layers of ``1 - cos(token mean of the enhanced context,
    token mean of the context)``; ``enhanced_contexts`` is a list of ``[B, M, D]``, ``context [B, M, D]``."""
    reference = F.normalize(context.mean(1), dim=-1)
    terms = [1.0 - (F.normalize(e.mean(1), dim=-1) * reference).sum(-1).mean() for e in enhanced_contexts]
    return torch.stack(terms).mean()
