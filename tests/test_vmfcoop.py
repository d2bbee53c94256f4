"""vMFCoOp trainer: anchor fields, loss wiring, ablation equivalences, gradients, CLI end to end."""
import glob
import json
import os

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from vmfcoop.clip_backbones import build_backbone
from vmfcoop.engine.build import build_trainer
from vmfcoop.engine.cli import build_parser, main, setup_cfg
from vmfcoop.engine.utils import set_random_seed
from vmfcoop.trainers.anchors import (
    filter_vocabulary,
    llm_fields_from_features,
    mean_vocabulary_feature,
    template_frame,
)
from vmfcoop.trainers.losses import symmetric_cross_entropy
from vmfcoop.trainers.text_features import encode_sentences
from vmfcoop.trainers.vmf import fit_vmf, mean_natural_parameter
from vmfcoop.trainers.vmfcoop import AnchorOffsets


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    """One feature cache for the session: each vocabulary field is encoded once."""
    return str(tmp_path_factory.mktemp("features"))


def cli_args(root, out, cache, *extra, backbone="tiny-bert", trainer="VMFCoOp", flags=()):
    return ["--root", root, "--output-dir", out, "--seed", "1", "--trainer", trainer, "--backbone", backbone, *flags,
            "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "2",
            "DATALOADER.NUM_WORKERS", "0", "CACHE.DIR", cache, *extra]


def build(root, out, cache, *extra, trainer="VMFCoOp", backbone="tiny-bert"):
    cfg = setup_cfg(build_parser().parse_args(cli_args(root, out, cache, *extra, trainer=trainer, backbone=backbone)))
    set_random_seed(1)
    return build_trainer(cfg)


def train_step(trainer, batch, epoch=0, batch_idx=0, num_batches=3):
    """One forward_backward outside the epoch loop (not the last batch: the scheduler stays put)."""
    trainer.epoch, trainer.batch_idx, trainer.num_batches = epoch, batch_idx, num_batches
    trainer.set_model_mode("train")
    return trainer.forward_backward(batch)


@pytest.fixture(scope="module")
def batch(synthetic_root, feature_cache, tmp_path_factory):
    trainer = build(synthetic_root, str(tmp_path_factory.mktemp("batch")), feature_cache,
                    "TRAINER.VMFCOOP.USE_ANC", "False", "TRAINER.VMFCOOP.USE_SC", "False")
    set_random_seed(3)
    return next(iter(trainer.train_loader_x))


# ---------------------------------------------------------------- vocabulary and fields


def test_vocabulary_filters():
    ids = list(range(7))
    tokens = ["[unused3]", "tumor", "##oma", "3", "[", "lesion", "<|startoftext|>"]
    assert filter_vocabulary(ids, tokens, "no_special") == ([1, 2, 3, 4, 5], ["tumor", "##oma", "3", "[", "lesion"])
    assert filter_vocabulary(ids, tokens, "words") == ([1, 5], ["tumor", "lesion"])
    bpe = ["tumor</w>", "tum", "3</w>", "ðŁĴĳ</w>", "mri</w>"]
    assert filter_vocabulary(list(range(5)), bpe, "words")[1] == ["tumor</w>", "mri</w>"]
    with pytest.raises(ValueError, match="VOCAB_FILTER"):
        filter_vocabulary(ids, tokens, "all")


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-clip"])
def test_template_frame_reproduces_the_tokenizer(name):
    backbone = build_backbone(name)
    word_ids, word_mask = backbone.tokenize(["cancer"])
    assert int(word_mask.sum()) == backbone.start_token_count + 2  # one token between start and end
    word = int(word_ids[0, backbone.start_token_count])
    for template, sentence in [("{}", "cancer"), ("a photo of {}.", "a photo of cancer.")]:
        head, tail = template_frame(backbone, template)
        ids, mask = backbone.tokenize([sentence])
        assert head + [word] + tail == ids[0, :int(mask[0].sum())].tolist()
    with pytest.raises(ValueError, match="VOCAB_TEMPLATE"):
        template_frame(backbone, "no placeholder")


