"""Adapter and linear-probe baselines: their formulas against direct computations, and their wiring.

The registry-wide tests in test_trainers.py cover train / save / reload / base-to-new for them.
"""
import glob
import json
import math
import os

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from vmfcoop.engine import build_trainer
from vmfcoop.engine.cli import build_parser, main, setup_cfg
from vmfcoop.trainers.clip_adapter import residual_blend
from vmfcoop.trainers.feature_utils import class_digests, class_index_map
from vmfcoop.trainers.linear_probe import fit_logistic_regression, logistic_objective, search_log_scale
from vmfcoop.trainers.lp_plus_plus import (
    alpha_gradient,
    alpha_lr,
    class_sums,
    initial_alpha,
    lp_plus_plus_logits,
    visual_lr,
)
from vmfcoop.trainers.tip_adapter import TipCache, search_alpha_beta, search_grid, tip_cache_logits


def cli_args(repo_root, root, out, trainer, *flags, protocol="few_shot", opts=()):
    return ["--root", root, "--output-dir", str(out), "--seed", "1", "--trainer", trainer,
            "--config-file", os.path.join(repo_root, "configs", "trainers", trainer, protocol, "default.yaml"),
            "--backbone", "tiny-bert", *flags, "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "2",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "16", "CACHE.DIR", str(out) + "-cache",
            *opts]


def build(trainer, repo_root, root, tmp_path, *opts):
    return build_trainer(setup_cfg(build_parser().parse_args(
        cli_args(repo_root, root, tmp_path / "out", trainer, opts=opts))))


def unit_rows(generator, n, d):
    return F.normalize(torch.randn(n, d, generator=generator), dim=-1)


# ---------------------------------------------------------------- Tip-Adapter


def test_tip_cache_logits_match_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    features, keys, values = unit_rows(g, 3, 5), unit_rows(g, 4, 5), torch.rand(4, 2, generator=g)
    alpha, beta = 1.7, 5.5
    expected = torch.zeros(3, 2)
    for b in range(3):
        for c in range(2):
            for n in range(4):
                expected[b, c] += alpha * math.exp(-beta * (1 - float(features[b] @ keys[n]))) * values[n, c]
    assert torch.allclose(tip_cache_logits(features, keys, values, alpha, beta), expected, atol=1e-5)


def test_tip_adapter_builds_its_cache_and_adds_it_to_the_zero_shot_logits(repo_root, synthetic_root, tmp_path):
    t = build("TipAdapter", repo_root, synthetic_root, tmp_path, "TRAINER.TIP_ADAPTER.AUGMENT_EPOCHS", "2")
    t.before_train()
    cache, text, scale = t.learner, t.text_features, float(t.backbone.logit_scale)
    support, labels = t.support_features()
    assert support.shape[:2] == (2, 8)  # 2 views of 2 shots x 4 classes; keys: their renormalised mean
    assert torch.allclose(cache.keys, F.normalize(support.mean(0), dim=-1))
    assert cache.values.tolist() == F.one_hot(torch.tensor([d.label for d in t.dm.dataset.train_x]), 4).tolist()
    cache.alpha.fill_(2.5)
    cache.beta.fill_(3.0)
    features = unit_rows(torch.Generator().manual_seed(1), 3, t.backbone.joint_dim)
    expected = torch.zeros(3, 4)
    for b in range(3):
        for c in range(4):
            expected[b, c] = scale * float(features[b] @ text[c]) + sum(
                2.5 * math.exp(-3.0 * (1 - float(features[b] @ key))) for key, y in zip(cache.keys, labels) if y == c)
    assert torch.allclose(t.classify_features(features), expected, rtol=1e-4, atol=1e-4)


def test_alpha_beta_search_keeps_the_first_best_grid_point():
    g = torch.Generator().manual_seed(2)
    features, keys = unit_rows(g, 12, 8), unit_rows(g, 6, 8)
    values = F.one_hot(torch.randint(0, 3, (6,), generator=g), 3).float()
    labels, zero_shot = torch.randint(0, 3, (12,), generator=g), torch.randn(12, 3, generator=g)
    betas, alphas = search_grid(5.0, 7), search_grid(4.0, 9)
    best = (None, None, -1.0)
    for beta in betas:
        for alpha in alphas:
            logits = zero_shot + tip_cache_logits(features, keys, values, alpha, beta)
            acc = 100.0 * (logits.argmax(-1) == labels).float().mean().item()
            if acc > best[2]:
                best = (beta, alpha, acc)
    assert search_alpha_beta(zero_shot, features, labels, keys, values, betas, alphas) == pytest.approx(best)
    confident = 1e6 * F.one_hot(labels, 3).float()  # every grid point ties at 100%: the first one wins
    assert search_alpha_beta(confident, features, labels, keys, values, betas, alphas) == (betas[0], alphas[0], 100.0)


def test_search_grid_is_tip_adapters():
    grid = search_grid(50.0, 200)
    assert len(grid) == 200 and grid[0] == pytest.approx(0.1) and grid[1] == pytest.approx(0.1 + 49.9 / 200)
    assert grid[-1] == pytest.approx(0.1 + 199 * 49.9 / 200)


