"""Tokenizers behind one small interface: ``tokenizer(texts) -> (ids, mask)``.

Both pad on the right to the longest sequence of the batch (never to the context length) and
truncate at the context length keeping the closing special token, so a prompt's real tokens are
always ``ids[i, :mask[i].sum()]`` with the start token at position 0.
"""
import functools
from pathlib import Path

import torch

WORDPIECE_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Words for the vocabulary of randomly initialised BERT towers. Single letters and "##" letters let
# any lower-case word tokenize (into several pieces, like rare medical terms in a real vocabulary),
# so tests see multi-piece class names without any downloaded vocabulary.
_PUNCTUATION = tuple(".,;:!?'\"()[]-/&%+")
_LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
_PROMPT_WORDS = (
    "a", "an", "the", "of", "in", "on", "with", "and", "or", "no", "not", "is", "this", "that",
    "photo", "image", "picture", "scan", "showing", "shows", "type", "x", "ray", "mri", "ct",
    "tumor", "normal", "benign", "malignant", "cell", "cells", "tissue", "brain", "lung", "skin",
    "chest", "colon", "kidney", "retina", "knee", "cancer", "lesion", "disease", "medical",
)
_WORD_PIECES = ("##s", "##al", "##ic", "##ing", "##oma", "##itis", "##osis", "##ary", "##ia")


def wordpiece_word_list():
    """Specials, punctuation, digits, letters and a few prompt words, without duplicates, in order."""
    pieces = ["##" + letter for letter in _LETTERS]
    digits = [str(d) for d in range(10)]
    words = [*WORDPIECE_SPECIAL_TOKENS, *_PUNCTUATION, *digits, *_LETTERS, *pieces,
             *_PROMPT_WORDS, *_WORD_PIECES]
    return list(dict.fromkeys(words))  # duplicates would shadow earlier ids in a vocab


def synthetic_wordpiece_vocab(size):
    """A ``token -> id`` dict of exactly ``size`` entries for a randomly initialised BERT tower."""
    words = wordpiece_word_list()
    if size < len(words):
        raise ValueError(f"A BERT vocabulary of {size} tokens cannot hold the {len(words)} base words")
    fillers = [f"[unused{i}]" for i in range(size - len(words))]
    return {token: i for i, token in enumerate(words + fillers)}


class WordPieceTokenizer:
    """A Hugging Face BERT tokenizer with batch-longest padding and an attention mask."""

    def __init__(self, vocab, context_length, lower_case=True):
        """``vocab`` is a ``vocab.txt`` path or a ``token -> id`` dict."""
        from transformers import BertTokenizer

        if isinstance(vocab, (str, Path)):
            vocab = _read_vocab_txt(vocab)
        # transformers 5 ignores ``vocab_file=`` silently (every id becomes [UNK]); ``vocab=`` works
        self._tokenizer = BertTokenizer(vocab=vocab, do_lower_case=lower_case,
                                        model_max_length=context_length)
        self.context_length = context_length
        self.special_token_ids = set(self._tokenizer.all_special_ids)
        self.pad_token_id = self._tokenizer.pad_token_id

    def __call__(self, texts):
        out = self._tokenizer(list(texts), padding="longest", truncation=True,
                              max_length=self.context_length, return_tensors="pt")
        return out["input_ids"].long(), out["attention_mask"].long()

    def vocabulary(self):
        return _vocabulary_without(self._tokenizer.get_vocab(), self.special_token_ids)

    def save_vocab(self, directory):
        """Writes ``vocab.txt`` (one token per line, line number = id)."""
        by_id = sorted(self._tokenizer.get_vocab().items(), key=lambda item: item[1])
        path = Path(directory) / "vocab.txt"
        path.write_text("".join(token + "\n" for token, _ in by_id), encoding="utf-8")
        return path


def _read_vocab_txt(path):
    """Line number = id, as Hugging Face reads ``vocab.txt`` (a repeated token keeps its last line)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {token: i for i, token in enumerate(lines)}


def _vocabulary_without(token_to_id, excluded_ids):
    pairs = sorted((i, t) for t, i in token_to_id.items() if i not in excluded_ids)
    return [i for i, _ in pairs], [t for _, t in pairs]


@functools.lru_cache(maxsize=1)
def _clip_bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()  # bundled BPE merges: works offline


class ClipBpeTokenizer:
    """OpenAI CLIP's byte-level BPE (open_clip's bundled vocabulary), padded with 0 after <end_of_text>.

    Id 0 is also a real token ("!"), so the mask comes from the sequence lengths, never from the ids.
    """

    def __init__(self, context_length):
        self._bpe = _clip_bpe()
        self.context_length = context_length
        self.special_token_ids = set(self._bpe.all_special_ids)
        self.pad_token_id = 0

    def _encode(self, text):
        tokens = [self._bpe.sot_token_id, *self._bpe.encode(text), self._bpe.eot_token_id]
        if len(tokens) > self.context_length:  # keep <end_of_text> last, as open_clip does
            tokens = tokens[: self.context_length - 1] + [self._bpe.eot_token_id]
        return tokens

    def __call__(self, texts):
        sequences = [self._encode(text) for text in texts]
        longest = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, tokens in enumerate(sequences):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask

    def vocabulary(self):
        return _vocabulary_without(self._bpe.encoder, self.special_token_ids)


def build_tokenizer(tokenizer_cfg, context_length, vocab_size=None, vocab_file=None):
    """The tokenizer named by a model config's ``tokenizer`` block.

    A WordPiece tokenizer reads ``vocab_file`` when given, otherwise it gets a synthetic
    vocabulary of ``vocab_size`` tokens (for randomly initialised towers).
    """
    kind = tokenizer_cfg["kind"]
    if kind == "clip_bpe":
        return ClipBpeTokenizer(context_length)
    if kind == "wordpiece":
        vocab = vocab_file if vocab_file is not None else synthetic_wordpiece_vocab(vocab_size)
        return WordPieceTokenizer(vocab, context_length, lower_case=tokenizer_cfg.get("lower_case", True))
    raise ValueError(f'Unknown tokenizer kind "{kind}" in a model config; use "wordpiece" or "clip_bpe"')
