"""vmfcoop.clip_backbones: every backbone, tiny and real-size (random weights), fully offline.

Real-size models are built once each (module-scoped fixture; pytest groups the tests by backbone
and releases each model before building the next).
"""
import dataclasses
import time
import warnings

import pytest
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image
from torch import nn
from vmfcoop.clip_backbones import (
    BACKBONE_NAMES,
    BackboneWeightsMismatch,
    BackboneWeightsNotFound,
    ClipBackbone,
    build_backbone,
    build_backbone_from_cfg,
    env_var_name,
    factory,
    load_backbone_config,
    save_backbone,
)
from vmfcoop.clip_backbones.convert import (
    PMC_CLIP_IMAGE_FILE,
    PMC_CLIP_PROJECTION_FILE,
    PMC_CLIP_TEXT_FILE,
    hf_clip_to_open_clip,
)
from vmfcoop.clip_backbones.medclip import MedClipBackbone
from vmfcoop.clip_backbones.weights import HubRepo, read_state_dict

TINY = ("tiny-bert", "tiny-clip")
REAL = ("BiomedCLIP", "CLIP", "PubMedCLIP", "PMC-CLIP", "MedCLIP")
ALL = REAL + TINY

# name: (family, parameters, joint_dim, ctx_dim, context_length, exp(logit_scale) at init)
EXPECTED = {
    "BiomedCLIP": ("bert", 195_902_721, 512, 768, 256, 1 / 0.07),
    "CLIP": ("clip", 149_620_737, 512, 512, 77, 1 / 0.07),
    "PubMedCLIP": ("clip", 151_277_313, 512, 512, 77, 1 / 0.07),
    "PMC-CLIP": ("bert", 147_864_417, 768, 768, 77, 83.864),  # exp(4.4292), fixed by PMC-CLIP
    "MedCLIP": ("bert", 136_616_059, 512, 768, 77, 1 / 0.07),
    "tiny-bert": ("bert", 394_369, 32, 64, 64, 1 / 0.07),
    "tiny-clip": ("clip", 3_573_377, 48, 64, 77, 1 / 0.07),
}
CLASSNAMES = ["glioma tumor", "meningioma tumor", "no tumor", "pituitary tumor"]
N_CTX = 4


def _param(name):
    return pytest.param(name, marks=pytest.mark.slow) if name in REAL else name


@pytest.fixture(scope="module", params=[_param(n) for n in ALL])
def backbone(request):
    if request.param in TINY:
        return build_backbone(request.param)
    return build_backbone(request.param, pretrained=False, cache=False)  # pytest drops it after use


def coop_prompts():
    return [" ".join(["X"] * N_CTX) + f" {name}." for name in CLASSNAMES]


def pad_to(ids, mask, length, pad_id):
    extra = length - ids.shape[1]
    return (nn.functional.pad(ids, (0, extra), value=pad_id), nn.functional.pad(mask, (0, extra), value=0))


def splice(embeds, ctx):
    """CoOp's prompt: start token, the learned context, then the class-name tokens."""
    return torch.cat([embeds[:, :1], ctx.expand(embeds.shape[0], -1, -1), embeds[:, 1 + N_CTX:]], dim=1)


def perturb_(bb):
    """Changes every float tensor (cheaply, no RNG), so a later load must overwrite each one."""
    with torch.no_grad():
        for tensor in bb.model.state_dict().values():
            if tensor.is_floating_point():
                tensor.mul_(1.01).add_(1e-3)


def reference_text_features(bb, ids, mask):
    """Text features from each model's own library forward, independent of ``encode_prompt``."""
    if isinstance(bb, MedClipBackbone):  # MedCLIP: unmasked mean of layers 1, 2, 12 on unpadded prompts
        rows = []
        for row, length in zip(ids, mask.sum(1).tolist()):
            out = bb.model.text_model.model(input_ids=row[None, :length], output_hidden_states=True)
            layers = torch.stack([out.hidden_states[i] for i in (1, 2, -1)])
            rows.append(bb.model.text_model.projection_head(layers.mean(dim=(0, 2))))
        return torch.cat(rows)
    padded, _ = pad_to(ids, mask, bb.context_length, bb.pad_token_id)
    return bb.model.encode_text(padded)  # open_clip: full context, its own masking and pooling


# -- registry --------------------------------------------------------------------------------------

def test_backbone_names():
    assert set(BACKBONE_NAMES) == set(ALL)


def test_unknown_name_suggests_close_match():
    with pytest.raises(KeyError, match="Did you mean: BiomedCLIP") as info:
        build_backbone("BiomedClip")
    assert "Available:" in str(info.value)


