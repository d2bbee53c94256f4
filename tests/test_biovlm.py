"""BioVLM: each loss pinned to its formula, entropy routing against a direct loop, augmentation, wiring."""
import math

import pytest
import torch
from torch.nn import functional as F
from vmfcoop.engine.build import build_trainer
from vmfcoop.engine.cli import build_parser, setup_cfg
from vmfcoop.engine.errors import ConfigError
from vmfcoop.engine.utils import set_random_seed
from vmfcoop.trainers.biovlm import augmented_views, bank_logits
from vmfcoop.trainers.losses import (
    attribute_alignment_loss,
    kept_count,
    marginal_entropy,
    select_confident,
    softmax_entropy,
)

# ---------------------------------------------------------------- pure functions


def entropy_of(probabilities):
    return -sum(p * math.log(p) for p in probabilities if p > 0)


def softmax_list(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("total, ratio, expected", [(10, 0.5, 5), (20, 0.5, 10), (10, 0.3, 3), (3, 0.1, 1),
                                                    (10, 1.0, 10), (7, 0.5, 3)])
def test_kept_count_is_floor_of_ratio_at_least_one(total, ratio, expected):
    assert kept_count(total, ratio) == expected


def test_softmax_entropy_formula():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert softmax_entropy(logits).tolist() == pytest.approx([math.log(2), entropy_of([0.75, 0.25])])


def test_select_confident_matches_a_direct_loop():
    torch.manual_seed(0)
    logits = torch.randn(5, 8, 4) * torch.linspace(0.5, 4.0, 8)[None, :, None]  # distinct entropies
    keep = 3
    selected = select_confident(logits, keep)
    for b in range(5):
        entropies = [entropy_of(softmax_list(logits[b, k].tolist())) for k in range(8)]
        chosen = sorted(range(8), key=lambda k: entropies[k])[:keep]
        expected = torch.stack([logits[b, k] for k in chosen])
        assert torch.allclose(selected[b], expected), "the lowest-entropy candidates, in entropy order"


def test_select_confident_passes_gradients_to_selected_candidates_only():
    logits = torch.tensor([[[5.0, 0.0], [0.1, 0.0], [3.0, 0.0]]], requires_grad=True)
    select_confident(logits, 2).sum().backward()
    assert logits.grad[0, :, 0].tolist() == [1.0, 0.0, 1.0]  # candidate 1 (near-uniform) is dropped


def test_marginal_entropy_is_entropy_of_the_mean_probability():
    selected = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # image 0: mean of (0.75, 0.25) and (0.5, 0.5) = (0.625, 0.375); image 1: (0.5, 0.5)
    expected = (entropy_of([0.625, 0.375]) + math.log(2)) / 2
    assert marginal_entropy(selected).item() == pytest.approx(expected, rel=1e-6)


def test_marginal_entropy_is_differentiable():
    selected = torch.tensor([[[1.0, 0.0], [0.5, 0.2]]], requires_grad=True)
    marginal_entropy(selected).backward()
    assert selected.grad.abs().sum() > 0


def test_attribute_alignment_takes_the_cosine_on_the_feature_axis():
    bank = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],  # entry 0: class 0, class 1
                         [[0.0, 1.0], [0.0, -1.0]]])  # entry 1
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # cosines: entry 0 -> 1, 1; entry 1 -> 0, -1; mean 0.25
    assert attribute_alignment_loss(bank, means).item() == pytest.approx(0.75)


def test_attribute_alignment_does_not_need_bank_size_equal_to_descriptor_count():
    bank = F.normalize(torch.randn(3, 4, 6), dim=-1)
    means = F.normalize(torch.randn(4, 6), dim=-1)
    expected = 1 - sum(float(bank[m, c] @ means[c]) for m in range(3) for c in range(4)) / 12
    assert attribute_alignment_loss(bank, means).item() == pytest.approx(expected, rel=1e-5)


