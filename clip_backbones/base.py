"""``ClipBackbone``: the one frozen-backbone interface every trainer is written against.

Subclasses wrap a concrete model and supply four pieces: the token-embedding layer, the text
forward from token ids, the text forward from input embeddings, and the image forward.
Everything else (freezing, eval mode, trimming of padding, tokenisation, preprocessing, the
weights fingerprint) lives here once.
"""
import hashlib

import torch
from torch import nn

from .preprocess import build_eval_transform


def trim_to_longest(mask, *tensors):
    """Cuts right padding: keeps the first ``max(mask.sum(1))`` positions of every tensor."""
    length = int(mask.sum(1).max())
    return [t[:, :length] for t in tensors]


def fingerprint_state_dict(state_dict, extra=b""):
    """sha256 over every tensor's name, dtype, shape and bytes (about 0.5 s for 800 MB)."""
    digest = hashlib.sha256(extra)
    for name in sorted(state_dict):
        tensor = state_dict[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


class ClipBackbone(nn.Module):
    """A frozen CLIP-style model: tokenizer, text and image encoders, and preprocessing facts.

    Features are returned un-normalised. Text inputs are right-padded ``(ids, mask)`` pairs whose
    padding is trimmed to the longest real sequence before any forward pass; trimming gives the
    same features as padding (the mask hides the pad tokens) at a fraction of the cost.
    """

    family = ""  # "bert" or "clip": which kind of text tower (and token-embedding space)
    start_token_count = 1  # [CLS] or <start_of_text> precede the text; learned context goes after
    weights_file_name = "open_clip_pytorch_model.bin"  # what save_backbone writes

    def __init__(self, name, model, tokenizer, image_spec, joint_dim, ctx_dim):
        super().__init__()
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.image_spec = image_spec
        self.joint_dim = int(joint_dim)
        self.ctx_dim = int(ctx_dim)
        self.preprocess = build_eval_transform(image_spec)
        self._fingerprint = None  # (tensor versions, hash) of the last computation
        self.requires_grad_(False)
        self.train(False)

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode=True):
        """Stays in eval mode whatever a wrapping trainer asks: the backbone is frozen, and BERT's
        dropout would otherwise make two passes over the same prompt differ."""
        return super().train(False)

    @property
    def device(self):
        return next(self.parameters()).device

    # -- preprocessing facts ---------------------------------------------------------------
    @property
    def context_length(self):
        return self.tokenizer.context_length

    @property
    def image_size(self):
        return self.image_spec.size

    @property
    def image_mean(self):
        return list(self.image_spec.mean)

    @property
    def image_std(self):
        return list(self.image_spec.std)

    @property
    def interpolation(self):
        return self.image_spec.interpolation

    # -- tokens ----------------------------------------------------------------------------
    def tokenize(self, texts):
        """``(ids, mask)``, LongTensors ``[N, L]`` on the backbone's device; ``L`` is the longest
        prompt of this batch, truncated at ``context_length``."""
        if isinstance(texts, str):
            texts = [texts]
        ids, mask = self.tokenizer(texts)
        return ids.to(self.device), mask.to(self.device)

    @property
    def special_token_ids(self):
        return set(self.tokenizer.special_token_ids)

    @property
    def pad_token_id(self):
        return self.tokenizer.pad_token_id

    def vocabulary(self):
        """``(ids, tokens)`` of the whole vocabulary minus the tokenizer's special tokens."""
        return self.tokenizer.vocabulary()

    def token_embedding(self, ids):
        """Input token embeddings ``[N, L, ctx_dim]`` (no positions): where learned context lives."""
        return self.token_embedding_layer()(ids)

    # -- encoders --------------------------------------------------------------------------
    def encode_text(self, ids, mask, trim=True):
        """``[N, joint_dim]`` text features from token ids (not normalised)."""
        if trim:
            ids, mask = trim_to_longest(mask, ids, mask)
        return self._encode_ids(ids, mask)

    def encode_prompt(self, embeds, mask, trim=True):
        """``[N, joint_dim]`` features from input embeddings (token embeddings with learned context
        spliced in). ``trim=False`` runs the padded length, for benchmarks and equivalence tests."""
        if trim:
            embeds, mask = trim_to_longest(mask, embeds, mask)
        return self._encode_embeds(embeds, mask)

    def encode_image(self, images):
        """``[B, joint_dim]`` features of preprocessed images (not normalised)."""
        return self.model.encode_image(images)

    @property
    def logit_scale(self):
        """The temperature as a multiplier (already ``exp()``'d), frozen."""
        return self.model.logit_scale.detach().exp()

    # -- subclass hooks --------------------------------------------------------------------
    def token_embedding_layer(self):
        raise NotImplementedError

    def _encode_ids(self, ids, mask):
        raise NotImplementedError

    def _encode_embeds(self, embeds, mask):
        raise NotImplementedError

    # -- identity --------------------------------------------------------------------------
    def fingerprint(self):
        """A 16-hex-digit hash of the name, vocabulary and every weight; stable across builds.

        Cached until any tensor changes in place (tracked by torch's per-tensor version counters,
        which ``load_state_dict`` and optimiser steps bump)."""
        state = self.model.state_dict()
        versions = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
        if self._fingerprint is None or self._fingerprint[0] != versions:
            ids, tokens = self.vocabulary()
            identity = f"{self.name}|{len(ids)}|{hash_tokens(tokens)}".encode()
            self._fingerprint = (versions, fingerprint_state_dict(state, extra=identity))
        return self._fingerprint[1]

    def extra_repr(self):
        return (f"name={self.name!r}, family={self.family!r}, joint_dim={self.joint_dim}, "
                f"ctx_dim={self.ctx_dim}, context_length={self.context_length}")


def hash_tokens(tokens):
    return hashlib.sha256("\n".join(tokens).encode()).hexdigest()[:16]