def test_build_from_cfg_reads_name_and_path():
    from yacs.config import CfgNode

    cfg = CfgNode({"USE_CUDA": False, "MODEL": CfgNode({"BACKBONE": CfgNode({"NAME": "tiny-clip", "PATH": ""})})})
    assert build_backbone_from_cfg(cfg) is build_backbone("tiny-clip")


def test_cache_reuses_and_private_copies_differ():
    assert build_backbone("tiny-bert") is build_backbone("tiny-bert")
    assert build_backbone("tiny-bert", cache=False) is not build_backbone("tiny-bert")


# -- every backbone, tiny and real-size -------------------------------------------------------------

def test_architecture_and_facts(backbone):
    family, n_params, joint_dim, ctx_dim, context_length, scale = EXPECTED[backbone.name]
    assert isinstance(backbone, ClipBackbone)
    assert backbone.family == family
    assert sum(p.numel() for p in backbone.parameters()) == n_params
    assert (backbone.joint_dim, backbone.ctx_dim, backbone.context_length) == (joint_dim, ctx_dim, context_length)
    assert backbone.start_token_count == 1
    assert backbone.image_size == 224 and backbone.interpolation == "bicubic"
    assert len(backbone.image_mean) == len(backbone.image_std) == 3
    assert backbone.logit_scale.shape == () and backbone.logit_scale.item() == pytest.approx(scale, rel=1e-4)
    assert backbone.token_embedding_layer().embedding_dim == ctx_dim


def test_frozen_and_stays_in_eval(backbone):
    wrapper = nn.ModuleDict({"backbone": backbone, "head": nn.Linear(2, 2)})
    wrapper.train()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not any(m.training for m in backbone.modules())
    assert wrapper["head"].training
    ids, mask = backbone.tokenize(["a photo of a glioma tumor."])
    torch.testing.assert_close(backbone.encode_text(ids, mask), backbone.encode_text(ids, mask), rtol=0, atol=0)


def test_tokenize_trims_and_truncates(backbone):
    ids, mask = backbone.tokenize(coop_prompts() + ["a"])
    lengths = mask.sum(1)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.shape == mask.shape and ids.shape[1] == int(lengths.max()) < backbone.context_length
    assert torch.equal(mask, (torch.arange(ids.shape[1]) < lengths[:, None]).long())  # right padding
    specials = backbone.special_token_ids
    assert all(int(i) in specials for i in ids[:, 0])  # start token first
    assert all(int(ids[r, n - 1]) in specials for r, n in enumerate(lengths.tolist()))  # end token last
    assert all(int(i) not in specials for i in ids[:4, 1:1 + N_CTX].flatten())  # context placeholders
    assert (ids[mask == 0] == backbone.pad_token_id).all()

    long_ids, long_mask = backbone.tokenize(["tumor " * 400])
    assert long_ids.shape[1] == backbone.context_length and long_mask.all()
    assert int(long_ids[0, -1]) in specials


def test_encode_prompt_of_token_embeddings_equals_encode_text(backbone):
    ids, mask = backbone.tokenize(coop_prompts())
    with torch.no_grad():
        from_ids = backbone.encode_text(ids, mask)
        from_embeds = backbone.encode_prompt(backbone.token_embedding(ids), mask)
    assert from_ids.shape == (len(CLASSNAMES), backbone.joint_dim)
    torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=1e-5)


