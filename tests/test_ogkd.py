"""OGKD: the class graph, GAD and LGD pinned to their formulas on hand-sized tensors, and the trainer's pieces."""
import glob
import math
import os

import pytest
import torch
from torch.nn import functional as F
from vmfcoop.engine import build_trainer
from vmfcoop.engine.cli import build_parser, setup_cfg
from vmfcoop.engine.errors import ConfigError
from vmfcoop.trainers.losses import (
    attentive_patch_indices,
    class_relation_graph,
    distillation_kl,
    geometry_aware_distillation,
    graph_smoothed_log_teacher,
    label_guided_distillation,
)

LN = math.log


def test_class_graph_is_a_row_softmax_of_scaled_prototype_cosines():
    prototypes = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # not normalised: the graph normalises
    graph = class_relation_graph(prototypes, alpha=2.0)
    c = 1 / math.sqrt(2)  # cos between the diagonal and an axis
    rows = [[1, 0, c], [0, 1, c], [c, c, 1]]
    expected = [[math.exp(2 * v) / sum(math.exp(2 * u) for u in row) for v in row] for row in rows]
    assert torch.allclose(graph, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(graph.sum(1), torch.ones(3))


def test_smoothed_teacher_mixes_log_probabilities_along_the_graph():
    teacher = torch.tensor([[0.0, LN(3.0)]])  # p = (1/4, 3/4)
    graph = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    smoothed = graph_smoothed_log_teacher(teacher, graph, gamma=0.5)
    l0, l1 = LN(0.25), LN(0.75)
    # l~_j = 0.5 l_j + 0.5 sum_k l_k W_kj
    expected = [0.5 * l0 + 0.5 * (l0 * 0.9 + l1 * 0.3), 0.5 * l1 + 0.5 * (l0 * 0.1 + l1 * 0.7)]
    assert torch.allclose(smoothed, torch.tensor([expected]), atol=1e-6)
    assert smoothed.exp().sum() < 0.99, "the released geometric mixture is not normalised"
    renormalized = graph_smoothed_log_teacher(teacher, graph, gamma=0.5, renormalize=True)
    assert torch.allclose(renormalized, torch.log_softmax(torch.tensor([expected]), -1), atol=1e-6)
    identity = graph_smoothed_log_teacher(teacher, torch.eye(2), gamma=0.7)
    assert torch.allclose(identity, F.log_softmax(teacher, -1)), "an identity graph smooths nothing"


def test_gad_formula_by_hand():
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)  # log p = ln 1/2 for both
    teacher = torch.tensor([[0.0, LN(3.0)]])
    graph = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    l0, l1 = LN(0.25), LN(0.75)
    s = [0.5 * l0 + 0.5 * (l0 * 0.9 + l1 * 0.3), 0.5 * l1 + 0.5 * (l0 * 0.1 + l1 * 0.7)]
    expected = sum(math.exp(v) * (v - LN(0.5)) for v in s) / 2  # / (B C)
    gad = geometry_aware_distillation(student, teacher, graph, gamma=0.5)
    assert gad.item() == pytest.approx(expected, abs=1e-6)
    gad.backward()
    assert student.grad.abs().sum() > 0


def test_gad_without_smoothing_is_biomedcoops_kd_and_renormalised_gad_is_a_kl():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    graph = class_relation_graph(torch.randn(4, 8, generator=generator), alpha=4.0)
    assert torch.allclose(geometry_aware_distillation(student, teacher, graph, gamma=0.0),
                          distillation_kl(student, teacher), atol=1e-6)
    target = graph_smoothed_log_teacher(teacher, graph, 0.6, renormalize=True)
    kl = F.kl_div(F.log_softmax(student, -1), target, log_target=True, reduction="sum") / 12
    assert torch.allclose(geometry_aware_distillation(student, teacher, graph, 0.6, renormalize=True), kl, atol=1e-6)
    assert kl > 0 and geometry_aware_distillation(target, teacher, graph, 0.6, renormalize=True).abs() < 1e-6, \
        "a proper KL: zero exactly when the student predicts the smoothed teacher"


def test_attentive_patches_are_the_largest_true_class_magnitudes():
    teacher = torch.tensor([[[5.0, 0.1], [0.0, -3.0], [9.0, 2.0], [0.0, 0.5]]])  # [B=1, N=4, C=2]
    labels = torch.tensor([1])
    assert sorted(attentive_patch_indices(teacher, labels, 0.5)[0].tolist()) == [1, 2]  # |-3| and |2|
    assert attentive_patch_indices(teacher, labels, 0.01)[0].tolist() == [1]  # at least one patch
    assert attentive_patch_indices(teacher, torch.tensor([0]), 0.25)[0].tolist() == [2]
    assert attentive_patch_indices(teacher, labels, 1.0).shape == (1, 4)