def test_bank_logits_formula():
    feats = F.normalize(torch.randn(2, 5), dim=-1)
    text = F.normalize(torch.randn(3, 4, 5), dim=-1)
    logits = bank_logits(feats, text, 7.0)
    assert logits.shape == (2, 3, 4)
    assert logits[1, 2, 3].item() == pytest.approx(7.0 * float(feats[1] @ text[2, 3]), rel=1e-5)


# ---------------------------------------------------------------- augmentation in pixel space

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def normalise(pixels):
    return (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def test_identity_view_round_trips_the_normalisation():
    pixels = torch.rand(2, 3, 4, 4)
    assert torch.allclose(augmented_views(normalise(pixels), lambda x: x, MEAN, STD), normalise(pixels), atol=1e-6)


def test_views_are_augmented_before_normalisation():
    pixels = torch.rand(2, 3, 4, 4)
    darker = augmented_views(normalise(pixels), lambda x: x * 0.5, MEAN, STD)
    assert torch.allclose(darker, normalise(pixels * 0.5), atol=1e-6), "the transform saw [0, 1] pixels"
    flipped = augmented_views(normalise(pixels), lambda x: x.flip(-1), MEAN, STD)
    assert torch.allclose(flipped, normalise(pixels).flip(-1), atol=1e-6)
    clipped = augmented_views(normalise(pixels), lambda x: x + 2.0, MEAN, STD)
    assert torch.allclose(clipped, normalise(torch.ones_like(pixels)), atol=1e-6), "views stay in [0, 1]"


def test_views_are_drawn_per_image():
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 4, 4).expand(16, -1, -1, -1)
    views = augmented_views(normalise(pixels), lambda x: x.flip(-1) if torch.rand(()) < 0.5 else x, MEAN, STD)
    flipped = [torch.allclose(v, normalise(pixels[0]).flip(-1)) for v in views]
    assert any(flipped) and not all(flipped)


# ---------------------------------------------------------------- trainer wiring


def build(root, tmp_path, *opts):
    args = ["--root", root, "--output-dir", str(tmp_path / "o"), "--seed", "1", "--trainer", "BioVLM",
            "--backbone", "tiny-bert", "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "2",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
            "TRAINER.BIOVLM.BANK_SIZE", "4", *opts]
    set_random_seed(1)
    return build_trainer(setup_cfg(build_parser().parse_args(args)))


def step(trainer):
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 2
    return trainer.forward_backward(next(iter(trainer.train_loader_x)))


NO_EXTRA_TERMS = ("TRAINER.BIOVLM.LAMBDA_KD", "0.0", "TRAINER.BIOVLM.LAMBDA_KD_AUG", "0.0",
                  "TRAINER.BIOVLM.LAMBDA_ENT", "0.0", "TRAINER.BIOVLM.LAMBDA_ALIGN", "0.0")


def test_bank_contexts_are_distinct_and_only_they_are_checkpointed(synthetic_root, tmp_path):
    t = build(synthetic_root, tmp_path, "TRAINER.BIOVLM.CTX_INIT", "a photo of a")
    contexts = [entry.ctx for entry in t.learner.prompt_bank.entries]
    assert len(contexts) == 4 and not torch.equal(contexts[0], contexts[1])
    assert sorted(t.learner.state_dict()) == [f"prompt_bank.entries.{m}.ctx" for m in range(4)]
    assert t.bank_text_features().shape == (4, len(t.classnames), t.backbone.joint_dim)


def test_test_time_routing_matches_a_direct_loop(synthetic_root, tmp_path):
    t = build(synthetic_root, tmp_path)
    feats = t.image_features(next(iter(t.test_loader))["img"][:6])
    t.set_model_mode("eval")
    t.before_test()
    logits = t.classify(feats)
    text = t._eval_text
    t.after_test()
    for b in range(6):
        per_entry = [t.backbone.logit_scale * (feats[b] @ text[m].t()) for m in range(4)]
        entropies = [entropy_of(softmax_list(z.tolist())) for z in per_entry]
        chosen = sorted(range(4), key=lambda m: entropies[m])[:2]
        assert torch.allclose(logits[b], sum(per_entry[m] for m in chosen) / 2, atol=1e-4)


