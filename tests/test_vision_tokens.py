"""vmfcoop.clip_backbones.vision_tokens: patch tokens and the hookable ViT forward, on both tiny towers."""
import pytest
import torch
from vmfcoop.clip_backbones import build_backbone, factory, load_backbone_config
from vmfcoop.clip_backbones.vision_tokens import (
    UnsupportedVisionTower,
    encode_image_with_injection,
    encode_image_with_tokens,
    insert_tokens,
    replace_tokens,
    vision_depth,
    vision_width,
)

TINY = ["tiny-bert", "tiny-clip"]  # timm trunk (BiomedCLIP's structure) and open_clip's own ViT


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", TINY)
def test_forwards_without_hooks_equal_encode_image(name, images):
    bb = build_backbone(name)
    with torch.no_grad():
        reference = bb.encode_image(images)
        pooled, patches = encode_image_with_tokens(bb, images)
        assert torch.equal(encode_image_with_injection(bb, images, {}), reference)
        assert torch.equal(encode_image_with_injection(bb, images, {0: lambda t: t, 1: lambda t: t.clone()}), reference)
    assert torch.equal(pooled, reference)
    assert patches.shape == (2, (224 // 32) ** 2, bb.joint_dim)


def library_patch_tokens(bb, images):
    """Patch tokens through the libraries' own paths: timm's forward_features, open_clip's output_tokens."""
    visual = bb.model.visual
    if hasattr(visual, "trunk"):
        tokens = visual.trunk.forward_features(images)[:, visual.trunk.num_prefix_tokens:]
        return visual.head(tokens)
    visual.output_tokens = True
    try:
        _, tokens = visual(images)
    finally:
        visual.output_tokens = False
    return tokens @ visual.proj


@pytest.mark.parametrize("name", TINY)
def test_patch_tokens_are_the_libraries_normed_projected_tokens(name, images):
    bb = build_backbone(name)
    with torch.no_grad():
        assert torch.allclose(encode_image_with_tokens(bb, images)[1], library_patch_tokens(bb, images), atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_hooks_see_each_block_input_in_order_and_may_insert_tokens(name, images):
    bb = build_backbone(name)
    width, depth = vision_width(bb), vision_depth(bb)
    assert (width, depth) == (64, 2)
    seen = []
    extra = torch.nn.Parameter(torch.zeros(1, 3, width))

    def first(tokens):
        seen.append((0, tokens.shape))
        return insert_tokens(tokens, extra.expand(tokens.shape[0], -1, -1))

    def second(tokens):
        seen.append((1, tokens.shape))
        return tokens

    out = encode_image_with_injection(bb, images, {1: second, 0: first})
    assert seen == [(0, (2, 50, width)), (1, (2, 53, width))]
    assert out.shape == (2, bb.joint_dim)
    assert not torch.allclose(out, bb.encode_image(images)), "three extra tokens change the class token"
    out.sum().backward()
    assert extra.grad is not None and extra.grad.abs().sum() > 0, "gradients reach what a hook inserts"


def test_hook_indices_outside_the_tower_are_refused(images):
    bb = build_backbone("tiny-bert")
    with pytest.raises(ValueError, match="outside 0..1"):
        encode_image_with_injection(bb, images, {2: lambda t: t})


def test_insert_and_replace_tokens():
    tokens = torch.arange(12.0).view(1, 4, 3)  # rows 0..3: class token then three patches
    extra = -torch.ones(1, 2, 3)
    inserted = insert_tokens(tokens, extra)
    assert inserted.shape == (1, 6, 3)
    assert torch.equal(inserted[0, 0], tokens[0, 0]) and torch.equal(inserted[0, 1:3], extra[0])
    assert torch.equal(inserted[0, 3:], tokens[0, 1:])
    replaced = replace_tokens(tokens, extra)
    assert replaced.shape == tokens.shape
    assert torch.equal(replaced[0, 1:3], extra[0]) and torch.equal(replaced[0, [0, 3]], tokens[0, [0, 3]])


def shrunken(name):
    """The real architecture of a non-ViT backbone, shrunk to build in a second (random weights)."""
    config = load_backbone_config(name)
    config["hf_text_config"].update(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64)
    if name == "PMC-CLIP":
        config["model_cfg"]["embed_dim"] = 32
        config["model_cfg"]["vision_cfg"].update(layers=[1, 1, 1, 1], width=8, head_width=8, image_size=64)
    else:
        config["model_cfg"]["vision_config"].update(embed_dim=8, depths=[1, 1], num_heads=[1, 1], image_size=64)
    return factory.build_from_spec(factory.get_spec(name), config=config)


@pytest.mark.parametrize("name, tower", [("PMC-CLIP", "ModifiedResNet"), ("MedCLIP", "MedClipModel")])
def test_non_vit_towers_raise_a_clear_error(name, tower):
    bb = shrunken(name)
    for call in (lambda: encode_image_with_tokens(bb, torch.zeros(1, 3, 64, 64)),
                 lambda: encode_image_with_injection(bb, torch.zeros(1, 3, 64, 64), {}), lambda: vision_width(bb)):
        with pytest.raises(UnsupportedVisionTower, match=f"needs a ViT backbone.*'{name}' has a {tower}"):
            call()
