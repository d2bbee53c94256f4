"""Registry-wide trainer tests on tiny backbones of both text-tower families (timm style)."""
import json
import os

import pytest
import torch
from vmfcoop.clip_backbones import build_backbone
from vmfcoop.engine import TRAINER_REGISTRY, build_trainer
from vmfcoop.engine.cli import build_parser, main, setup_cfg
from vmfcoop.engine.utils import set_random_seed
from vmfcoop.trainers.base import ClipTrainer
from vmfcoop.trainers.prompt_learner import PromptLearner

BACKBONES = ["tiny-bert", "tiny-clip"]
CLIP_TRAINERS = sorted(
    name for name in TRAINER_REGISTRY.registered_names() if issubclass(TRAINER_REGISTRY.get(name), ClipTrainer)
)
TRAINING_FREE = {"ZeroShot", "ZeroShotEnsemble", "ZeroShotSelective"}


def config_file(repo_root, trainer, protocol="few_shot"):
    return os.path.join(repo_root, "configs", "trainers", trainer, protocol, "default.yaml")


def run_args(repo_root, root, out, trainer, backbone, *flags, protocol="few_shot", opts=()):
    return [
        "--root", root, "--output-dir", out, "--seed", "1", "--trainer", trainer,
        "--config-file", config_file(repo_root, trainer, protocol), "--backbone", backbone, *flags,
        "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "2", "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16", "TRAIN.PRINT_FREQ", "1",
        *(() if trainer in TRAINING_FREE else ("OPTIM.MAX_EPOCH", "1")), *opts,
    ]


def results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def test_every_method_is_registered():
    expected = {"ZeroShot", "ZeroShotEnsemble", "ZeroShotSelective", "CoOp", "CoCoOp", "KgCoOp", "ProGrad",
                "BiomedCoOp", "VMFCoOp"}
    assert expected <= set(TRAINER_REGISTRY.registered_names())


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("trainer", CLIP_TRAINERS)
def test_train_save_reload_same_accuracy(trainer, backbone, repo_root, synthetic_root, tmp_path, capsys):
    out = str(tmp_path / "train")
    assert main(run_args(repo_root, synthetic_root, out, trainer, backbone)) == 0, capsys.readouterr().err
    trained = results(out)
    assert trained["trainer"] == trainer and trained["backbone"] == backbone
    if trainer in TRAINING_FREE:
        assert not os.path.isdir(os.path.join(out, "prompt_learner"))
        load_epoch = "0"
    else:
        ckpt = torch.load(os.path.join(out, "prompt_learner", "model.pth.tar-1"), weights_only=True)
        assert ckpt["state_dict"], "a checkpoint holds the learned parameters"
        assert not any("token_embeds" in key or "backbone" in key for key in ckpt["state_dict"])
        load_epoch = "1"
    evaluated = str(tmp_path / "eval")
    assert main(run_args(repo_root, synthetic_root, evaluated, trainer, backbone,
                         "--eval-only", "--model-dir", out, "--load-epoch", load_epoch)) == 0
    assert results(evaluated)["metrics"]["accuracy"] == trained["metrics"]["accuracy"]


@pytest.mark.parametrize("trainer", CLIP_TRAINERS)
def test_base_to_new_evaluation(trainer, repo_root, synthetic_root, tmp_path, capsys):
    base = str(tmp_path / "base")
    assert main(run_args(repo_root, synthetic_root, base, trainer, "tiny-bert", protocol="base_to_novel",
                         opts=("DATASET.SUBSAMPLE_CLASSES", "base"))) == 0, capsys.readouterr().err
    new = str(tmp_path / "new")
    load_epoch = "0" if trainer in TRAINING_FREE else "1"
    assert main(run_args(repo_root, synthetic_root, new, trainer, "tiny-bert", "--eval-only", "--model-dir", base,
                         "--load-epoch", load_epoch, protocol="base_to_novel",
                         opts=("DATASET.SUBSAMPLE_CLASSES", "new"))) == 0, capsys.readouterr().err
    assert set(results(base)["per_class"]) == {"benign lesion", "malignant tumor"}
    assert set(results(new)["per_class"]) == {"normal tissue", "inflammatory cyst"}


def build(trainer, backbone, repo_root, root, tmp_path, opts=()):
    args = build_parser().parse_args(run_args(repo_root, root, str(tmp_path / "o"), trainer, backbone, opts=opts))
    return build_trainer(setup_cfg(args))


@pytest.mark.parametrize("trainer", sorted(
    name for name in set(CLIP_TRAINERS) - TRAINING_FREE if TRAINER_REGISTRY.get(name).PER_BATCH_STEP))
