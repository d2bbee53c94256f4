"""Shared pieces of the benchmarks: an offline real-size backbone with random weights, device and
thread setup, a count of image-encoder passes, reference-style text padding, peak memory, timing.

Importing this module makes Hugging Face libraries offline-only (before vmfcoop imports them), so a
missing file fails at once instead of waiting for network time-outs.
"""
import contextlib
import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch
from torch.nn import functional as F

# Read by huggingface_hub / transformers when first imported (by vmfcoop, later).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


# ---------------------------------------------------------------- command line, device, threads


def add_common_args(parser):
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--backbone", default="BiomedCLIP", help="backbone name (random weights, real size)")
    parser.add_argument("--work-dir", default="",
                        help="folder for data, caches and run outputs (default: a temporary folder, deleted)")


def resolve_device(choice):
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch.cuda.is_available() is False; use --device cpu")
    return torch.device(choice)


def describe_machine(device, threads):
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} torch threads"
    return f"device {device.type} ({where}), torch {torch.__version__}"


@contextlib.contextmanager
def work_dir(path):
    """``path`` (created), or a temporary folder removed afterwards."""
    if path:
        os.makedirs(path, exist_ok=True)
        yield os.path.abspath(path)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vmfcoop-bench-") as tmp:
        yield tmp


# ---------------------------------------------------------------- backbone with random weights


def prompt_words(dataset="SyntheticMed"):
    """Lower-case words of the dataset's class names, its prompt bank and the hand-crafted templates."""
    import re

    import vmfcoop.datasets  # noqa: F401  (registers the datasets)
    from vmfcoop.datasets.prompt_bank import load_prompt_bank
    from vmfcoop.engine.build import DATASET_REGISTRY

    classnames = list(DATASET_REGISTRY.get(dataset).CLASSNAMES)
    texts = classnames + ["a photo of a"]
    for bank in load_prompt_bank(dataset, classnames, n_prompts=None).values():
        texts += [sentence for name in classnames for sentence in bank[name]]
    return sorted({word for text in texts for word in re.findall(r"[a-z]+", text.lower())})


def covering_wordpiece_vocab(size, words):
    """The random-weights build's ``token -> id`` vocabulary with ``words`` in place of its first
    ``[unused]`` fillers, so each of them is one token as common words are in BiomedBERT."""
    from vmfcoop.clip_backbones.tokenizers import synthetic_wordpiece_vocab

    tokens = list(synthetic_wordpiece_vocab(size))
    new = [word for word in words if word not in set(tokens)]
    fillers = [i for i, token in enumerate(tokens) if token.startswith("[unused")][:len(new)]
    if len(fillers) < len(new):
        raise ValueError(f"A vocabulary of {size} tokens has no room for {len(new)} more words")
    for index, word in zip(fillers, new):
        tokens[index] = word
    return {token: i for i, token in enumerate(tokens)}


def install_random_backbone(name, device, words=()):
    """Build ``name`` at real size with deterministic random weights and make every trainer get it.

    Trainers build their backbone from the config with ``build_backbone_from_cfg``, which looks in
    the module-level backbone cache under (name, weights source, device) before fetching weights.
    Registering the random build under the key a default config resolves to (the hub, or
    ``$VMFCOOP_<NAME>_PATH``) means nothing is downloaded or read from disk, and the backbone is
    built once per process. Speed does not depend on the weight values, but it does depend on prompt
    lengths: a random BERT build's vocabulary holds letters and a few words only, so other words
    split into letters (a 15-word sentence becomes ~60 tokens). ``words`` are added to a WordPiece
    vocabulary so they are one token each, as in the real one (CLIP's BPE vocabulary is already real).
    Returns ``(backbone, build seconds)``.
    """
    from vmfcoop.clip_backbones import build_backbone, factory
    from vmfcoop.clip_backbones.tokenizers import WordPieceTokenizer

    start = time.perf_counter()
    backbone = build_backbone(name, device=device, pretrained=False, cache=False)
    seconds = time.perf_counter() - start
    if words and isinstance(backbone.tokenizer, WordPieceTokenizer):  # before anything reads the vocabulary
        size = backbone.token_embedding_layer().num_embeddings
        backbone.tokenizer = WordPieceTokenizer(covering_wordpiece_vocab(size, words), backbone.context_length)
    spec = factory.get_spec(name)
    factory._CACHE[(spec.name, factory.weights_source(spec), str(torch.device(device)))] = backbone
    if build_backbone(name, device=device) is not backbone:
        raise RuntimeError("benchmarks/common.py: the random-weights backbone did not land in the backbone "
                           "cache of vmfcoop.clip_backbones.factory; update install_random_backbone")
    return backbone, seconds