def test_teacher_routes_over_descriptor_classifiers_of_both_views(synthetic_root, tmp_path):
    t = build(synthetic_root, tmp_path, "TRAINER.BIOVLM.N_ATTRIBUTES", "3")
    assert t._attributes is None, "the teacher texts are encoded only when training needs them"
    feats = t.image_features(next(iter(t.test_loader))["img"][:2])
    strong, weak = feats, feats.flip(0)
    teacher = t.teacher_logits(strong, weak)
    attributes = t.attributes  # [C, 3, d]
    for b in range(2):
        candidates = [t.backbone.logit_scale * (view[b] @ attributes[:, j].t()) for view in (strong, weak)
                      for j in range(3)]
        entropies = [entropy_of(softmax_list(z.tolist())) for z in candidates]
        chosen = sorted(range(6), key=lambda k: entropies[k])[:3]
        assert torch.allclose(teacher[b], sum(candidates[k] for k in chosen) / 3, atol=1e-4)


def test_training_routes_ce_gradients_to_the_selected_entries_only(synthetic_root, tmp_path):
    t = build(synthetic_root, tmp_path, "TRAINER.BIOVLM.BANK_SIZE", "8", "TRAINER.BIOVLM.TOP_RATIO", "0.125",
              "DATALOADER.TRAIN_X.BATCH_SIZE", "2", *NO_EXTRA_TERMS)
    batch = next(iter(t.train_loader_x))
    with torch.no_grad():
        feats = t.image_features(batch["img"])
        entropies = softmax_entropy(bank_logits(feats, t.bank_text_features(), t.backbone.logit_scale))
    chosen = set(entropies.argmin(1).tolist())
    t.set_model_mode("train")
    t.epoch, t.batch_idx, t.num_batches = 0, 0, 2
    t.forward_backward(batch)
    with_grad = {m for m, entry in enumerate(t.learner.prompt_bank.entries) if entry.ctx.grad.abs().sum() > 0}
    assert with_grad == chosen


def test_every_term_is_logged_and_zero_weights_skip_their_work(synthetic_root, tmp_path, monkeypatch):
    t = build(synthetic_root, tmp_path)
    summary = step(t)
    assert {"ce", "kd", "kd_aug", "ent", "align"} <= set(summary)
    weights = {"kd": 1.0, "kd_aug": 1.0, "ent": 0.5, "align": 0.5}
    assert summary["loss"] == pytest.approx(summary["ce"] + sum(w * summary[k] for k, w in weights.items()), rel=1e-5)

    t = build(synthetic_root, tmp_path, *NO_EXTRA_TERMS)
    monkeypatch.setattr(type(t), "augmented_image_features", lambda *a: pytest.fail("views built for a zero weight"))
    monkeypatch.setattr(type(t), "llm_prompt_features", lambda *a: pytest.fail("teacher texts encoded, zero weights"))
    summary = step(t)
    assert set(summary) == {"loss", "acc", "ce"} and summary["loss"] == pytest.approx(summary["ce"])


@pytest.mark.parametrize("opts, message", [
    (("TRAINER.BIOVLM.TOP_RATIO", "0.0"), "TOP_RATIO"),
    (("TRAINER.BIOVLM.BANK_SIZE", "0"), "BANK_SIZE"),
    (("TRAINER.BIOVLM.LAMBDA_ENT", "-1.0"), "LAMBDA_ENT"),
])
def test_bad_settings_name_the_key(opts, message, synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build(synthetic_root, tmp_path, *opts)


def test_too_many_attributes_for_the_prompt_bank(synthetic_root, tmp_path):
    t = build(synthetic_root, tmp_path, "TRAINER.BIOVLM.N_ATTRIBUTES", "12", "DATASET.PROMPTS.N_PROMPTS", "10")
    with pytest.raises(ConfigError, match="N_ATTRIBUTES"):
        step(t)
