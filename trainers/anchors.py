"""vMFCoOp's anchor geometry: the CLIP semantic anchor field, the LLM semantic prototype fields and the
unified per-class anchors (paper eqs. 2-4), computed once with the frozen backbone and cached.

CLIP field: every vocabulary token (minus special tokens, see ``VOCAB_FILTERS``) is encoded as a
one-token text ``[start] <head> token <tail> [end]`` through the frozen text encoder into the joint
space, L2-normalised, and one vMF is fitted to all of them. Encoding puts the tokens in the same
space as the prompts (the raw input embedding matrix has the wrong width and is not on the sphere).
Only the mean of the normalised features is cached: it is the vMF's sufficient statistic.

LLM fields: per class, a vMF fitted to the encoded prompt-bank sentences. With several sources,
``POOL_SOURCES`` pools every sentence into one fit; otherwise one field per source is fitted and
the fields are averaged by natural parameter (``vmf.mean_natural_parameter``).
"""
import re
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm import tqdm
from vmfcoop.engine.cache import cache_from_cfg, text_digest

from .text_features import prompt_bank_features
from .vmf import angle_degrees, field_from_mean, fit_vmf, mean_natural_parameter, unified_anchor

VOCAB_FILTERS = ("no_special", "words")
BRACKETED_MARKER = re.compile(r"^\[.+\]$|^<\|.+\|>$")  # [unused12], [PAD], <|endoftext|>
BPE_WORD_END = "</w>"


# ---------------------------------------------------------------- vocabulary


def is_whole_word(token, bpe):
    """A complete ASCII alphabetic word: no ``##`` continuation (WordPiece), ends a word (BPE)."""
    if bpe:
        if not token.endswith(BPE_WORD_END):
            return False
        token = token[:-len(BPE_WORD_END)]
    elif token.startswith("##"):
        return False
    return token.isascii() and token.isalpha()


def filter_vocabulary(ids, tokens, mode="no_special"):
    """Vocabulary entries kept for the CLIP field.

    ``no_special``: everything except bracketed markers ([unused*] placeholders and any special
    token the tokenizer did not already drop); sub-word pieces stay. ``words``: whole alphabetic
    words only.
    """
    if mode not in VOCAB_FILTERS:
        raise ValueError(f"TRAINER.VMFCOOP.VOCAB_FILTER must be one of {VOCAB_FILTERS}, got {mode!r}")
    bpe = any(t.endswith(BPE_WORD_END) for t in tokens)
    keep = [(i, t) for i, t in zip(ids, tokens) if not BRACKETED_MARKER.match(t)]
    if mode == "words":
        keep = [(i, t) for i, t in keep if is_whole_word(t, bpe)]
    if not keep:
        raise ValueError(f"The vocabulary filter {mode!r} leaves no tokens")
    return [i for i, _ in keep], [t for _, t in keep]


def template_frame(backbone, template):
    """Token ids around the vocabulary token: ``(head, tail)`` with the start/end tokens included.

    ``template`` holds one ``{}``; "{}" gives ``[start] token [end]``.
    """
    if template.count("{}") != 1:
        raise ValueError(f"TRAINER.VMFCOOP.VOCAB_TEMPLATE needs exactly one '{{}}', got {template!r}")
    head_text, tail_text = (part.strip() for part in template.split("{}"))
    ids, mask = backbone.tokenize(["", head_text, tail_text])
    lengths = mask.sum(1).tolist()
    start = backbone.start_token_count
    n_end = lengths[0] - start
    head = ids[1, :lengths[1] - n_end].tolist()
    tail = ids[2, start:lengths[2]].tolist()
    return head, tail


@torch.no_grad()
def mean_vocabulary_feature(backbone, token_ids, head, tail, batch_size=1024, progress=True):
    """Mean (float64 ``[d]``) of the normalised joint-space features of every ``head + [id] + tail``."""
    device = backbone.device
    total = torch.zeros(backbone.joint_dim, dtype=torch.float64, device=device)
    head_t, tail_t = torch.tensor(head, device=device), torch.tensor(tail, device=device)
    starts = range(0, len(token_ids), batch_size)
    for begin in tqdm(starts, desc=f"vocabulary field ({backbone.name})", disable=not progress,
                      unit="batch", dynamic_ncols=True):
        chunk = torch.tensor(token_ids[begin:begin + batch_size], device=device)[:, None]
        ids = torch.cat([head_t.expand(len(chunk), -1), chunk, tail_t.expand(len(chunk), -1)], dim=1)
        feats = backbone.encode_text(ids, torch.ones_like(ids)).float()
        total += F.normalize(feats, dim=-1).double().sum(0)
    return (total / len(token_ids)).cpu()


