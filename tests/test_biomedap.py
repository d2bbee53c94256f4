"""Biomed-DPT and BiomedAP: the dual-anchor constraint, the gated fusion and the prompted image forward."""
import glob
import os

import pytest
import torch
from torch.nn import functional as F
from vmfcoop.clip_backbones import build_backbone
from vmfcoop.clip_backbones.vision_tokens import encode_image_with_injection
from vmfcoop.engine import build_trainer
from vmfcoop.engine.cli import build_parser, setup_cfg
from vmfcoop.engine.errors import ConfigError
from vmfcoop.engine.utils import read_image
from vmfcoop.trainers.biomedap import (
    GatedCrossModalFusion,
    TemplatePromptLearner,
    class_prototypes,
    scaled_block_indices,
)
from vmfcoop.trainers.losses import (
    anchor_l1,
    context_alignment_loss,
    dual_anchor_loss,
    gated_residual,
)

# ------------------------------------------------------------ pure parts


def test_dual_anchor_loss_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    high = torch.tensor([[0.5, 0.5], [0.0, 1.0]])  # mean |T - A_high| = (0.5 + 0.5 + 0 + 0) / 4
    low = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # mean |T - A_low| = (0 + 0 + 1 + 1) / 4
    assert anchor_l1(text, high).item() == pytest.approx(0.25)
    assert dual_anchor_loss(text, high, low, 2.0, 3.0).item() == pytest.approx(2.0 * 0.25 + 3.0 * 0.5)
    assert dual_anchor_loss(text, high, None, 2.0, 0.0).item() == pytest.approx(0.5), "weight 0: no low anchors needed"
    assert dual_anchor_loss(text, high, low, 0.0, 1.0).item() == pytest.approx(0.5)


def test_gated_residual_zero_gate_is_identity():
    tokens, update = torch.tensor([[1.0, -2.0]]), torch.tensor([[10.0, 10.0]])
    assert torch.equal(gated_residual(tokens, update, torch.zeros(1, 2)), tokens)
    assert torch.equal(gated_residual(tokens, update, torch.ones(1, 2)), tokens + update)
    assert torch.equal(gated_residual(tokens, update, torch.tensor([[0.5, 0.0]])), torch.tensor([[6.0, -2.0]]))


def close_gates(fusion):
    with torch.no_grad():
        for gate in (fusion.visual_gate, fusion.text_gate):
            gate.weight.zero_()
            gate.bias.fill_(float("-inf"))  # sigmoid(-inf) = 0 exactly


@pytest.mark.parametrize("text_width", [8, 12])  # same width as the visual tokens, and projected
def test_fusion_with_closed_gates_is_the_identity_and_open_gates_mix(text_width):
    torch.manual_seed(0)
    fusion = GatedCrossModalFusion(8, text_width, heads=2, ffn_ratio=2, dropout=0.0).eval()
    visual, text = torch.randn(3, 4, 8), torch.randn(3, 5, text_width)
    out_visual, out_text = fusion(visual, text)
    assert out_visual.shape == visual.shape and out_text.shape == text.shape
    assert not torch.allclose(out_visual, visual) and not torch.allclose(out_text, text)
    other_visual, _ = fusion(visual, text * torch.randn(text_width))  # LayerNorm ignores shifts
    assert not torch.allclose(other_visual, out_visual), "the visual side depends on the text"
    close_gates(fusion)
    out_visual, out_text = fusion(visual, text)
    assert torch.equal(out_visual, visual) and torch.equal(out_text, text)


def test_fusion_size_follows_the_widths():
    tiny = GatedCrossModalFusion(64, 64)
    assert sum(p.numel() for p in tiny.parameters()) < 150_000
    assert not any(isinstance(m, torch.nn.Linear) for m in (tiny.text_in, tiny.text_out))


def test_context_alignment_loss_by_hand():
    context = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # token mean (1, 0)
    same = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])  # token mean (1, 0): cos 1
    orthogonal = torch.tensor([[[0.0, 3.0], [0.0, 1.0]]])  # token mean (0, 2): cos 0
    assert context_alignment_loss([same], context).item() == pytest.approx(0.0, abs=1e-7)
    assert context_alignment_loss([orthogonal], context).item() == pytest.approx(1.0)
    assert context_alignment_loss([same, orthogonal], context).item() == pytest.approx(0.5)


