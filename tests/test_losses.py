"""Each baseline loss term pinned to its formula on small hand-checkable tensors."""
import math

import pytest
import torch
from torch.nn import functional as F
from vmfcoop.trainers.losses import (
    consistency_mse,
    distillation_kl,
    knowledge_distance,
    masked_prompt_mean,
    outlier_keep_mask,
    project_conflicting_gradient,
    prompt_scores,
    soft_cross_entropy,
)


def test_knowledge_distance_is_one_minus_mean_cosine():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    hand = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # cosines 1 and 0 -> 1 - 0.5
    assert knowledge_distance(text, hand).item() == pytest.approx(0.5)


def test_soft_cross_entropy_formula():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0]])
    t = 2.0
    p_teacher = [math.exp(v / t) for v in (0.0, 1.0, 0.0)]
    p_teacher = [p / sum(p_teacher) for p in p_teacher]
    z = [v / t for v in (2.0, 0.0, -1.0)]
    log_z = math.log(sum(math.exp(v) for v in z))
    expected = t * t * -sum(p * (v - log_z) for p, v in zip(p_teacher, z))
    assert soft_cross_entropy(student, teacher, t).item() == pytest.approx(expected, rel=1e-6)


def test_prograd_projection_removes_conflicting_component_only():
    g_kl = torch.tensor([1.0, 0.0])
    conflicting = torch.tensor([-2.0, 3.0])  # cos < 0
    assert torch.allclose(project_conflicting_gradient(conflicting, g_kl), torch.tensor([0.0, 3.0]))
    half = project_conflicting_gradient(conflicting, g_kl, strength=0.5)
    assert torch.allclose(half, torch.tensor([-1.0, 3.0]))
    agreeing = torch.tensor([2.0, 3.0])
    assert torch.equal(project_conflicting_gradient(agreeing, g_kl), agreeing)
    assert torch.equal(project_conflicting_gradient(conflicting, torch.zeros(2)), conflicting)


def test_prompt_scores_mean_of_max_class_logit():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    prompts = torch.tensor([  # [C=2, P=2, d=2]
        [[1.0, 0.0], [0.6, 0.8]],
        [[0.0, 1.0], [0.8, 0.6]],
    ])
    scores = prompt_scores(images, prompts, scale=2.0)
    # prompt 0: image0 max(1,0)=1, image1 max(0,1)=1 -> mean 1 -> *2
    # prompt 1: image0 max(.6,.8)=.8, image1 max(.8,.6)=.8 -> .8*2
    assert torch.allclose(scores, torch.tensor([2.0, 1.6]))


@pytest.mark.parametrize("seed", range(5))
def test_outlier_rule_equals_mean_std_rule(seed):
    scores = torch.randn(50, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    scores[3] += 6.0  # an outlier
    tau = 1.5
    expected = (scores - scores.mean()).abs() <= tau * scores.std()
    keep = outlier_keep_mask(scores, tau)
    assert torch.equal(keep, expected) and not keep[3]


def test_outlier_rule_degenerate_keeps_everything():
    assert outlier_keep_mask(torch.ones(10), 1.5).all()
    assert outlier_keep_mask(torch.tensor([1.0]), 1.5).all()


def test_masked_prompt_mean():
    prompts = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    keep = torch.tensor([True, True, False])
    assert torch.allclose(masked_prompt_mean(prompts, keep), F.normalize(torch.tensor([[0.5, 0.5]]), dim=-1))


def test_distillation_kl_direction_teacher_to_student():
    student = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    teacher = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    p_t, p_s = F.softmax(teacher, -1), F.softmax(student, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum() / (2 * 2)  # KL(teacher || student) / (B*C)
    assert distillation_kl(student, teacher).item() == pytest.approx(kl.item(), rel=1e-6)
    reverse = (p_s * (p_s.log() - p_t.log())).sum() / 4
    assert distillation_kl(student, teacher).item() != pytest.approx(reverse.item(), rel=1e-3)


def test_consistency_mse_is_elementwise_mean():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    assert consistency_mse(a, b).item() == pytest.approx(1.0)
