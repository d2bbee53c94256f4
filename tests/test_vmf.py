"""vMF fits and vMFCoOp's loss terms, each checked against an independent direct computation."""
import math

import numpy as np
import pytest
import torch
from scipy.special import iv
from vmfcoop.trainers.losses import (
    anchor_alignment_loss,
    annealed_scale,
    capped_drift,
    dynamic_anchor_targets,
    semantic_contrastive_loss,
    symmetric_cross_entropy,
)
from vmfcoop.trainers.vmf import (
    VMFField,
    angle_degrees,
    banerjee_kappa,
    bessel_ratio,
    estimate_kappa,
    exact_kappa,
    fit_vmf,
    kappa_bounds,
    mean_natural_parameter,
    mean_resultant,
    unified_anchor,
)


def sample_vmf_wood(mu, kappa, n, rng):
    """Wood (1994): rejection-sample the cosine w to mu, then add a uniform tangent direction."""
    d = mu.shape[0]
    b = (-2.0 * kappa + math.sqrt(4.0 * kappa ** 2 + (d - 1) ** 2)) / (d - 1)
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + (d - 1) * math.log(1.0 - x0 ** 2)
    w = np.empty(0)
    while w.size < n:
        z = rng.beta((d - 1) / 2.0, (d - 1) / 2.0, size=n)
        cand = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        accept = kappa * cand + (d - 1) * np.log(1.0 - x0 * cand) - c >= np.log(rng.uniform(size=n))
        w = np.concatenate([w, cand[accept]])
    w = w[:n, None]
    tangent = rng.normal(size=(n, d))
    tangent -= (tangent @ mu)[:, None] * mu[None]
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    return w * mu[None] + np.sqrt(1.0 - w ** 2) * tangent


def random_unit(d, rng):
    v = rng.normal(size=d)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------- vMF estimation


def test_mean_resultant_matches_a_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    xbar, r = mean_resultant(torch.tensor(x, dtype=torch.float32))
    expected = np.zeros(5)
    for row in x:
        expected += row / math.sqrt(sum(v * v for v in row))
    expected /= 7
    assert xbar.dtype == torch.float64
    np.testing.assert_allclose(xbar.numpy(), expected, rtol=1e-6)
    assert r == pytest.approx(math.sqrt(sum(v * v for v in expected)), rel=1e-6)


@pytest.mark.parametrize("r, d", [(0.3, 512), (0.9, 512), (0.5, 10)])
def test_banerjee_formula(r, d):
    assert banerjee_kappa(r, d, eps=1e-6) == pytest.approx(r * (d - r * r) / (1 - r * r + 1e-6), rel=1e-12)


def test_banerjee_is_finite_and_clamped_when_r_reaches_one():
    assert banerjee_kappa(1.0, 512, eps=1e-6, kappa_max=1e5) == 1e5
    assert banerjee_kappa(1.0, 512, eps=1e-2, kappa_max=1e9) == pytest.approx(511 / 1e-2)
    assert banerjee_kappa(0.0, 512) == 0.0


@pytest.mark.parametrize("kappa, d", [(3.0, 10), (40.0, 6), (700.0, 512)])
def test_bessel_ratio_matches_unscaled_bessel(kappa, d):
    assert bessel_ratio(kappa, d) == pytest.approx(iv(d / 2, kappa) / iv(d / 2 - 1, kappa), rel=1e-10)


def test_bessel_ratio_reports_underflow():
    with pytest.raises(ValueError, match="underflow"):
        bessel_ratio(1.0, 512)


def test_exact_kappa_inverts_the_closed_form_in_three_dimensions():
    kappa = 5.0
    r = 1.0 / math.tanh(kappa) - 1.0 / kappa  # A_3(kappa) = coth(kappa) - 1/kappa
    assert exact_kappa(r, 3) == pytest.approx(kappa, rel=1e-8)
    low, high = kappa_bounds(r, 3)
    assert low <= kappa <= high


@pytest.mark.parametrize("kappa", [300.0, 2000.0])
def test_kappa_estimates_on_wood_samples_in_high_dimension(kappa):
    d, n = 512, 3000
    rng = np.random.default_rng(1)
    mu = random_unit(d, rng)
    samples = sample_vmf_wood(mu, kappa, n, rng)
    np.testing.assert_allclose(np.linalg.norm(samples, axis=1), 1.0, atol=1e-12)
    field = fit_vmf(torch.from_numpy(samples))
    mle = exact_kappa(field.resultant, d)
    assert field.kappa == pytest.approx(kappa, rel=0.05)  # sampling error at n=3000
    assert mle == pytest.approx(kappa, rel=0.05)
    assert field.kappa == pytest.approx(mle, rel=0.01)  # the approximation, against the exact MLE
    assert float(field.mu @ torch.from_numpy(mu)) > 0.99
    assert estimate_kappa(field.resultant, d, "exact") == pytest.approx(mle)


