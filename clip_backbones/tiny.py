"""The tiny timm image tower used by the ``tiny-bert`` test backbone.

open_clip's ``TimmModel`` creates its trunk by timm model name without size arguments, so a
2-layer, 64-wide ViT must exist as a registered timm name. It takes 224 px images (patch 32) so
the same dataset configs work with every backbone.
"""
TINY_VIT_NAME = "vmfcoop_vit_tiny_patch32_224"


def register_tiny_image_towers():
    """Registers the tiny ViT with timm once per process (timm's registry is process-global)."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if timm.is_model(TINY_VIT_NAME):
        return

    def vmfcoop_vit_tiny_patch32_224(pretrained=False, **kwargs):
        if kwargs.get("pretrained_cfg") is None:  # none published; an explicit one silences timm
            kwargs["pretrained_cfg"] = {"input_size": (3, 224, 224)}
        args = dict(patch_size=32, embed_dim=64, depth=2, num_heads=2, img_size=224)
        return _create_vision_transformer(TINY_VIT_NAME, pretrained=pretrained, **dict(args, **kwargs))

    register_model(vmfcoop_vit_tiny_patch32_224)
