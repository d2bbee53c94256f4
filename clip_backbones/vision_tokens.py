"""Token-level access to a backbone's ViT image tower: patch tokens, and a forward with hooks between blocks.

Two tower kinds are supported, and both are read, never modified:

- timm ``VisionTransformer`` trunks inside open_clip's ``TimmModel`` (BiomedCLIP, tiny-bert);
- open_clip's own ``VisionTransformer`` (CLIP, PubMedCLIP, tiny-clip).

Other towers (PMC-CLIP's ModifiedResNet, MedCLIP's Swin) raise :class:`UnsupportedVisionTower`.

    pooled, patches = encode_image_with_tokens(bb, images)        # [B, d], [B, N, d] (joint space)
    pooled = encode_image_with_injection(bb, images, {5: hook})    # hook(tokens [B, L, width]) -> tokens

Tokens seen by hooks are the transformer's input sequence ``[class token, patch tokens]`` (plus whatever
an earlier hook inserted), batch first, in the tower's width. A hook may change the sequence length
(insert prompt tokens) when the tower pools its class token (every supported backbone does).
Both functions compute exactly what ``bb.encode_image`` computes when no hook changes the tokens.
No attention maps are returned: OGKD picks its "attentive" patches by the teacher's true-class score.
The forward is spelled out with the towers' own pieces, including open_clip's ``_embeds``/``_pool`` and
timm's ``_pos_embed`` (private, but stable in the pinned open_clip 3.x / timm 1.x; the equality test
catches a change).
"""
import torch
from vmfcoop.engine.errors import VmfcoopError

VIT_BACKBONES = "BiomedCLIP, CLIP, PubMedCLIP, tiny-bert or tiny-clip"


class UnsupportedVisionTower(VmfcoopError, TypeError):
    """The backbone's image tower is not a ViT this module can read tokens from."""


class _TimmTower:
    """open_clip ``TimmModel``: a timm ViT ``trunk`` followed by a projection ``head``."""

    def __init__(self, visual):
        self.visual, self.trunk = visual, visual.trunk
        self.width = self.trunk.embed_dim
        self.blocks = list(self.trunk.blocks)
        self.pools_class_token = self.trunk.global_pool == "token" and self.trunk.attn_pool is None

    def embed(self, images):
        trunk = self.trunk
        return trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images))))

    def run_block(self, block, tokens):
        return block(tokens)

    def outputs(self, tokens, with_patches):
        normed = self.trunk.norm(tokens)
        pooled = self.visual.head(self.trunk.forward_head(normed))
        patches = self.visual.head(normed[:, self.trunk.num_prefix_tokens:]) if with_patches else None
        return pooled, patches


class _OpenClipTower:
    """open_clip ``VisionTransformer``: class + patch embeddings, ``transformer``, ``_pool``, ``proj``."""

    def __init__(self, visual):
        self.visual = visual
        self.width = visual.transformer.width
        self.blocks = list(visual.transformer.resblocks)
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.pools_class_token = visual.pool_type == "tok"

    def embed(self, images):
        return self.visual._embeds(images)

    def run_block(self, block, tokens):
        if self.batch_first:
            return block(tokens)
        return block(tokens.transpose(0, 1)).transpose(0, 1)

    def outputs(self, tokens, with_patches):
        visual = self.visual
        pooled, patches = visual._pool(tokens)
        if not with_patches:
            patches = None
        elif visual.final_ln_after_pool:  # _pool normalised only the pooled token
            patches = visual.ln_post(patches)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
            patches = None if patches is None else patches @ visual.proj
        return pooled, patches


def vit_tower(backbone):
    """The tower adapter of ``backbone``, or :class:`UnsupportedVisionTower` naming the backbone."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer as OpenClipViT
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    visual = getattr(backbone.model, "visual", None)
    if isinstance(visual, TimmModel) and isinstance(visual.trunk, TimmViT) and "pool" not in visual.head._modules:
        return _TimmTower(visual)
    if isinstance(visual, OpenClipViT) and visual.attn_pool is None:
        return _OpenClipTower(visual)
    tower = type(visual if visual is not None else backbone.model).__name__
    raise UnsupportedVisionTower(
        f"This method reads the image tower's patch tokens, so it needs a ViT backbone ({VIT_BACKBONES}); "
        f"backbone {backbone.name!r} has a {tower} image tower. Set MODEL.BACKBONE.NAME to a ViT backbone.")


def vision_width(backbone):
    """Width of the tokens the hooks see (768 for ViT-B towers)."""
    return vit_tower(backbone).width


def vision_depth(backbone):
    """Number of transformer blocks (valid hook indices are ``0 .. depth - 1``)."""
    return len(vit_tower(backbone).blocks)


def encode_image_with_tokens(backbone, images):
    """``(pooled [B, d], patches [B, N, d])``: the image features ``bb.encode_image`` returns and every
    patch token after the tower's final norm, projected by the same head (neither normalised)."""
    tower = vit_tower(backbone)
    tokens = tower.embed(images)
    for block in tower.blocks:
        tokens = tower.run_block(block, tokens)
    return tower.outputs(tokens, with_patches=True)


def encode_image_with_injection(backbone, images, inject):
    """``[B, d]`` image features of a forward where ``inject[i](tokens)`` replaces the input of block ``i``.

    ``inject`` maps block indices (``0 .. depth - 1``) to callables ``tokens [B, L, width] -> tokens``;
    they run in block order, with gradients when the caller allows them.
    """
    tower = vit_tower(backbone)
    depth = len(tower.blocks)
    bad = sorted(i for i in inject if not 0 <= i < depth)
    if bad:
        raise ValueError(f"Injection block indices {bad} are outside 0..{depth - 1} of {backbone.name}'s image tower")
    tokens = tower.embed(images)
    length = tokens.shape[1]
    for index, block in enumerate(tower.blocks):
        if index in inject:
            tokens = inject[index](tokens)
        tokens = tower.run_block(block, tokens)
    if tokens.shape[1] != length and not tower.pools_class_token:
        raise UnsupportedVisionTower(
            f"{backbone.name}'s image tower pools over all tokens, so inserted tokens would change its pooling; "
            f"only class-token towers accept hooks that change the sequence length")
    return tower.outputs(tokens, with_patches=False)[0]


def insert_tokens(tokens, extra, after=1):
    """``tokens [B, L, W]`` with ``extra [B, n, W]`` inserted after the first ``after`` (class) tokens."""
    return torch.cat([tokens[:, :after], extra.to(tokens.dtype), tokens[:, after:]], dim=1)


def replace_tokens(tokens, replacement, start=1):
    """``tokens`` with positions ``start .. start + n`` replaced by ``replacement [B, n, W]``."""
    end = start + replacement.shape[1]
    return torch.cat([tokens[:, :start], replacement.to(tokens.dtype), tokens[:, end:]], dim=1)