def test_loading_adopts_the_checkpoint_shapes():
    trained = TipCache(["a", "b", "c"], torch.tensor([0, 1, 2, 2, 1, 0]), 4, 1.0, 1.0, trainable_keys=True)
    torch.nn.init.normal_(trained.keys)
    fresh = TipCache(["x", "y"], torch.tensor([0, 1]), 4, 1.0, 1.0, trainable_keys=True)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.keys.shape == (6, 4) and fresh.values.shape == (6, 3)
    assert torch.equal(fresh.keys, trained.keys) and isinstance(fresh.keys, torch.nn.Parameter)


def test_class_index_map():
    trained = class_digests(["glioma", "meningioma", "no tumor"])
    assert class_index_map(trained, ["no tumor", "glioma"]).tolist() == [2, 0]
    assert class_index_map(trained, ["glioma", "pituitary"]) is None


def test_per_class_methods_fall_back_to_zero_shot_on_unseen_classes(repo_root, synthetic_root, tmp_path):
    base, new, zero_shot = tmp_path / "base", tmp_path / "new", tmp_path / "zs"
    opts = ("DATASET.SUBSAMPLE_CLASSES",)
    assert main(cli_args(repo_root, synthetic_root, base, "TipAdapter", protocol="base_to_novel",
                         opts=(*opts, "base"))) == 0
    assert main(cli_args(repo_root, synthetic_root, new, "TipAdapter", "--eval-only", "--model-dir", str(base),
                         "--load-epoch", "1", protocol="base_to_novel", opts=(*opts, "new"))) == 0
    assert main(cli_args(repo_root, synthetic_root, zero_shot, "ZeroShot", protocol="base_to_novel",
                         opts=(*opts, "new"))) == 0
    results = [json.load(open(os.path.join(out, "results.json"))) for out in (new, zero_shot)]
    assert results[0]["per_class"] == results[1]["per_class"]


# ---------------------------------------------------------------- CLIP-Adapter


def test_clip_adapter_residual_formula(repo_root, synthetic_root, tmp_path):
    t = build("CLIPAdapter", repo_root, synthetic_root, tmp_path, "TRAINER.CLIP_ADAPTER.ALPHA", "0.3")
    adapter, d = t.learner.adapter, t.backbone.joint_dim
    assert {name for name, _ in t.learner.named_parameters()} == {"adapter.down.weight", "adapter.up.weight"}
    assert adapter.down.weight.shape == (d // 4, d)
    features = unit_rows(torch.Generator().manual_seed(3), 5, d)
    adapted = torch.relu(torch.relu(features @ adapter.down.weight.t()) @ adapter.up.weight.t())
    blended = 0.3 * adapted + 0.7 * features
    expected = t.backbone.logit_scale * (blended / blended.norm(dim=-1, keepdim=True)) @ t.text_features.t()
    t.before_test()
    assert torch.allclose(t.classify(features), expected, atol=1e-5)
    assert torch.allclose(residual_blend(features, adapted, 0.0), features, atol=1e-6)


# ---------------------------------------------------------------- linear probe


def test_logistic_regression_matches_the_closed_form_of_a_symmetric_problem():
    # x = +1 (class 0), -1 (class 1): W = [[w], [-w]], b = 0 with w = 2 C sigmoid(-2 w) (sklearn's scaling).
    c = 0.7
    low, high = 0.0, 2 * c
    for _ in range(60):
        middle = 0.5 * (low + high)
        below = middle < 2 * c / (1 + math.exp(2 * middle))  # 2 C sigmoid(-2 w)
        low, high = (middle, high) if below else (low, middle)
    weight, bias = fit_logistic_regression(torch.tensor([[1.0], [-1.0]]), torch.tensor([0, 1]), 2, c, tolerance=1e-10)
    assert torch.allclose(weight, torch.tensor([[low], [-low]]), atol=1e-5)
    assert torch.allclose(bias, torch.zeros(2), atol=1e-6)


def test_linear_probe_recovers_a_separable_problem():
    g = torch.Generator().manual_seed(4)
    centres = 3.0 * unit_rows(g, 3, 16)
    labels, held_out_labels = torch.arange(3).repeat_interleave(10), torch.arange(3).repeat_interleave(50)
    features = centres[labels] + 0.5 * torch.randn(30, 16, generator=g)
    held_out = centres[held_out_labels] + 0.5 * torch.randn(150, 16, generator=g)
    weight, bias = fit_logistic_regression(features, labels, 3, c=1.0)
    assert ((held_out @ weight.t() + bias).argmax(-1) == held_out_labels).all()
    w = weight.clone().double().requires_grad_()
    b = bias.clone().double().requires_grad_()
    logistic_objective(features.double(), labels, w, b, 1.0).backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4  # a stationary point of the objective
    strong, _ = fit_logistic_regression(features, labels, 3, c=1e-3)
    assert strong.norm() < weight.norm()


def test_c_search_refines_the_grid_peak_in_log_space():
    target = 0.37
    best, score, scores = search_log_scale(lambda c: (-abs(math.log10(c) - target),), [1e2, 1.0, 1e-2], 8)
    assert abs(math.log10(best) - target) <= 2.0 / 2 ** 8 and len(scores) <= 3 + 2 * 8
    tied = {1.0: (50.0, -0.9), 10.0: (50.0, -0.2), 0.1: (40.0, 0.0)}
    assert search_log_scale(lambda c: tied.get(c, (0.0, -9.0)), [10.0, 1.0, 0.1], 0)[0] == 10.0


# ---------------------------------------------------------------- LP++


def test_lp_plus_plus_initialisation_formulas():
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])  # unequal classes
    features, text = unit_rows(g, 9, 6), unit_rows(g, 3, 6)
    sums = torch.stack([features[labels == c].sum(0) for c in range(3)])
    assert torch.allclose(class_sums(features, labels, 3), sums, atol=1e-6)
    class_mean_cosines = [[float((features[labels == c] @ text[k]).mean()) for k in range(3)] for c in range(3)]
    assert initial_alpha(features, labels, text) == pytest.approx(250.0 * np.mean(class_mean_cosines), rel=1e-5)
    gram = features.double().numpy().T @ features.double().numpy()
    assert visual_lr(features) == pytest.approx(4 * 9 / np.linalg.eigvalsh(gram).max(), rel=1e-6)
    squares = [sum(float(features[n] @ text[k]) ** 2 for n in range(9)) for k in range(3)]
    assert alpha_lr(features, text) == pytest.approx(9 / (4 * max(squares)), rel=1e-5)


