"""von Mises-Fisher fits on the unit sphere S^{d-1} (pure functions, float64).

For unit vectors x_1..x_n the maximum-likelihood mean direction is mu = xbar / R with R = ||xbar||
(the mean resultant length). The concentration solves A_d(kappa) = R, where
A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa). vMFCoOp (eq. 3) uses Banerjee et al.'s closed form
kappa ~ R (d - R^2) / (1 - R^2 + eps); ``exact_kappa`` solves the equation numerically to check it.
"""
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import ive


@dataclass(frozen=True)
class VMFField:
    """A fitted vMF: unit mean direction ``mu`` (float64 ``[d]``), concentration ``kappa`` and the
    mean resultant length ``resultant`` it came from (``count`` samples)."""

    mu: torch.Tensor
    kappa: float
    resultant: float
    count: int


def mean_resultant(samples):
    """``(xbar, R)`` of ``samples [n, d]`` (rows normalised here, in float64)."""
    unit = torch.nn.functional.normalize(samples.double(), dim=-1)
    xbar = unit.mean(0)
    return xbar, float(xbar.norm())


def banerjee_kappa(resultant, dim, eps=1e-6, kappa_max=1e5):
    """The paper's eq. 3: ``R (d - R^2) / (1 - R^2 + eps)``, clamped to ``[0, kappa_max]``.

    ``eps`` keeps the value finite when R -> 1 (one prompt, or duplicates); the clamp bounds it.
    """
    r = float(resultant)
    kappa = r * (dim - r * r) / (1.0 - r * r + eps)
    return min(max(kappa, 0.0), float(kappa_max))


def bessel_ratio(kappa, dim):
    """``A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa)`` via exponentially scaled Bessel functions.

    The scaling cancels in the ratio. For kappa far below d (a nearly uniform field) both values
    underflow in float64; that is reported instead of returning NaN.
    """
    nu = dim / 2.0
    num, den = ive(nu, kappa), ive(nu - 1.0, kappa)
    if not (den > 0.0 and np.isfinite(num)):
        raise ValueError(f"Bessel functions underflow for kappa={kappa:.4g} in d={dim}; "
                         "the exact fit needs a larger kappa (use banerjee_kappa).")
    return num / den


def kappa_bounds(resultant, dim):
    """Tanabe et al.'s bracket of the MLE: ``R (d-2)/(1-R^2) <= kappa <= R d/(1-R^2)``."""
    r = float(resultant)
    return r * (dim - 2) / (1.0 - r * r), r * dim / (1.0 - r * r)


def exact_kappa(resultant, dim, xtol=1e-10):
    """Numerical MLE: the root of ``A_d(kappa) = R`` (brentq on a widened Tanabe bracket)."""
    r = float(resultant)
    if not 0.0 < r < 1.0:
        raise ValueError(f"The exact vMF fit needs 0 < R < 1, got R={r}")
    low, high = kappa_bounds(r, dim)
    return brentq(lambda k: bessel_ratio(k, dim) - r, 0.5 * low, 2.0 * high + 1.0, xtol=xtol)


KAPPA_ESTIMATORS = ("banerjee", "exact")


def estimate_kappa(resultant, dim, estimator="banerjee", eps=1e-6, kappa_max=1e5):
    if estimator == "banerjee":
        return banerjee_kappa(resultant, dim, eps, kappa_max)
    if estimator == "exact":
        if resultant >= 1.0:  # identical samples: unbounded MLE
            return float(kappa_max)
        return min(exact_kappa(resultant, dim), float(kappa_max))
    raise ValueError(f"KAPPA_ESTIMATOR must be one of {KAPPA_ESTIMATORS}, got {estimator!r}")


def field_from_mean(xbar, count, estimator="banerjee", eps=1e-6, kappa_max=1e5):
    """A ``VMFField`` from the mean of ``count`` unit vectors (the sufficient statistic)."""
    xbar = xbar.double()
    resultant = float(xbar.norm())
    kappa = estimate_kappa(resultant, xbar.numel(), estimator, eps, kappa_max)
    return VMFField(mu=xbar / max(resultant, 1e-300), kappa=kappa, resultant=resultant, count=int(count))


def fit_vmf(samples, estimator="banerjee", eps=1e-6, kappa_max=1e5):
    """Fit one vMF to ``samples [n, d]`` (rows are normalised first)."""
    xbar, _ = mean_resultant(samples)
    return field_from_mean(xbar, samples.shape[0], estimator, eps, kappa_max)


def mean_natural_parameter(fields):
    """Average several vMFs on the same sphere by their natural parameters ``theta = kappa * mu``.

    The normalised geometric mean of vMF densities is the vMF with the mean theta, so the result
    has direction ``normalize(sum kappa_s mu_s)`` and concentration ``||mean theta||``.
    """
    theta = torch.stack([f.kappa * f.mu for f in fields]).mean(0)
    kappa = float(theta.norm())
    resultant = sum(f.resultant for f in fields) / len(fields)
    return VMFField(mu=theta / max(kappa, 1e-300), kappa=kappa, resultant=resultant,
                    count=sum(f.count for f in fields))


def unified_anchor(clip_field, llm_field):
    """The paper's eq. 4: ``u = normalize(kappa_C mu_C + kappa_L mu_L)`` (float64 ``[d]``)."""
    combined = clip_field.kappa * clip_field.mu + llm_field.kappa * llm_field.mu
    return combined / combined.norm()


def angle_degrees(a, b):
    """Angles between matching rows of ``a`` and ``b`` (any norms), in degrees."""
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))