# ---------------------------------------------------------------- fields


@dataclass
class AnchorGeometry:
    """The fitted fields and the unified anchors ``[C, d]`` (float32, unit rows)."""

    clip_field: object
    llm_fields: list
    anchors: torch.Tensor

    @property
    def llm_means(self):
        return torch.stack([f.mu for f in self.llm_fields]).float()

    @property
    def llm_kappas(self):
        return [f.kappa for f in self.llm_fields]


def llm_fields_from_features(features_by_source, pool_sources=True, **fit_options):
    """One vMF per class from ``{source: [C, P, d]}`` prompt features (pooled or source-averaged)."""
    if pool_sources:
        pooled = torch.cat(list(features_by_source.values()), dim=1)
        return [fit_vmf(pooled[c], **fit_options) for c in range(pooled.shape[0])]
    per_source = [[fit_vmf(f[c], **fit_options) for c in range(f.shape[0])] for f in features_by_source.values()]
    return [mean_natural_parameter(list(fields)) for fields in zip(*per_source)]


def unified_anchors(clip_field, llm_fields):
    return torch.stack([unified_anchor(clip_field, field) for field in llm_fields]).float()


def geometry_summary(geometry):
    """Numbers worth logging: kappas, anchor-vs-field angles (degrees), mean pairwise anchor cosine."""
    anchors = geometry.anchors
    mu_c = geometry.clip_field.mu.float().expand_as(anchors)
    cos = anchors @ anchors.t()
    n = cos.shape[0]
    off_diagonal = (cos.sum() - cos.diagonal().sum()) / max(n * (n - 1), 1)
    return {
        "kappa_C": geometry.clip_field.kappa,
        "R_C": geometry.clip_field.resultant,
        "vocab_size": geometry.clip_field.count,
        "kappa_L_min": min(geometry.llm_kappas),
        "kappa_L_max": max(geometry.llm_kappas),
        "angle_u_muL": angle_degrees(anchors, geometry.llm_means),
        "angle_u_muC": angle_degrees(anchors, mu_c),
        "anchor_pairwise_cos": float(off_diagonal),
    }


# ---------------------------------------------------------------- from a config (cached)


def clip_semantic_field(cfg, backbone, node, progress=True):
    """The vocabulary vMF of ``backbone`` (cached per backbone weights, filter and template)."""
    ids, tokens = filter_vocabulary(*backbone.vocabulary(), node.VOCAB_FILTER)
    key = {"kind": "vocab-field", "backbone": backbone.name, "fingerprint": backbone.fingerprint(),
           "filter": node.VOCAB_FILTER, "template": node.VOCAB_TEMPLATE, "tokens": text_digest(tokens)}

    def compute():
        head, tail = template_frame(backbone, node.VOCAB_TEMPLATE)
        mean = mean_vocabulary_feature(backbone, ids, head, tail, progress=progress)
        return {"mean": mean, "count": torch.tensor(len(ids))}

    entry = cache_from_cfg(cfg).get_or_compute(key, compute)
    return field_from_mean(entry["mean"], int(entry["count"]), **fit_options_from(node))


def llm_features_by_source(cfg, backbone, classnames):
    """``{source: [C, P, d]}`` normalised prompt-bank features on the CPU (disk-cached per backbone and sentences)."""
    from vmfcoop.datasets.prompt_bank import load_prompt_bank_from_cfg

    cache = cache_from_cfg(cfg)
    return {source: prompt_bank_features(backbone, classnames, bank, cache=cache).cpu()
            for source, bank in load_prompt_bank_from_cfg(cfg, classnames).items()}


def fit_options_from(node):
    return {"estimator": node.KAPPA_ESTIMATOR, "eps": node.KAPPA_EPS, "kappa_max": node.KAPPA_MAX}


def anchor_geometry_from_cfg(cfg, backbone, classnames, node, progress=True):
    clip_field = clip_semantic_field(cfg, backbone, node, progress=progress)
    llm_fields = llm_fields_from_features(llm_features_by_source(cfg, backbone, classnames),
                                          pool_sources=node.POOL_SOURCES, **fit_options_from(node))
    return AnchorGeometry(clip_field, llm_fields, unified_anchors(clip_field, llm_fields))