def test_lp_plus_plus_alpha_gradient_is_the_autograd_gradient():
    g = torch.Generator().manual_seed(6)
    features, text, labels = unit_rows(g, 7, 5), unit_rows(g, 3, 5), torch.tensor([0, 1, 2, 0, 1, 2, 2])
    weight, bias = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    alpha = torch.randn(3, generator=g, requires_grad=True)
    logits = lp_plus_plus_logits(features, weight, bias, alpha, text)
    F.cross_entropy(logits, labels).backward()
    assert torch.allclose(alpha_gradient(logits.detach(), labels, features @ text.t()), alpha.grad, atol=1e-6)


def test_lp_plus_plus_trainer_initialises_and_steps_as_specified(repo_root, synthetic_root, tmp_path):
    t = build("LPPlusPlus", repo_root, synthetic_root, tmp_path, "TRAINER.LP_PLUS_PLUS.ALPHA_UPDATE_EVERY", "1")
    t.before_train()
    features, labels, text, probe = t.train_features, t.train_labels, t.text_features, t.learner
    assert torch.allclose(probe.weight, class_sums(features, labels, 4)) and not probe.bias.any()
    alpha0 = initial_alpha(features, labels, text)
    assert torch.allclose(probe.alpha, torch.full((4,), alpha0))
    assert t.get_current_lr() == pytest.approx(visual_lr(features))
    logits0 = lp_plus_plus_logits(features, probe.weight, probe.bias, probe.alpha, text)
    expected_alpha = probe.alpha - alpha_lr(features, text) * alpha_gradient(logits0, labels, features @ text.t())
    t.epoch = 0
    t.run_epoch()
    assert torch.allclose(probe.alpha, expected_alpha, atol=1e-6)
    assert t.get_current_lr() == pytest.approx(visual_lr(features)), "the constant schedule keeps the data's lr"


# ---------------------------------------------------------------- support features


def test_support_features_are_seeded_cached_and_leave_the_rng_alone(repo_root, synthetic_root, tmp_path):
    t = build("LPPlusPlus", repo_root, synthetic_root, tmp_path)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    views, labels = t.support_features()
    assert torch.equal(torch.get_rng_state(), state)
    entries = glob.glob(str(tmp_path / "out-cache" / "support-*.pt"))
    assert len(entries) == 1
    key = torch.load(entries[0], weights_only=True)["key"]
    assert key["seed"] == 1 and key["num_shots"] == 2 and key["fingerprint"] == t.backbone.fingerprint()
    fresh = build("LPPlusPlus", repo_root, synthetic_root, tmp_path / "b", "CACHE.ENABLED", "False")
    torch.manual_seed(999)
    assert torch.allclose(fresh.support_features()[0], views, atol=1e-6), "augmentation is seeded by SEED"
    plain = build("LPPlusPlus", repo_root, synthetic_root, tmp_path, "TRAINER.LP_PLUS_PLUS.AUGMENT_EPOCHS", "0")
    assert not torch.allclose(plain.support_features()[0], views)
    two = build("LPPlusPlus", repo_root, synthetic_root, tmp_path, "TRAINER.LP_PLUS_PLUS.AUGMENT_EPOCHS", "2")
    assert two.support_features()[0].shape == (2, *views.shape[1:])
    assert len(glob.glob(str(tmp_path / "out-cache" / "support-*.pt"))) == 3, "one entry per transform and views"