def test_only_intended_parameters_get_gradients(trainer, repo_root, synthetic_root, tmp_path, capsys):
    t = build(trainer, "tiny-clip", repo_root, synthetic_root, tmp_path)
    assert not any(p.requires_grad for p in t.backbone.parameters())
    t.set_model_mode("train")
    t.num_batches, t.batch_idx = 2, 0  # not the last batch: no scheduler step
    before = {name: p.detach().clone() for name, p in t.learner.named_parameters()}
    t.forward_backward(next(iter(t.train_loader_x)))
    assert all(p.grad is None for p in t.backbone.parameters())
    changed = {name for name, p in t.learner.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "one step updates the learned parameters"
    if "prompt_learner.ctx" in before:
        assert "prompt_learner.ctx" in changed
    assert all(p.requires_grad for p in t.learner.parameters())


def test_cocoop_conditions_context_on_each_image(repo_root, synthetic_root, tmp_path, capsys):
    set_random_seed(1)
    t = build("CoCoOp", "tiny-bert", repo_root, synthetic_root, tmp_path)
    with torch.no_grad():  # the tiny backbone's meta-net has 2 ReLU units, which can start dead
        t.learner.meta_net[0].weight.normal_(0.0, 1.0)
        t.learner.meta_net[0].bias.zero_()
    batch = next(iter(t.test_loader))
    images = torch.stack([batch["img"][batch["label"] == c][0] for c in range(3)])  # three classes
    feats = t.image_features(images)
    text = t.conditional_text_features(feats)
    assert text.shape == (3, len(t.classnames), t.backbone.joint_dim)
    assert not torch.equal(text[0], text[1]), "different images give different class prompts"
    embeds, mask = t.learner.prompt_learner(t.learner.meta_net(feats))
    assert embeds.shape[:2] == (3, len(t.classnames)) and mask.shape[0] == len(t.classnames)


# ------------------------------------------------------------ prompt learner


@pytest.mark.parametrize("backbone_name", BACKBONES)
def test_initial_prompt_equals_the_hand_written_sentence(backbone_name):
    bb = build_backbone(backbone_name)
    names = ["malignant tumor", "normal brain"]
    learner = PromptLearner(bb, names, n_ctx=4, ctx_init="a photo of a")
    embeds, mask = learner()
    ids, text_mask = bb.tokenize([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        assert torch.allclose(bb.encode_prompt(embeds, mask), bb.encode_text(ids, text_mask), atol=1e-5)


@pytest.mark.parametrize("backbone_name", BACKBONES)
@pytest.mark.parametrize("position", ["middle", "front"])
def test_class_token_position_with_multi_token_names(backbone_name, position):
    bb = build_backbone(backbone_name)
    names = ["lung squamous cell carcinoma", "drusen"]
    learner = PromptLearner(bb, names, n_ctx=4, ctx_init="", position=position)
    embeds, mask = learner()
    ctx = learner.context()
    name_embeds = bb.token_embedding(bb.tokenize(names)[0])
    s = bb.start_token_count
    for i, n in enumerate(learner.name_lens):
        assert n >= 1
        name_tokens = name_embeds[i, s:s + n]
        if position == "front":
            assert torch.allclose(embeds[i, s:s + n], name_tokens)
            assert torch.allclose(embeds[i, s + n:s + n + 4], ctx[i])
        else:
            assert torch.allclose(embeds[i, s:s + 2], ctx[i, :2])
            assert torch.allclose(embeds[i, s + 2:s + 2 + n], name_tokens)
            assert torch.allclose(embeds[i, s + 2 + n:s + 4 + n], ctx[i, 2:])
    assert learner.name_lens[0] > 1, "a multi-word name spans several tokens"


def test_class_specific_context_shape():
    bb = build_backbone("tiny-bert")
    learner = PromptLearner(bb, ["a", "b", "c"], n_ctx=2, ctx_init="", csc=True)
    assert learner.ctx.shape == (3, 2, bb.ctx_dim)


# ------------------------------------------------------------ learning


@pytest.mark.parametrize("trainer", sorted(set(CLIP_TRAINERS) - TRAINING_FREE))
def test_every_trainer_beats_chance(trainer, repo_root, synthetic_root, tmp_path, capsys):
    """A random tiny text tower barely separates class names, so prompt learners use class-specific
    context here (where the method allows it): the test is about the optimisation working."""
    out = str(tmp_path / "learn")
    cls = TRAINER_REGISTRY.get(trainer)
    opts = ("OPTIM.MAX_EPOCH", "8", "OPTIM.LR", "0.1", "DATASET.NUM_SHOTS", "8", "OPTIM.WARMUP_EPOCH", "0",
            "INPUT.TRANSFORMS", "('normalize',)")
    if "CSC" in cls.CFG_DEFAULTS and trainer != "CoCoOp":
        opts += (f"TRAINER.{cls.CFG_NODE}.CSC", "True")
    assert main(run_args(repo_root, synthetic_root, out, trainer, "tiny-clip", opts=opts)) == 0
    assert results(out)["metrics"]["accuracy"] > 25.0 + 15.0  # chance is 25% on 4 classes