def test_lgd_uses_only_the_true_class_channel_by_hand():
    student = torch.tensor([[[0.0, LN(3.0)], [LN(3.0), 0.0]]])  # [B=1, K=2, C=2]
    teacher = torch.tensor([[[0.0, 0.0], [LN(3.0), 0.0]]])
    graph = torch.eye(2)  # no smoothing: l~ = log softmax(teacher)
    labels = torch.tensor([0])
    # patch 1: q_0 = 1/2, p_0 = 1/4; patch 2: q_0 = 3/4, p_0 = 3/4 -> only patch 1 contributes
    expected = (0.5 * (LN(0.5) - LN(0.25)) + 0.75 * (LN(0.75) - LN(0.75))) / 2
    lgd = label_guided_distillation(student, teacher, graph, labels, gamma=0.3)
    assert lgd.item() == pytest.approx(expected, abs=1e-6)
    other = label_guided_distillation(student, teacher, graph, torch.tensor([1]), gamma=0.3)
    assert other.item() == pytest.approx((0.5 * (LN(0.5) - LN(0.75)) + 0.25 * (LN(0.25) - LN(0.25))) / 2, abs=1e-6)


def build(repo_root, root, tmp_path, opts=()):
    args = build_parser().parse_args([
        "--root", root, "--output-dir", str(tmp_path / "o"), "--seed", "1", "--trainer", "OGKD",
        "--config-file", f"{repo_root}/configs/trainers/OGKD/few_shot/default.yaml", "--backbone", "tiny-bert",
        "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "2", "DATALOADER.NUM_WORKERS", "0", *opts])
    return build_trainer(setup_cfg(args))


def test_trainer_reads_pooled_and_patch_features_from_one_pass(repo_root, synthetic_root, tmp_path):
    t = build(repo_root, synthetic_root, tmp_path)
    images = next(iter(t.train_loader_x))["img"]
    feats, patches = t.image_and_patch_features(images)
    assert torch.allclose(feats, t.image_features(images), atol=1e-6)
    assert patches.shape == (images.shape[0], 49, t.backbone.joint_dim)
    assert torch.allclose(patches.norm(dim=-1), torch.ones(patches.shape[:2]), atol=1e-5)
    assert torch.allclose(t.class_graph, class_relation_graph(t.llm_mean, 4.0))
    assert t.class_graph.shape == (len(t.classnames),) * 2


def test_trainer_rejects_bad_ratios(repo_root, synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match="TOP_K_RATIO"):
        build(repo_root, synthetic_root, tmp_path, ("TRAINER.OGKD.TOP_K_RATIO", "0.0"))
    with pytest.raises(ConfigError, match="GAMMA"):
        build(repo_root, synthetic_root, tmp_path, ("TRAINER.OGKD.GAMMA", "1.5"))


CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "trainers", "OGKD", "*", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: "/".join(p.split(os.sep)[-2:]))
def test_shipped_configs_merge(path):
    cfg = setup_cfg(build_parser().parse_args(["--config-file", path, "--trainer", "OGKD"]))
    few_shot = "few_shot" in path
    assert cfg.OPTIM.MAX_EPOCH == (100 if few_shot else 50) and cfg.OPTIM.LR == 0.0025
    assert cfg.TRAINER.OGKD.GRAPH_ALPHA == (4.0 if few_shot else 1.0)


def test_released_per_dataset_values_are_kept():
    root = os.path.join(os.path.dirname(__file__), "..", "configs", "trainers", "OGKD")
    kvasir = setup_cfg(build_parser().parse_args(
        ["--config-file", os.path.join(root, "base_to_novel", "kvasir.yaml"), "--trainer", "OGKD"])).TRAINER.OGKD
    assert (kvasir.TAU, kvasir.SCCM_LAMBDA, kvasir.GAD_LAMBDA, kvasir.LGD_LAMBDA, kvasir.GAMMA, kvasir.TOP_K_RATIO) == \
        (1.25, 1.0, 3.5, 22.0, 0.3, 0.03)
    assert len(CONFIGS) == 11 + 1 + 10 + 1  # BUSI has no base-to-novel split