# ---------------------------------------------------------------- hooks on the backbone


class ImagePasses:
    """Counts images sent through ``backbone.encode_image`` while installed (``with`` block)."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.images = self.calls = 0

    def __enter__(self):
        original = self.backbone.encode_image

        def counted(images):
            self.images += int(images.shape[0])
            self.calls += 1
            return original(images)

        self.backbone.encode_image = counted  # instance attribute: shadows the method
        return self

    def __exit__(self, *exc):
        del self.backbone.encode_image


@contextlib.contextmanager
def text_padded_to_context(backbone):
    """Reference-style text encoding: every text input (token ids or prompt embeddings) is padded to
    the tokenizer's context length (256 for BiomedCLIP) and run at that length, as BiomedCoOp's
    ``padding='max_length'`` tokenizer does. The attention mask hides the pads, so the features are
    the same as the project's trimmed ones; only the cost differs."""
    encode_text, encode_prompt = backbone.encode_text, backbone.encode_prompt
    length, pad_id = backbone.context_length, backbone.pad_token_id

    def pad_mask(mask):
        return F.pad(mask, (0, length - mask.shape[-1]), value=0)

    def padded_text(ids, mask, trim=True):
        return encode_text(F.pad(ids, (0, length - ids.shape[-1]), value=pad_id), pad_mask(mask), trim=False)

    def padded_prompt(embeds, mask, trim=True):
        pad_ids = torch.full((*embeds.shape[:-2], length - embeds.shape[-2]), pad_id, device=embeds.device)
        pads = backbone.token_embedding(pad_ids).to(embeds.dtype)
        return encode_prompt(torch.cat([embeds, pads], dim=-2), pad_mask(mask), trim=False)

    backbone.encode_text, backbone.encode_prompt = padded_text, padded_prompt
    try:
        yield
    finally:
        del backbone.encode_text, backbone.encode_prompt


# ---------------------------------------------------------------- memory and time


def process_peak_rss_mib():
    """``ru_maxrss`` of this process: its resident-memory high-water mark since it started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def current_rss_mib():
    """Resident memory now (Linux /proc), or None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory inside a ``with`` block: resident memory sampled every ``interval`` seconds by a
    thread (ru_maxrss cannot be reset, so a block that stays below an earlier peak would not show),
    and ``torch.cuda.max_memory_allocated`` after a reset when ``device`` is CUDA."""

    def __init__(self, device, interval=0.01):
        self.device, self.interval = torch.device(device), interval
        self.rss_mib = self.cuda_mib = None
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._record(current_rss_mib())

    def _record(self, value):
        if value is not None:
            self.rss_mib = value if self.rss_mib is None else max(self.rss_mib, value)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._record(current_rss_mib())
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_mib = torch.cuda.max_memory_allocated(self.device) / MIB
        self._stop.set()
        self._thread.join()
        self._record(current_rss_mib())

    def merge(self, other):
        """Keep the larger peaks of ``self`` and ``other`` (one variant measured over several blocks)."""
        self._record(other.rss_mib)
        if other.cuda_mib is not None:
            self.cuda_mib = max(self.cuda_mib or 0.0, other.cuda_mib)
        return self

    def describe(self):
        parts = [f"peak RSS {self.rss_mib:.0f} MiB" if self.rss_mib is not None else "peak RSS n/a"]
        if self.cuda_mib is not None:
            parts.append(f"CUDA max allocated {self.cuda_mib:.0f} MiB")
        return ", ".join(parts)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """``(seconds, result)`` of ``fn()``, with CUDA work finished on both ends."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


# ---------------------------------------------------------------- training runs


def trainer_argv(trainer, root, output_dir, seed, shots, device, cache_dir="", cache=True, extra=()):
    """CLI arguments of one few-shot run on SyntheticMed with the trainer's shipped config."""
    configs = REPO_ROOT / "configs"
    return ["--root", root, "--output-dir", output_dir, "--seed", str(seed), "--trainer", trainer,
            "--config-file", str(configs / "trainers" / trainer / "few_shot" / "default.yaml"),
            "--dataset-config-file", str(configs / "datasets" / "syntheticmed.yaml"),
            "DATASET.NUM_SHOTS", str(shots), "DATALOADER.NUM_WORKERS", "0",
            "USE_CUDA", str(torch.device(device).type == "cuda"),
            "CACHE.ENABLED", str(cache), "CACHE.DIR", cache_dir, *extra]


@contextlib.contextmanager
def quiet(log_path):
    """Send stdout and stderr (config dumps, progress bars) to ``log_path``."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def ratio(slow, fast):
    return f"{slow / fast:.1f}x" if fast > 0 else "n/a"
