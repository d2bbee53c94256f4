"""One frozen-backbone interface over BiomedCLIP, CLIP, PubMedCLIP, PMC-CLIP, MedCLIP and two tiny
random test backbones.

    from vmfcoop.clip_backbones import build_backbone
    bb = build_backbone("BiomedCLIP")            # or path="/models/biomedclip", device="cuda"
    ids, mask = bb.tokenize(["a photo of a glioma tumor."])
    text = bb.encode_text(ids, mask)             # [N, bb.joint_dim], not normalised
"""
from .base import ClipBackbone, fingerprint_state_dict, trim_to_longest
from .factory import (
                      BACKBONE_NAMES,
                      build_backbone,
                      build_backbone_from_cfg,
                      clear_backbone_cache,
                      load_backbone_config,
                      save_backbone,
)
from .weights import BackboneWeightsMismatch, BackboneWeightsNotFound, env_var_name

__all__ = [
    "BACKBONE_NAMES",
    "BackboneWeightsMismatch",
    "BackboneWeightsNotFound",
    "ClipBackbone",
    "build_backbone",
    "build_backbone_from_cfg",
    "clear_backbone_cache",
    "env_var_name",
    "fingerprint_state_dict",
    "load_backbone_config",
    "save_backbone",
    "trim_to_longest",
]