def test_class_prototypes_and_block_scaling():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    protos = class_prototypes(feats, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(protos, torch.tensor([[2 ** -0.5, 2 ** -0.5], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"class indices \[2\]"):
        class_prototypes(feats, torch.tensor([0, 0, 1]), 3)
    assert scaled_block_indices([5, 8], 12) == [5, 8]
    assert scaled_block_indices([5, 8], 2) == [0, 1]
    assert scaled_block_indices([5, 8], 6) == [2, 4]


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-clip"])
def test_template_prompt_starts_as_the_template_sentence(name):
    bb = build_backbone(name)
    names = ["malignant tumor", "normal tissue"]
    template = "a photo of a {} in the breast."
    learner = TemplatePromptLearner(bb, names, template, n_ctx=4)
    embeds, mask = learner()
    ids, text_mask = bb.tokenize([template.format(n) for n in names])
    with torch.no_grad():
        assert torch.allclose(bb.encode_prompt(embeds, mask), bb.encode_text(ids, text_mask), atol=1e-5)
    assert learner.ctx.shape == (4, bb.ctx_dim)
    with pytest.raises(ConfigError, match="N_CTX=5.*has 4"):
        TemplatePromptLearner(bb, names, template, n_ctx=5)


# ------------------------------------------------------------ trainers


def build(trainer, repo_root, root, tmp_path, opts=(), backbone="tiny-bert"):
    args = build_parser().parse_args([
        "--root", root, "--output-dir", str(tmp_path / "o"), "--seed", "1", "--trainer", trainer,
        "--config-file", f"{repo_root}/configs/trainers/{trainer}/few_shot/default.yaml", "--backbone", backbone,
        "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "2", "DATALOADER.NUM_WORKERS", "0", *opts])
    return build_trainer(setup_cfg(args))


def spied(hooks, record):
    """The same hooks, recording each hook's output (the input of its block)."""
    return {block: (lambda tokens, h=hook, b=block: record.setdefault(b, h(tokens))) for block, hook in hooks.items()}


@pytest.mark.parametrize("mode, length", [("insert", 1 + 49 + 4), ("overwrite", 1 + 49)])
def test_deep_zero_prompts_enter_every_block(mode, length, repo_root, synthetic_root, tmp_path):
    t = build("BiomedDPT", repo_root, synthetic_root, tmp_path, ("TRAINER.BIOMEDDPT.VISUAL_PROMPT_MODE", mode))
    images = next(iter(t.test_loader))["img"][:2]
    record = {}
    with torch.no_grad():
        feats = encode_image_with_injection(t.backbone, images, spied(t.prompt_hooks(), record))
        plain = t.backbone.encode_image(images)
    assert sorted(record) == [0, 1]
    for tokens in record.values():
        assert tokens.shape[1] == length and not tokens[:, 1:5].any()
    assert torch.allclose(t.image_features(images), F.normalize(feats, dim=-1), atol=1e-6)
    assert not torch.allclose(feats, plain), "the zero prompts change the image features"


def test_biomedap_fusion_makes_features_depend_on_context_and_gates(repo_root, synthetic_root, tmp_path):
    t = build("BiomedAP", repo_root, synthetic_root, tmp_path)
    assert t.fusion_blocks == [0, 1] and sorted(t.learner.fusion) == ["0", "1"]
    t.learner.eval()
    images = next(iter(t.test_loader))["img"][:2]
    fused = t.image_features(images)
    with torch.no_grad():
        t.learner.prompt_learner.ctx.mul_(torch.randn(t.backbone.ctx_dim))  # LayerNorm ignores shifts
    assert not torch.allclose(t.image_features(images), fused), "the text context steers the image tower"
    for fusion in t.learner.fusion.values():
        close_gates(fusion)
    feats, enhanced = t.fused_image_features(images)
    assert len(enhanced) == 2
    context = t.learner.prompt_learner.shared_context()
    assert all(torch.equal(e, context.expand(2, -1, -1)) for e in enhanced), "closed gates keep the context"
    # closed gates pass the prompt tokens through: block 0 sees the zero prompts, block 1 their hidden states
    record = {}
    identity = {block: (lambda prompts: prompts) for block in t.fusion_blocks}
    with torch.no_grad():
        expected = encode_image_with_injection(t.backbone, images, spied(t.prompt_hooks(identity), record))
    assert torch.allclose(feats, F.normalize(expected, dim=-1), atol=1e-6)
    assert not record[0][:, 1:5].any() and record[1][:, 1:5].abs().sum() > 0


def test_biomedap_low_anchors(repo_root, synthetic_root, tmp_path):
    t = build("BiomedAP", repo_root, synthetic_root, tmp_path)
    anchors = t.low_anchors
    data = t.dm.dataset.train_x
    images = torch.stack([t.dm.tfm_test(read_image(d.impath)) for d in data])
    labels = torch.tensor([d.label for d in data])
    with torch.no_grad():
        expected = class_prototypes(t.prompted_image_features(images), labels, len(t.classnames))
    assert anchors.shape == (len(t.classnames), t.backbone.joint_dim)
    assert torch.allclose(anchors, expected, atol=1e-5), "few-shot visual prototypes, frozen tower, test transform"
    text = build("BiomedAP", repo_root, synthetic_root, tmp_path, ("TRAINER.BIOMEDAP.LOW_ANCHOR", "text"))
    assert torch.allclose(text.low_anchors, text.template_features("{}"))


def test_biomedap_kd_teacher_is_detached_and_only_learned_parts_train(repo_root, synthetic_root, tmp_path,
                                                                      monkeypatch):
    from vmfcoop.trainers import biomedap

    t = build("BiomedAP", repo_root, synthetic_root, tmp_path)
    seen, original = {}, biomedap.distillation_kl

    def spy(student, teacher):
        seen.update(student=student, teacher=teacher)
        return original(student, teacher)

    monkeypatch.setattr(biomedap, "distillation_kl", spy, raising=True)
    t.set_model_mode("train")
    t.num_batches, t.batch_idx = 2, 0
    summary = t.forward_backward(next(iter(t.train_loader_x)))
    assert seen["student"].requires_grad and not seen["teacher"].requires_grad
    assert {"ce", "anchor", "kd", "align"} <= set(summary)
    assert all(p.grad is None for p in t.backbone.parameters())
    grads = {name for name, p in t.learner.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "prompt_learner.ctx" in grads and any(name.startswith("fusion.") for name in grads)


def test_biomedap_config_errors(repo_root, synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match="FUSION_LAYERS"):
        build("BiomedAP", repo_root, synthetic_root, tmp_path, ("TRAINER.BIOMEDAP.FUSION_LAYERS", "[12]"))
    with pytest.raises(ConfigError, match="FUSION_HEADS=3"):
        build("BiomedAP", repo_root, synthetic_root, tmp_path, ("TRAINER.BIOMEDAP.FUSION_HEADS", "3"))
    with pytest.raises(ConfigError, match="LOW_ANCHOR"):
        build("BiomedAP", repo_root, synthetic_root, tmp_path, ("TRAINER.BIOMEDAP.LOW_ANCHOR", "class"))
    with pytest.raises(ConfigError, match="TEMPLATE"):
        build("BiomedDPT", repo_root, synthetic_root, tmp_path, ("TRAINER.BIOMEDDPT.TEMPLATE", "no class here"))


CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "trainers", "Biomed[AD]P*", "*",
                                        "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: "/".join(p.split(os.sep)[-3:]))
def test_shipped_configs_merge_and_fit_the_template(path):
    trainer = path.split(os.sep)[-3]
    cfg = setup_cfg(build_parser().parse_args(["--config-file", path, "--trainer", trainer]))
    node = cfg.TRAINER[trainer.upper()]
    few_shot = "few_shot" in path
    assert cfg.OPTIM.MAX_EPOCH == (100 if few_shot else 50) and cfg.OPTIM.LR == 0.0025
    assert cfg.DATASET.PROMPTS.N_PROMPTS == (40 if trainer == "BiomedAP" and few_shot else 50)
    TemplatePromptLearner(build_backbone("tiny-clip"), ["x"], node.TEMPLATE, node.N_CTX)  # N_CTX fits


def test_released_per_dataset_values_are_kept():
    def node(trainer, protocol, dataset):
        path = os.path.join(os.path.dirname(__file__), "..", "configs", "trainers", trainer, protocol, f"{dataset}.yaml")
        return setup_cfg(build_parser().parse_args(["--config-file", path, "--trainer", trainer])).TRAINER
    covid = node("BiomedAP", "few_shot", "covid").BIOMEDAP
    assert (covid.N_CTX, covid.ANCHOR_HIGH_LAMBDA, covid.KL_LAMBDA, covid.ANCHOR_LOW_LAMBDA) == (6, 65.0, 2.5, 5.0)
    assert covid.TEMPLATE == "a chest X-ray photo of a {} affected by COVID-19 in the lung."
    chmnist = node("BiomedDPT", "base_to_novel", "chmnist").BIOMEDDPT
    assert (chmnist.ANCHOR_HIGH_LAMBDA, chmnist.KL_LAMBDA) == (23.0, 0.9)
    assert len(CONFIGS) == 2 * (11 + 1 + 10 + 1)