def test_encode_text_matches_library_forward(backbone):
    ids, mask = backbone.tokenize(["a photo of a glioma tumor.", "no tumor", "an mri scan of the brain."])
    with torch.no_grad():
        ours = backbone.encode_text(ids, mask)
        reference = reference_text_features(backbone, ids, mask)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_padded_and_trimmed_prompts_agree_with_gradients(backbone):
    prompts = coop_prompts()[::2]  # "glioma tumor", "no tumor": different lengths, so padding inside
    ids, mask = backbone.tokenize(prompts)
    padded_ids, padded_mask = pad_to(ids, mask, backbone.context_length, backbone.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    ctx = (torch.randn(N_CTX, backbone.ctx_dim, generator=gen) * 0.02).requires_grad_()
    readout = torch.randn(len(prompts), backbone.joint_dim, generator=gen)

    def features_and_grad(token_ids, token_mask, trim):
        features = backbone.encode_prompt(splice(backbone.token_embedding(token_ids), ctx), token_mask, trim=trim)
        (grad,) = torch.autograd.grad((features * readout).sum(), ctx)
        return features.detach(), grad

    trimmed, grad_trimmed = features_and_grad(ids, mask, trim=True)
    padded, grad_padded = features_and_grad(padded_ids, padded_mask, trim=False)
    assert ids.shape[1] < padded_ids.shape[1] == backbone.context_length and not mask.all()
    assert grad_trimmed.abs().max() > 0
    torch.testing.assert_close(padded, trimmed, rtol=0, atol=1e-5)
    # float32 sums in a different order: compare at the gradient's own scale (|g| reaches ~100)
    scale = grad_trimmed.abs().max()
    torch.testing.assert_close(grad_padded / scale, grad_trimmed / scale, rtol=0, atol=1e-5)


def test_encode_image_and_preprocess(backbone):
    gray_wide = Image.new("L", (300, 200), color=128)
    pixels = torch.stack([backbone.preprocess(gray_wide), backbone.preprocess(gray_wide.convert("RGB"))])
    assert pixels.shape == (2, 3, 224, 224)
    expected_center = [(128 / 255 - m) / s for m, s in zip(backbone.image_mean, backbone.image_std)]
    torch.testing.assert_close(pixels[0, :, 112, 112], torch.tensor(expected_center), rtol=0, atol=1e-4)
    with torch.no_grad():
        features = backbone.encode_image(pixels)
    assert features.shape == (2, backbone.joint_dim) and torch.isfinite(features).all()


def test_vocabulary_excludes_special_tokens(backbone):
    ids, tokens = backbone.vocabulary()
    specials = backbone.special_token_ids
    assert len(ids) == len(tokens) == len(set(ids)) and ids == sorted(ids)
    assert specials and not specials & set(ids)
    assert len(ids) + len(specials) == backbone.token_embedding_layer().num_embeddings
    special_text = {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "<start_of_text>", "<end_of_text>"}
    assert not special_text & set(tokens)


def test_fingerprint_is_cached_and_fast(backbone):
    start = time.perf_counter()
    first = backbone.fingerprint()
    assert time.perf_counter() - start < 10
    start = time.perf_counter()
    assert backbone.fingerprint() == first and len(first) == 16
    assert time.perf_counter() - start < 0.5


# -- tiny models: determinism, fingerprints, tokenisation -------------------------------------------

@pytest.mark.parametrize("name", TINY)
def test_tiny_builds_are_fast_and_identical(name):
    build_backbone(name, cache=False)  # warm lazy imports
    start = time.perf_counter()
    first = build_backbone(name, cache=False)
    assert time.perf_counter() - start < 2.0
    second = build_backbone(name, cache=False)
    assert first.fingerprint() == second.fingerprint()


@pytest.mark.parametrize("name", TINY)
def test_fingerprint_changes_with_any_weight(name):
    bb = build_backbone(name, cache=False)
    before = bb.fingerprint()
    weight = bb.token_embedding_layer().weight
    original = weight[-1, -1].item()
    with torch.no_grad():
        weight[-1, -1] = original + 1e-3
    changed = bb.fingerprint()
    with torch.no_grad():
        weight[-1, -1] = original
    assert changed != before
    assert bb.fingerprint() == before


def test_tiny_bert_splits_medical_words_into_pieces():
    bb = build_backbone("tiny-bert")
    ids, mask = bb.tokenize(["meningioma"])
    assert int(mask.sum()) - 2 >= 3  # [CLS] pieces... [SEP]
    assert bb.tokenizer.special_token_ids.isdisjoint(ids[0, 1:-1].tolist())


# -- loading from local files --------------------------------------------------------------------

def _assert_same_outputs(a, b):
    ids, mask = a.tokenize(["a photo of a glioma tumor.", "no tumor"])
    images = torch.randn(2, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(b.encode_text(ids, mask), a.encode_text(ids, mask), rtol=0, atol=0)
        torch.testing.assert_close(b.encode_image(images), a.encode_image(images), rtol=0, atol=0)


def _round_trip(name, tmp_path, use_file=False):
    saved = build_backbone(name, cache=False)
    perturb_(saved)
    weights_file = save_backbone(saved, tmp_path)
    loaded = build_backbone(name, path=weights_file if use_file else tmp_path, cache=False)
    assert loaded.fingerprint() == saved.fingerprint() != build_backbone(name, pretrained=False).fingerprint()
    _assert_same_outputs(saved, loaded)


@pytest.mark.parametrize("name", TINY)
def test_round_trip_through_local_dir(name, tmp_path):
    _round_trip(name, tmp_path)


def test_round_trip_through_single_weights_file(tmp_path):
    _round_trip("tiny-clip", tmp_path, use_file=True)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["BiomedCLIP"], indirect=True)  # reuses the module's instance
def test_round_trip_real_size_biomedclip(backbone, tmp_path):
    """Saves the session's random BiomedCLIP and loads it into a model initialised from another seed."""
    save_backbone(backbone, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["open_clip_pytorch_model.bin", "vocab.txt"]
    loaded = factory.build_from_spec(factory.get_spec("BiomedCLIP"), source=str(tmp_path), seed=1)
    assert loaded.fingerprint() == backbone.fingerprint()
    assert loaded.vocabulary() == backbone.vocabulary()
    _assert_same_outputs(backbone, loaded)


def test_env_var_points_at_weights(tmp_path, monkeypatch):
    saved = build_backbone("tiny-clip", cache=False)
    perturb_(saved)
    save_backbone(saved, tmp_path)
    monkeypatch.setenv(env_var_name("tiny-clip"), str(tmp_path))
    assert env_var_name("tiny-clip") == "VMFCOOP_TINY_CLIP_PATH"
    assert build_backbone("tiny-clip", cache=False).fingerprint() == saved.fingerprint()


def _tiny_bert_config():
    return load_backbone_config("tiny-bert")["hf_text_config"]


def _tiny_variant(name):
    """The real backbone's config with every size shrunk (same classes and loaders)."""
    config = load_backbone_config(name)
    config["hf_text_config"] = _tiny_bert_config()
    model_cfg = config["model_cfg"]
    if name == "PMC-CLIP":
        model_cfg.update(embed_dim=32, vision_cfg={"layers": [1, 1, 1, 1], "width": 8, "head_width": 64,
                                                   "image_size": 64})
        model_cfg["text_cfg"]["context_length"] = 32
    elif name == "MedCLIP":
        model_cfg.update(embed_dim=32, context_length=32)
        model_cfg["vision_config"].update(image_size=64, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                          window_size=4)
    config["preprocess_cfg"]["size"] = 64
    return config


def _build_variant(name, source="", seed=0):
    spec = factory.get_spec(name)
    return factory.build_from_spec(spec, source=str(source), config=_tiny_variant(name), seed=seed)


def test_medclip_checkpoint_round_trip(tmp_path):
    saved = _build_variant("MedCLIP", seed=3)
    assert save_backbone(saved, tmp_path).name == "pytorch_model.bin"
    loaded = _build_variant("MedCLIP", source=tmp_path)
    assert loaded.fingerprint() == saved.fingerprint() != _build_variant("MedCLIP").fingerprint()
    _assert_same_outputs(saved, loaded)


def test_medclip_real_keys_follow_medclip_checkpoint_layout():
    with torch.device("meta"):
        model = MedClipBackbone.build("MedCLIP", load_backbone_config("MedCLIP")).model
    keys = set(model.state_dict())
    assert {"logit_scale", "vision_model.projection_head.weight", "text_model.projection_head.weight",
            "text_model.model.pooler.dense.weight"} <= keys
    assert all(k.startswith(("vision_model.model.", "text_model.model.")) for k in keys
               if "projection_head" not in k and k != "logit_scale")


def test_pmc_clip_loads_biomedcoop_three_files(tmp_path):
    saved = _build_variant("PMC-CLIP", seed=3)
    state = saved.model.state_dict()
    torch.save({k[len("text.transformer."):]: v for k, v in state.items() if k.startswith("text.transformer.")},
               tmp_path / PMC_CLIP_TEXT_FILE)
    torch.save({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")},
               tmp_path / PMC_CLIP_IMAGE_FILE)
    torch.save(state["text.proj.weight"].t().clone(), tmp_path / PMC_CLIP_PROJECTION_FILE)  # x @ W
    saved.tokenizer.save_vocab(tmp_path)
    loaded = _build_variant("PMC-CLIP", source=tmp_path)
    assert loaded.logit_scale.item() == pytest.approx(83.864, rel=1e-4)
    assert loaded.fingerprint() == saved.fingerprint()
    _assert_same_outputs(saved, loaded)


def _tiny_hf_clip():
    from transformers import CLIPConfig, CLIPModel

    common = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
    config = CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, **common),
                        vision_config=dict(image_size=224, patch_size=32, **common), projection_dim=48)
    torch.manual_seed(5)
    return CLIPModel(config).eval()


def _tensor(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # transformers 5


def test_hugging_face_clip_checkpoint_converts(tmp_path):
    """PubMedCLIP's hub copy is a transformers CLIPModel; the same converter serves every CLIP."""
    hf_model = _tiny_hf_clip()
    hf_model.save_pretrained(tmp_path)
    bb = build_backbone("tiny-clip", path=tmp_path, cache=False)
    ids, mask = bb.tokenize(["a photo of a glioma tumor.", "no tumor"])
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_text(ids, mask),
                                   _tensor(hf_model.get_text_features(input_ids=ids, attention_mask=mask)),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bb.encode_image(images),
                                   _tensor(hf_model.get_image_features(pixel_values=images)),
                                   rtol=1e-4, atol=1e-5)


def test_hugging_face_clip_keys_map_onto_real_pubmedclip():
    import open_clip
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config=dict(hidden_act="quick_gelu"),
                        vision_config=dict(patch_size=32, hidden_act="quick_gelu"), projection_dim=512)
    with torch.device("meta"):
        hf_state = CLIPModel(config).state_dict()
        ours = open_clip.CLIP(**load_backbone_config("PubMedCLIP")["model_cfg"]).state_dict()
    converted = hf_clip_to_open_clip(hf_state)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_read_state_dict_unwraps_common_containers(tmp_path):
    linear = nn.Linear(2, 3)
    with warnings.catch_warnings():  # OpenAI's original CLIP .pt files are TorchScript archives
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(linear).save(str(tmp_path / "scripted.pt"))
    torch.save({"state_dict": {"module.weight": linear.weight.data}}, tmp_path / "wrapped.pth")
    assert set(read_state_dict(tmp_path / "scripted.pt")) == {"weight", "bias"}
    assert torch.equal(read_state_dict(tmp_path / "wrapped.pth")["weight"], linear.weight.data)


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_backbone(build_backbone("tiny-clip"), tmp_path)
    with pytest.raises(BackboneWeightsMismatch, match="open_clip_pytorch_model.bin|missing"):
        build_backbone("tiny-bert", path=tmp_path, cache=False)