def test_vocabulary_mean_matches_encoding_the_words_as_sentences():
    backbone = build_backbone("tiny-clip")
    ids, tokens = filter_vocabulary(*backbone.vocabulary(), "words")
    # lower-case words only: the CLIP tokenizer lower-cases text, so "A</w>" is never produced from text
    pairs = [(i, t[:-len("</w>")]) for i, t in zip(ids, tokens) if t.islower()][:300:7]
    ids, words = [i for i, _ in pairs], [w for _, w in pairs]
    head, tail = template_frame(backbone, "a photo of {}.")
    mean = mean_vocabulary_feature(backbone, ids, head, tail, batch_size=16, progress=False)
    direct = encode_sentences(backbone, [f"a photo of {w}." for w in words]).double().mean(0)
    torch.testing.assert_close(mean, direct, rtol=1e-5, atol=1e-6)


def test_llm_fields_pooled_and_source_averaged():
    torch.manual_seed(0)
    gpt = F.normalize(torch.randn(3, 5, 8, dtype=torch.float64) + 2.0, dim=-1)
    other = F.normalize(torch.randn(3, 4, 8, dtype=torch.float64) + 1.0, dim=-1)
    single = llm_fields_from_features({"gpt": gpt}, pool_sources=False)
    one_source_pooled = llm_fields_from_features({"gpt": gpt}, pool_sources=True)
    assert [f.kappa for f in single] == pytest.approx([f.kappa for f in one_source_pooled], rel=1e-12)
    pooled = llm_fields_from_features({"gpt": gpt, "other": other}, pool_sources=True)
    averaged = llm_fields_from_features({"gpt": gpt, "other": other}, pool_sources=False)
    for c in range(3):
        samples = np.concatenate([gpt[c].numpy(), other[c].numpy()])
        xbar = samples.mean(0)
        r = np.linalg.norm(xbar)
        np.testing.assert_allclose(pooled[c].mu.numpy(), xbar / r, rtol=1e-10)
        assert pooled[c].kappa == pytest.approx(r * (8 - r * r) / (1 - r * r + 1e-6))
        expected = mean_natural_parameter([fit_vmf(gpt[c]), fit_vmf(other[c])])
        torch.testing.assert_close(averaged[c].mu, expected.mu)
        assert averaged[c].kappa == pytest.approx(expected.kappa)


def test_anchor_offsets_restore_for_the_same_classes_and_are_skipped_for_others(capsys):
    trained = AnchorOffsets(["a", "b"], 4)
    with torch.no_grad():
        trained.delta.add_(1.0)
        trained.rho.add_(0.5)
    same = AnchorOffsets(["a", "b"], 4)
    assert same.load_state_dict(trained.state_dict(), strict=False) == ([], [])
    torch.testing.assert_close(same.delta, trained.delta)
    for new_classes in (["c", "d"], ["c", "d", "e"]):  # same and different count
        other = AnchorOffsets(new_classes, 4)
        missing, unexpected = other.load_state_dict(trained.state_dict(), strict=False)
        assert set(missing) == {"delta", "rho", "class_digest"} and not unexpected
        assert float(other.delta.detach().abs().sum()) == 0.0 and float(other.alpha.detach()) == pytest.approx(0.1)
    assert "belong to other classes" in capsys.readouterr().out


# ---------------------------------------------------------------- the trainer


def test_anchors_are_eq4_of_independently_fitted_fields(synthetic_root, feature_cache, tmp_path):
    from vmfcoop.datasets.prompt_bank import load_prompt_bank_from_cfg

    trainer = build(synthetic_root, str(tmp_path), feature_cache, backbone="tiny-clip")
    assert trainer.geometry is None  # fitted on first use
    anchors = trainer.anchors.cpu().numpy()
    bank = load_prompt_bank_from_cfg(trainer.cfg, trainer.classnames)["claude"]
    clip = trainer.geometry.clip_field
    d = trainer.backbone.joint_dim
    for c, name in enumerate(trainer.classnames):
        feats = encode_sentences(trainer.backbone, bank[name]).double().numpy()
        xbar = feats.mean(0)
        r = np.linalg.norm(xbar)
        kappa_l = r * (d - r * r) / (1 - r * r + 1e-6)
        anchor = clip.kappa * clip.mu.numpy() + kappa_l * xbar / r
        np.testing.assert_allclose(anchors[c], anchor / np.linalg.norm(anchor), atol=1e-5)
    assert 0.0 < clip.kappa < 1e5 and clip.count == len(trainer.backbone.vocabulary()[0])


