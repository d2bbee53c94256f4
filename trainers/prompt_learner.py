"""The learnable text prompt shared by every CoOp-family trainer.

A prompt is ``[start] ctx_1 .. ctx_M <class tokens> . [end]`` (class token position "end"), or with the
class name in the middle of / in front of the context. The context vectors live in the backbone's
input token-embedding space; everything class-dependent is a non-persistent buffer, so checkpoints
hold only what was learned and a model trained on base classes loads for new classes.
"""
import torch
from torch import nn

POSITIONS = ("end", "middle", "front")


def context_init_vectors(backbone, n_ctx, ctx_init, generator=None):
    """Initial context: token embeddings of ``ctx_init`` when it has ``n_ctx`` tokens, else N(0, 0.02).

    With a shorter init phrase the phrase fills the last slots (right-aligned) and the others are
    random, so "a photo of a" still reads naturally before the class name.
    """
    vectors = torch.empty(n_ctx, backbone.ctx_dim).normal_(0.0, 0.02, generator=generator)
    if ctx_init:
        ids, mask = backbone.tokenize([ctx_init])
        start = backbone.start_token_count
        words = ids[0, start:int(mask[0].sum()) - 1]
        with torch.no_grad():
            embedded = backbone.token_embedding(words[None])[0].float().cpu()
        take = min(n_ctx, embedded.shape[0])
        vectors[n_ctx - take:] = embedded[:take]
    return vectors


def class_token_lengths(backbone, classnames):
    """Number of tokens each class name occupies (multi-token names included)."""
    _, mask = backbone.tokenize(list(classnames))
    return (mask.sum(1) - 2).tolist()  # minus the start and end tokens


class PromptLearner(nn.Module):
    """Learned context vectors spliced into per-class prompt embeddings.

    ``forward(bias=None)`` returns ``(embeds [C, L, D], mask [C, L])``; ``bias`` (``[B, D]``, CoCoOp's
    meta-net output) shifts every context token per image and gives ``[B, C, L, D]``.
    """

    def __init__(self, backbone, classnames, n_ctx=4, ctx_init="a photo of a", csc=False, position="end"):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"CLASS_TOKEN_POSITION must be one of {POSITIONS}, got {position!r}")
        if n_ctx < 1:
            raise ValueError(f"N_CTX must be >= 1, got {n_ctx}")
        self.n_cls, self.n_ctx, self.position = len(classnames), n_ctx, position
        self.classnames = list(classnames)
        init = context_init_vectors(backbone, n_ctx, ctx_init)
        self.ctx = nn.Parameter(init.repeat(self.n_cls, 1, 1) if csc else init)
        self.csc = csc

        placeholder = " ".join(["X"] * n_ctx)
        ids, mask = backbone.tokenize([f"{placeholder} {name}." for name in classnames])
        with torch.no_grad():
            embeds = backbone.token_embedding(ids).float()
        self.start = backbone.start_token_count
        self.name_lens = class_token_lengths(backbone, classnames)
        self.register_buffer("token_embeds", embeds, persistent=False)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("attention_mask", mask, persistent=False)

    def context(self):
        """``[C, M, D]`` context per class."""
        return self.ctx if self.csc else self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)

    def forward(self, bias=None):
        ctx = self.context()
        if bias is not None:
            ctx = ctx.unsqueeze(0) + bias[:, None, None, :]  # [B, C, M, D]
            embeds = torch.stack([self.splice(c) for c in ctx])
            return embeds, self.attention_mask
        return self.splice(ctx), self.attention_mask

    def splice(self, ctx):
        """Insert ``ctx [C, M, D]`` into the class prompts at the configured position."""
        s, m, emb = self.start, self.n_ctx, self.token_embeds.to(ctx.dtype)
        prefix, after_ctx = emb[:, :s], emb[:, s + m:]
        if self.position == "end":
            return torch.cat([prefix, ctx, after_ctx], dim=1)
        rows = []
        half = m // 2
        for i, n in enumerate(self.name_lens):
            name, rest = after_ctx[i:i + 1, :n], after_ctx[i:i + 1, n:]
            if self.position == "middle":
                parts = [prefix[i:i + 1], ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], rest]
            else:  # front
                parts = [prefix[i:i + 1], name, ctx[i:i + 1], rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)