# -- missing files --------------------------------------------------------------------------------

@pytest.fixture
def empty_offline_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


@pytest.mark.parametrize("name", REAL)
def test_missing_weights_offline_names_the_files(name, empty_offline_hub, monkeypatch):
    monkeypatch.delenv(env_var_name(name), raising=False)
    with pytest.raises(BackboneWeightsNotFound) as info:
        build_backbone(name, cache=False)
    message = str(info.value)
    assert name in message and env_var_name(name) in message and "MODEL.BACKBONE.PATH" in message
    for requirement in factory.get_spec(name).files:
        assert requirement.choices[0][0] in message


def test_missing_files_in_local_dir_are_named(tmp_path):
    with pytest.raises(BackboneWeightsNotFound, match="vocab.txt") as info:
        build_backbone("BiomedCLIP", path=tmp_path, cache=False)
    assert str(tmp_path) in str(info.value) and "open_clip_pytorch_model.bin" in str(info.value)
    with pytest.raises(BackboneWeightsNotFound, match="does not exist"):
        build_backbone("CLIP", path=tmp_path / "nowhere", cache=False)


def _fake_hub_snapshot(cache, repo, files):
    """The Hugging Face cache layout: refs/main names a snapshot folder holding the files."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())


def test_loads_from_hugging_face_cache_offline(tmp_path, empty_offline_hub):
    saved = build_backbone("tiny-bert", cache=False)
    perturb_(saved)
    save_backbone(saved, tmp_path / "export")
    _fake_hub_snapshot(empty_offline_hub, "test-org/tiny-bert", {
        "open_clip_pytorch_model.bin": tmp_path / "export" / "open_clip_pytorch_model.bin",
        "vocab.txt": tmp_path / "export" / "vocab.txt",
    })
    spec = factory.get_spec("tiny-bert")
    hub = (HubRepo("test-org/tiny-bert"),)
    published = dataclasses.replace(
        spec, published=True, files=tuple(dataclasses.replace(req, hub=hub) for req in spec.files))
    loaded = factory.build_from_spec(published, source=factory.HUB)
    assert loaded.fingerprint() == saved.fingerprint()


@pytest.mark.parametrize("pretrained, expected_source", [(True, "hub"), (False, "")])
def test_config_pretrained_key_selects_random_weights(pretrained, expected_source, monkeypatch):
    from vmfcoop.clip_backbones import factory
    from vmfcoop.engine import get_cfg_default

    sources = []
    monkeypatch.setattr(factory, "build_from_spec", lambda spec, source: sources.append(source) or torch.nn.Linear(1, 1))
    monkeypatch.delenv("VMFCOOP_BIOMEDCLIP_PATH", raising=False)
    cfg = get_cfg_default()
    cfg.MODEL.BACKBONE.PRETRAINED = pretrained
    factory.build_backbone_from_cfg(cfg, device="cpu", cache=False)
    assert sources == [expected_source]