def test_loss_terms_and_weights_in_a_training_step(synthetic_root, feature_cache, tmp_path, batch):
    trainer = build(synthetic_root, str(tmp_path), feature_cache, "TRAINER.VMFCOOP.LAMBDA_ANC", "3.0")
    with torch.no_grad():
        prompts = trainer.learned_text_features()
    anchors = trainer.anchors
    summary = train_step(trainer, batch)
    # first step: delta = 0, so the dynamic target is the static anchor, and tau = TAU_0
    assert summary["anc"] == pytest.approx(float((prompts - anchors).pow(2).sum(-1).mean()), rel=1e-5)
    expected_sc = F.cross_entropy(10.0 * prompts @ anchors.t(), torch.arange(len(anchors)))
    assert summary["tau"] == 10.0 and summary["sc"] == pytest.approx(float(expected_sc), rel=1e-5)
    assert summary["loss"] == pytest.approx(summary["sce"] + 3.0 * summary["anc"] + 0.5 * summary["sc"], rel=1e-5)


def test_tau_follows_the_schedule_over_training(synthetic_root, feature_cache, tmp_path):
    trainer = build(synthetic_root, str(tmp_path), feature_cache, "OPTIM.MAX_EPOCH", "3")
    trainer.num_batches = 4
    taus = []
    for trainer.epoch in range(3):
        for trainer.batch_idx in range(4):
            taus.append(trainer.current_tau())
    assert taus[0] == pytest.approx(10.0)
    assert taus[-1] == pytest.approx(float(trainer.backbone.logit_scale))  # TAU_MAX 0: the logit scale
    assert all(b > a for a, b in zip(taus, taus[1:]))


@pytest.mark.parametrize("opts, intended", [
    ((), {"prompt_learner.ctx", "anchor_offsets.delta", "anchor_offsets.rho"}),
    (("TRAINER.VMFCOOP.STATIC_ANCHOR", "True"), {"prompt_learner.ctx"}),
    (("TRAINER.VMFCOOP.USE_ANC", "False"), {"prompt_learner.ctx"}),
])
def test_only_intended_parameters_learn(opts, intended, synthetic_root, feature_cache, tmp_path, batch):
    trainer = build(synthetic_root, str(tmp_path), feature_cache, *opts)
    names = {id(p): n for n, p in trainer.learner.named_parameters()}
    assert {names[id(p)] for group in trainer.optim.param_groups for p in group["params"]} == intended
    for step in range(2):
        train_step(trainer, batch, batch_idx=step)
    with_grad = {n for n, p in trainer.learner.named_parameters() if p.grad is not None}
    assert with_grad == intended
    if "anchor_offsets.delta" in intended:
        assert float(trainer.learner.anchor_offsets.delta.detach().abs().sum()) > 0  # moved after the second step
    assert all(not p.requires_grad and p.grad is None for p in trainer.backbone.parameters())


@pytest.mark.parametrize("use_sce", [True, False])
def test_without_anchor_terms_a_step_equals_coop(use_sce, synthetic_root, feature_cache, tmp_path, batch):
    off = ("TRAINER.VMFCOOP.USE_ANC", "False", "TRAINER.VMFCOOP.USE_SC", "False",
           "TRAINER.VMFCOOP.USE_SCE", str(use_sce))
    vmf = build(synthetic_root, str(tmp_path / "vmf"), feature_cache, *off)
    coop = build(synthetic_root, str(tmp_path / "coop"), feature_cache, trainer="CoOp")
    ctx_vmf, ctx_coop = vmf.learner.prompt_learner.ctx, coop.learner.prompt_learner.ctx
    assert torch.equal(ctx_vmf, ctx_coop)
    vmf_summary = train_step(vmf, batch)
    if use_sce:  # CoOp's step with its loss swapped for SCE
        coop.epoch, coop.batch_idx, coop.num_batches = 0, 0, 3
        images, labels = coop.parse_batch_train(batch)
        logits = coop.logits(coop.image_features(images), coop.learned_text_features())
        coop_summary = coop.update(symmetric_cross_entropy(logits, labels, 1e-4), logits, labels)
    else:
        coop_summary = train_step(coop, batch)
    assert vmf.geometry is None  # no anchors are built when neither anchor term is on
    assert torch.equal(ctx_vmf.grad, ctx_coop.grad)
    assert torch.equal(ctx_vmf, ctx_coop)
    assert vmf_summary["loss"] == coop_summary["loss"]


