"""Backbone names -> specs, and ``build_backbone``: architecture from the bundled configs, weights from
an explicit path, ``VMFCOOP_<NAME>_PATH``, or the Hugging Face hub (its cache when offline)."""
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from vmfcoop.engine.errors import VmfcoopError
from vmfcoop.engine.registry import unknown_name_message

from .convert import (
    PMC_CLIP_IMAGE_FILE,
    PMC_CLIP_PROJECTION_FILE,
    PMC_CLIP_TEXT_FILE,
    read_clip_weights,
    read_open_clip_weights,
    read_pmc_clip_weights,
)
from .medclip import MedClipBackbone
from .open_clip_backbones import OpenClipBertBackbone, OpenClipNativeBackbone
from .weights import (
    HF_WEIGHT_FILES,
    OPEN_CLIP_WEIGHT_FILES,
    BackboneWeightsNotFound,
    FileRequirement,
    HubRepo,
    env_var_name,
    fetch_hub_files,
    find_local_files,
    load_weights,
    missing_files_message,
)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
HUB = "hub"  # weights source: the Hugging Face hub / cache

BIOMEDCLIP_HUB = HubRepo("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
BIOMEDBERT_HUB = HubRepo("microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract")
CLIP_B16_HUB = HubRepo("timm/vit_base_patch16_clip_224.openai")  # open_clip's 'openai' tag
PUBMEDCLIP_HUB = HubRepo("flaviagiammarino/pubmed-clip-vit-base-patch32")
PUBMEDCLIP_BIOMEDCOOP_HUB = HubRepo("sarahESL/PubMedCLIP")
PMC_CLIP_HUB = HubRepo("axiong/pmc_oa", repo_type="dataset")
BIO_CLINICALBERT_HUB = HubRepo("emilyalsentzer/Bio_ClinicalBERT")


def _singles(names):
    return tuple((name,) for name in names)


def _vocab(hub, help_text, required=True):
    return FileRequirement("vocab", (("vocab.txt",),), hub=hub, required=required, help=help_text)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    backbone_class: type
    files: tuple  # FileRequirement per role
    read_weights: Callable = read_open_clip_weights  # (ResolvedFiles, config) -> state dict
    published: bool = True  # has public weights to look up when no path is given

    @property
    def env_var(self):
        return env_var_name(self.name)


_SPECS = {spec.name: spec for spec in (
    BackboneSpec(
        "BiomedCLIP", OpenClipBertBackbone,
        files=(
            FileRequirement("weights", _singles(OPEN_CLIP_WEIGHT_FILES + HF_WEIGHT_FILES),
                            hub=(BIOMEDCLIP_HUB,), help="open_clip state dict, ~750 MB"),
            _vocab((BIOMEDCLIP_HUB, BIOMEDBERT_HUB), "BiomedBERT WordPiece vocabulary"),
        ),
    ),
    BackboneSpec(
        "CLIP", OpenClipNativeBackbone,
        files=(FileRequirement("weights", _singles(OPEN_CLIP_WEIGHT_FILES + ("ViT-B-16.pt",)),
                               hub=(CLIP_B16_HUB,),
                               help="OpenAI ViT-B/16: open_clip state dict or OpenAI's TorchScript .pt"),),
        read_weights=read_clip_weights,
    ),
    BackboneSpec(
        "PubMedCLIP", OpenClipNativeBackbone,
        files=(FileRequirement("weights",
                               _singles(HF_WEIGHT_FILES + ("PubMedCLIP_ViT32.pth",) + OPEN_CLIP_WEIGHT_FILES),
                               hub=(PUBMEDCLIP_HUB, PUBMEDCLIP_BIOMEDCOOP_HUB),
                               help="ViT-B/32: Hugging Face CLIPModel weights or BiomedCoOp's .pth"),),
        read_weights=read_clip_weights,
    ),
    BackboneSpec(
        "PMC-CLIP", OpenClipBertBackbone,
        files=(
            FileRequirement("weights",
                            ((PMC_CLIP_TEXT_FILE, PMC_CLIP_IMAGE_FILE, PMC_CLIP_PROJECTION_FILE),)
                            + _singles(OPEN_CLIP_WEIGHT_FILES),
                            hub=(PMC_CLIP_HUB,), help="the three files BiomedCoOp uses, or one open_clip state dict"),
            _vocab((BIOMEDBERT_HUB,), "BiomedBERT WordPiece vocabulary"),
        ),
        read_weights=read_pmc_clip_weights,
    ),
    BackboneSpec(
        "MedCLIP", MedClipBackbone,
        files=(
            FileRequirement("weights", _singles(("pytorch_model.bin", "model.safetensors")),
                            help="MedCLIP ViT (Swin) checkpoint, from the 'medclip-vit' zip of "
                                 "https://github.com/RyanWangZf/MedCLIP"),
            _vocab((BIO_CLINICALBERT_HUB,), "Bio_ClinicalBERT WordPiece vocabulary"),
        ),
    ),
    BackboneSpec(
        "tiny-bert", OpenClipBertBackbone, published=False,
        files=(FileRequirement("weights", _singles(OPEN_CLIP_WEIGHT_FILES)),
               _vocab((), "optional; the built-in test vocabulary otherwise", required=False)),
    ),
    BackboneSpec(
        "tiny-clip", OpenClipNativeBackbone, published=False,
        files=(FileRequirement("weights", _singles(OPEN_CLIP_WEIGHT_FILES + HF_WEIGHT_FILES)),),
        read_weights=read_clip_weights,
    ),
)}

BACKBONE_NAMES = tuple(_SPECS)


class UnknownBackboneError(VmfcoopError, KeyError):
    """``MODEL.BACKBONE.NAME`` names no backbone (the message suggests close names)."""

    def __str__(self):
        return self.args[0]

_CACHE = {}


def get_spec(name):
    if name not in _SPECS:
        raise UnknownBackboneError(unknown_name_message("backbone", name, BACKBONE_NAMES))
    return _SPECS[name]


@functools.lru_cache(maxsize=None)
def _read_json(path):
    return Path(path).read_text(encoding="utf-8")


def load_backbone_config(name):
    """The bundled architecture config of a backbone, as a fresh dict (callers may edit it).

    ``hf_text_config`` may name another file in ``model_configs/`` (a shared BERT config)."""
    path = MODEL_CONFIG_DIR / f"{name}.json"
    config = json.loads(_read_json(path))
    if isinstance(config.get("hf_text_config"), str):
        config["hf_text_config"] = json.loads(_read_json(MODEL_CONFIG_DIR / config["hf_text_config"]))
    return config


def weights_source(spec, path="", pretrained=True):
    """Where the weights come from: ``""`` (random init), a local path, or ``HUB``."""
    if not pretrained:
        return ""
    path = str(path or "").strip() or os.environ.get(spec.env_var, "").strip()
    if path:
        return str(Path(path).expanduser().resolve())
    return HUB if spec.published else ""


def resolve_files(spec, source):
    """Local paths of every file the backbone needs from ``source``, or ``BackboneWeightsNotFound``."""
    detail = ""
    if source == HUB:
        files, missing, detail = fetch_hub_files(spec.files)
        looked_in = (f"MODEL.BACKBONE.PATH (empty), ${spec.env_var} (unset), "
                     f"the Hugging Face hub and cache")
    elif not Path(source).exists():
        files, missing, looked_in = None, list(spec.files), f"{source} (does not exist)"
    else:
        files, missing = find_local_files(spec.files, source)
        looked_in = source
    if missing:
        raise BackboneWeightsNotFound(
            missing_files_message(spec.name, spec.files, missing, looked_in, detail))
    return files


def build_from_spec(spec, source="", config=None, seed=0):
    """Builds the architecture (deterministic random init from ``seed``) and loads weights from
    ``source`` when given. ``config`` overrides the bundled one (tests use shrunken copies)."""
    config = config if config is not None else load_backbone_config(spec.name)
    files = resolve_files(spec, source) if source else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = spec.backbone_class.build(spec.name, config,
                                             vocab_file=files.single("vocab") if files else None)
    if files:
        load_weights(backbone.model, spec.read_weights(files, config), source=files.origin)
    return backbone


def build_backbone(name, path="", device="cpu", *, pretrained=True, cache=True):
    """A frozen, eval-mode ``ClipBackbone``.

    Weights come from ``path`` (a folder or a weights file), else ``$VMFCOOP_<NAME>_PATH``, else
    the Hugging Face hub (its cache when ``HF_HUB_OFFLINE=1``). ``pretrained=False`` builds the
    real architecture with deterministic random weights and never looks for files; the tiny test
    backbones are always random unless a path is given. Builds are cached per
    (name, weights source, device), so building twice returns the same object; pass
    ``cache=False`` for a private copy (e.g. before changing weights)."""
    spec = get_spec(name)
    source = weights_source(spec, path, pretrained)
    key = (spec.name, source, str(torch.device(device)))
    if cache and key in _CACHE:
        return _CACHE[key]
    backbone = build_from_spec(spec, source).to(device)
    if cache:
        _CACHE[key] = backbone
    return backbone


def build_backbone_from_cfg(cfg, device=None, **kwargs):
    """``build_backbone`` from ``cfg.MODEL.BACKBONE.NAME`` / ``.PATH`` / ``.PRETRAINED``; CUDA when
    available and ``cfg.USE_CUDA`` (Dassl's key) is not False."""
    if device is None:
        use_cuda = bool(getattr(cfg, "USE_CUDA", True)) and torch.cuda.is_available()
        device = "cuda" if use_cuda else "cpu"
    backbone_cfg = cfg.MODEL.BACKBONE
    kwargs.setdefault("pretrained", bool(getattr(backbone_cfg, "PRETRAINED", True)))
    return build_backbone(backbone_cfg.NAME, getattr(backbone_cfg, "PATH", ""), device, **kwargs)


def clear_backbone_cache():
    """Drops every cached backbone (frees their memory once no one else holds them)."""
    _CACHE.clear()


def save_backbone(backbone, directory):
    """Writes the weights (and a WordPiece ``vocab.txt``) so ``build_backbone(name, directory)``
    loads them back offline."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / backbone.weights_file_name
    partial = target.with_name(target.name + ".partial")
    torch.save(backbone.model.state_dict(), partial)
    os.replace(partial, target)  # a crash never leaves a truncated file under the real name
    if hasattr(backbone.tokenizer, "save_vocab"):
        backbone.tokenizer.save_vocab(directory)
    return target
