"""State-dict conversions from other distributions' layouts into open_clip's key space."""
import re

import torch

from .weights import read_state_dict

# --- OpenAI / Hugging Face CLIP ----------------------------------------------------------------

_OPENAI_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")

_HF_CLIP_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
# HF stores projections as Linear weights (out x in); open_clip multiplies by (in x out) matrices.
_HF_CLIP_TRANSPOSED = {
    "text_projection.weight": "text_projection",
    "visual_projection.weight": "visual.proj",
}
_HF_CLIP_LAYER = re.compile(r"(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_HF_CLIP_LAYER_RENAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_HF_CLIP_QKV = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
_TOWER_PREFIX = {"text_model": "", "vision_model": "visual."}


def is_hf_clip_state_dict(state_dict):
    return any(k.startswith("text_model.") for k in state_dict)


def hf_clip_to_open_clip(state_dict):
    """transformers ``CLIPModel`` keys -> open_clip ``CLIP`` keys.

    Separate q/k/v projections become ``in_proj_weight``/``in_proj_bias`` (rows q, k, v).
    Unknown keys are passed through unchanged so a strict load names them."""
    converted, qkv = {}, {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if key in _HF_CLIP_TRANSPOSED:
            converted[_HF_CLIP_TRANSPOSED[key]] = value.t().contiguous()
            continue
        if key in _HF_CLIP_FIXED:
            converted[_HF_CLIP_FIXED[key]] = value
            continue
        match = _HF_CLIP_LAYER.fullmatch(key)
        if match:
            tower, index, module, kind = match.groups()
            block = f"{_TOWER_PREFIX[tower]}transformer.resblocks.{index}."
            if module in _HF_CLIP_QKV:
                qkv.setdefault(f"{block}attn.in_proj_{kind}", [None] * 3)[_HF_CLIP_QKV[module]] = value
                continue
            if module in _HF_CLIP_LAYER_RENAMES:
                converted[f"{block}{_HF_CLIP_LAYER_RENAMES[module]}.{kind}"] = value
                continue
        converted[key] = value
    for name, parts in qkv.items():
        if any(p is None for p in parts):
            raise ValueError(f"Incomplete q/k/v projections for {name} in a Hugging Face CLIP checkpoint")
        converted[name] = torch.cat(parts, dim=0)
    return converted


def read_clip_weights(files, config):
    """Weights of an OpenAI-architecture CLIP: open_clip/OpenAI keys (state dict, TorchScript
    ``.pt``, BiomedCoOp's ``{"state_dict": ...}``) or Hugging Face ``CLIPModel`` keys."""
    state = read_state_dict(files.single("weights"))
    if is_hf_clip_state_dict(state):
        return hf_clip_to_open_clip(state)
    return {k: v for k, v in state.items() if k not in _OPENAI_JIT_EXTRAS}


# --- PMC-CLIP (BiomedCoOp's three files from the axiong/pmc_oa dataset repo) -------------------

PMC_CLIP_TEXT_FILE = "text_encoder.pth"
PMC_CLIP_IMAGE_FILE = "image_encoder(resnet50).pth"
PMC_CLIP_PROJECTION_FILE = "text_projection_layer.pth"


def pmc_clip_to_open_clip(text_state, image_state, projection, logit_scale):
    """BertModel + ModifiedResNet state dicts and the ``pooler_output @ W`` projection matrix ->
    open_clip ``CustomTextCLIP`` keys. PMC-CLIP's temperature is a constant, not in the files."""
    state = {f"visual.{k}": v for k, v in image_state.items()}
    state.update({f"text.transformer.{k}": v for k, v in text_state.items()})
    state["text.proj.weight"] = projection.t().contiguous()  # Linear computes x @ W.T
    state["logit_scale"] = torch.tensor(float(logit_scale))
    return state


def _only_tensor(state, path):
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    if len(tensors) != 1:
        raise ValueError(f"{path} should hold one projection matrix, found {len(tensors)} tensors")
    return tensors[0]


def read_pmc_clip_weights(files, config):
    """Either BiomedCoOp's three PMC-CLIP files or one open_clip-format state dict."""
    weights = files.get("weights")
    if PMC_CLIP_TEXT_FILE not in weights:
        return read_state_dict(files.single("weights"))
    projection_path = weights[PMC_CLIP_PROJECTION_FILE]
    return pmc_clip_to_open_clip(
        text_state=read_state_dict(weights[PMC_CLIP_TEXT_FILE]),
        image_state=read_state_dict(weights[PMC_CLIP_IMAGE_FILE]),
        projection=_only_tensor(read_state_dict(projection_path), projection_path),
        logit_scale=config["model_cfg"]["init_logit_scale"],
    )


def read_open_clip_weights(files, config):
    return read_state_dict(files.single("weights"))