@pytest.mark.parametrize("key, value, message", [
    ("TRAINER.VMFCOOP.VOCAB_FILTER", "all", "VOCAB_FILTER must be one of"),
    ("TRAINER.VMFCOOP.SCE_EPS", "0.0", "SCE_EPS must be > 0"),
    ("TRAINER.VMFCOOP.KAPPA_ESTIMATOR", "moments", "KAPPA_ESTIMATOR must be one of"),
])
def test_bad_settings_fail_with_one_line(key, value, message, synthetic_root, feature_cache, tmp_path, capsys):
    assert main(cli_args(synthetic_root, str(tmp_path), feature_cache, key, value)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "trainers",
                                                               "VMFCoOp", "*", "*.yaml"))))
def test_shipped_configs_merge(path):
    cfg = setup_cfg(build_parser().parse_args(["--config-file", path, "--trainer", "VMFCoOp"]))
    assert cfg.OPTIM.LR == 0.003 and cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 4 and cfg.OPTIM.NAME == "sgd"
    assert cfg.OPTIM.MAX_EPOCH == (50 if "base_to_novel" in path else 100)


def test_config_folders_cover_the_datasets():
    root = os.path.join(os.path.dirname(__file__), "..", "configs", "trainers", "VMFCoOp")
    datasets = {os.path.basename(p) for p in glob.glob(os.path.join(root, "..", "..", "datasets", "*.yaml"))}
    datasets -= {"syntheticmed.yaml", "imagefolder.yaml"}
    assert set(os.listdir(os.path.join(root, "few_shot"))) == datasets | {"default.yaml"}
    assert set(os.listdir(os.path.join(root, "base_to_novel"))) == datasets - {"busi.yaml"} | {"default.yaml"}


# ---------------------------------------------------------------- end to end


def read_results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def test_cli_base_training_then_eval_only_on_new_classes(synthetic_root, feature_cache, tmp_path, capsys):
    base_out, new_out = str(tmp_path / "base"), str(tmp_path / "new")
    assert main(cli_args(synthetic_root, base_out, feature_cache, "DATASET.SUBSAMPLE_CLASSES", "base")) == 0
    results = read_results(base_out)
    assert results["trainer"] == "VMFCoOp" and results["subsample_classes"] == "base" and results["epoch"] == 2
    with open(os.path.join(base_out, "log.txt")) as f:
        log = f.read()
    for epoch in (1, 2):
        assert f"vmf epoch [{epoch}/2] kappa_C" in log
    assert "angle(u,mu_L)" in log and "drift |alpha delta| mean" in log
    assert "kappa_L benign lesion" in log and "normal tissue" not in log.split("vMF LLM fields")[1].split("\n")[0]
    capsys.readouterr()

    flags = ("--eval-only", "--model-dir", base_out, "--load-epoch", "2")
    assert main(cli_args(synthetic_root, new_out, feature_cache, "DATASET.SUBSAMPLE_CLASSES", "new", flags=flags)) == 0
    results = read_results(new_out)
    assert results["subsample_classes"] == "new" and results["eval_only"] is True
    assert set(results["per_class"]) == {"normal tissue", "inflammatory cyst"}
    out = capsys.readouterr().out
    assert "anchor offsets belong to other classes" in out
    assert "vMF CLIP field" not in out  # evaluation builds no anchors


def test_cli_trains_with_the_clip_family_backbone(synthetic_root, feature_cache, tmp_path):
    out = str(tmp_path / "clip")
    assert main(cli_args(synthetic_root, out, feature_cache, "OPTIM.MAX_EPOCH", "1", backbone="tiny-clip")) == 0
    assert read_results(out)["backbone"] == "tiny-clip"
    with open(os.path.join(out, "log.txt")) as f:
        assert "vmf epoch [1/1] kappa_C" in f.read()