def test_exact_estimator_clamps_identical_samples_and_unknown_estimators_are_refused():
    assert estimate_kappa(1.0, 512, "exact", kappa_max=1e5) == 1e5
    with pytest.raises(ValueError, match="KAPPA_ESTIMATOR"):
        estimate_kappa(0.5, 10, "moments")


def test_unified_anchor_and_natural_parameter_mean_match_numpy():
    rng = np.random.default_rng(2)
    mu_c, mu_l, mu_m = (random_unit(6, rng) for _ in range(3))
    clip = VMFField(torch.from_numpy(mu_c), 40.0, 0.3, 100)
    llm = VMFField(torch.from_numpy(mu_l), 900.0, 0.9, 50)
    expected = 40.0 * mu_c + 900.0 * mu_l
    np.testing.assert_allclose(unified_anchor(clip, llm).numpy(), expected / np.linalg.norm(expected), rtol=1e-12)

    other = VMFField(torch.from_numpy(mu_m), 300.0, 0.7, 50)
    pooled = mean_natural_parameter([llm, other])
    theta = (900.0 * mu_l + 300.0 * mu_m) / 2
    assert pooled.kappa == pytest.approx(np.linalg.norm(theta))
    np.testing.assert_allclose(pooled.mu.numpy(), theta / np.linalg.norm(theta), rtol=1e-12)
    assert pooled.count == 100


def test_angle_degrees():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [1.0, 1.0], [2.0, 0.0]])
    np.testing.assert_allclose(angle_degrees(a, b).numpy(), [90.0, 45.0, 0.0], atol=1e-6)


# ---------------------------------------------------------------- loss terms


def test_symmetric_cross_entropy_matches_the_paper_formula_in_a_loop():
    torch.manual_seed(0)
    logits, labels, eps = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 3, 1, 1, 2]), 1e-4
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        exps = [math.exp(v) for v in row]
        p = [e / sum(exps) for e in exps]
        q = [1.0 if c == y else 0.0 for c in range(4)]
        total += math.log(p[y]) + sum(pc * math.log(qc + eps) for pc, qc in zip(p, q))
    assert float(symmetric_cross_entropy(logits, labels, eps)) == pytest.approx(-total / 5, rel=1e-10)


def test_annealed_scale_endpoints_and_monotone():
    taus = [annealed_scale(t, 40, 10.0, 100.0) for t in range(41)]
    assert taus[0] == pytest.approx(10.0) and taus[-1] == pytest.approx(100.0)
    assert all(b > a for a, b in zip(taus, taus[1:]))
    assert taus[20] == pytest.approx(55.0)
    assert annealed_scale(50, 40, 10.0, 100.0) == pytest.approx(100.0)


def test_anchor_alignment_and_dynamic_targets_match_a_loop():
    torch.manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(3, 6, dtype=torch.float64), dim=-1)
    anchors = torch.nn.functional.normalize(torch.randn(3, 6, dtype=torch.float64), dim=-1)
    delta, alpha = torch.randn(3, 6, dtype=torch.float64), 0.3
    targets = dynamic_anchor_targets(anchors, alpha * delta)
    expected = 0.0
    for i in range(3):
        raw = [anchors[i, k].item() + alpha * delta[i, k].item() for k in range(6)]
        norm = math.sqrt(sum(v * v for v in raw))
        expected += sum((text[i, k].item() - raw[k] / norm) ** 2 for k in range(6))
    assert float(anchor_alignment_loss(text, targets)) == pytest.approx(expected / 3, rel=1e-10)
    # for unit vectors the squared distance is 2 (1 - cos)
    cos = (text * targets).sum(-1).mean()
    assert float(anchor_alignment_loss(text, targets)) == pytest.approx(float(2 * (1 - cos)), rel=1e-10)


def test_semantic_contrastive_loss_matches_a_loop():
    torch.manual_seed(2)
    text, anchors, scale = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64), 7.0
    expected = 0.0
    for i in range(4):
        s = [scale * sum(text[i, k].item() * anchors[j, k].item() for k in range(5)) for j in range(4)]
        expected += -(s[i] - math.log(sum(math.exp(v) for v in s)))
    assert float(semantic_contrastive_loss(text, anchors, scale)) == pytest.approx(expected / 4, rel=1e-10)


def test_capped_drift():
    drift = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    capped = capped_drift(drift, 1.0)
    np.testing.assert_allclose(capped.numpy(), [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], rtol=1e-6)
    assert capped_drift(drift, 0.0) is drift
