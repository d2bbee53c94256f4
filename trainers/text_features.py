"""Frozen text features of fixed sentences: templates and LLM prompt banks (computed once, trimmed)."""
import torch
from torch.nn import functional as F
from vmfcoop.engine.cache import text_digest
from vmfcoop.engine.utils import tolist_if_not


def encode_sentences(backbone, sentences, batch_size=256, normalize=True, cache=None):
    """``[N, d]`` features; each batch is padded only to its own longest sentence.

    With a :class:`~vmfcoop.engine.cache.FeatureCache` the result is computed once per (backbone weights,
    sentences) and reused by every later run.
    """
    sentences = tolist_if_not(sentences)
    if cache is None:
        return _encode_sentences(backbone, sentences, batch_size, normalize)
    key = {"kind": "text", "backbone": backbone.name, "fingerprint": backbone.fingerprint(),
           "texts": text_digest(sentences), "count": len(sentences), "normalize": normalize}
    device = next(backbone.parameters()).device
    return cache.get_or_compute(key, lambda: _encode_sentences(backbone, sentences, batch_size, normalize).cpu()).to(device)


@torch.no_grad()
def _encode_sentences(backbone, sentences, batch_size, normalize):
    """Sentences are sorted by length first so batches hold similar lengths (less padding)."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = [None] * len(sentences)
    device = next(backbone.parameters()).device
    for begin in range(0, len(order), batch_size):
        chunk = order[begin:begin + batch_size]
        ids, mask = backbone.tokenize([sentences[i] for i in chunk])
        feats = backbone.encode_text(ids.to(device), mask.to(device)).float()
        if normalize:
            feats = F.normalize(feats, dim=-1)
        for row, index in enumerate(chunk):
            out[index] = feats[row]
    return torch.stack(out)


def template_features(backbone, classnames, template="a photo of a {}.", cache=None):
    """``[C, d]`` normalised features of one hand-crafted template per class."""
    return encode_sentences(backbone, [template.format(name) for name in classnames], cache=cache)


def prompt_bank_features(backbone, classnames, bank, cache=None):
    """``[C, P, d]`` normalised features of an LLM prompt bank ``{classname: [P sentences]}``."""
    counts = {len(bank[name]) for name in classnames}
    if len(counts) != 1:
        raise ValueError(f"Every class needs the same number of prompts; got {sorted(counts)}")
    flat = [sentence for name in classnames for sentence in bank[name]]
    return encode_sentences(backbone, flat, cache=cache).view(len(classnames), counts.pop(), -1)


def llm_prompt_features(cfg, backbone, classnames, cache=None):
    """``[C, P, d]``: the configured LLM prompt banks (DATASET.PROMPTS), sources concatenated along P."""
    from vmfcoop.datasets.prompt_bank import load_prompt_bank_from_cfg

    banks = load_prompt_bank_from_cfg(cfg, classnames)
    return torch.cat([prompt_bank_features(backbone, classnames, bank, cache) for bank in banks.values()], dim=1)
