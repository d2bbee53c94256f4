"""One vMFCoOp training step the project's way vs the reference way, on the real-size backbone.

The backbone is the real BiomedCLIP architecture with deterministic random weights (speed does not
depend on the weight values); the data is SyntheticMed (4 classes), K=1, batch 4. Both variants run
the real trainer's ``forward_backward`` (ViT-B/16 on the 4 images, text forward+backward of the 4
class prompts into the learned context, SCE + L_anc + L_sc, SGD step) on the same trainer and batch:

- project:   learned prompts trimmed to the longest real prompt; the anchors (LLM prompt-bank fields
             and the vocabulary field) computed once, kept in memory, and disk-cached across runs.
- reference: every text input padded to the context length (256), as BiomedCoOp's tokenizer does
             (``padding='max_length'``; the mask hides the pads, so features are unchanged), and
             no disk cache, so a run recomputes its fixed text features (once per run, as BiomedCoOp
             does in ``__init__``; not per step).

Repetitions alternate the two variants after a warm-up of each, so both see the same machine load;
medians and their ratio are printed. Then the per-run fixed text work (the anchors) is timed: the
project's first run (cache miss) and later runs (cache hit) are measured in full; the reference
cost is extrapolated from a measured sample. Last, the one-off cost of the vocabulary field of the
real BiomedCLIP vocabulary (about 30.5k tokens; the random-weights build's filtered vocabulary has
only ~240 real tokens, the rest being [unused] fillers) is extrapolated from one measured batch.

    python benchmarks/bench_train_step.py [--device auto|cpu|cuda] [--repeats 5] [--threads 2]
"""
import argparse
import contextlib
import statistics
import time

import common
import torch

PROJECT_TEXT = ("learned prompts trimmed to the longest real prompt (L={trim}); anchors cached on disk, "
                "loaded once per run")
REFERENCE_TEXT = ("every text input padded to the context length (L={pad}) as BiomedCoOp does; no disk "
                  "cache: fixed text features recomputed once per run")
VARIANTS = {"project": (contextlib.nullcontext, PROJECT_TEXT),
            "reference": (common.text_padded_to_context, REFERENCE_TEXT)}


def build_trainer(root, out, cache_dir, device):
    from vmfcoop.engine.build import build_trainer as build
    from vmfcoop.engine.cli import build_parser, setup_cfg
    from vmfcoop.engine.utils import set_random_seed

    argv = common.trainer_argv("VMFCoOp", root, out, seed=1, shots=1, device=device, cache_dir=cache_dir,
                               extra=["DATALOADER.TRAIN_X.BATCH_SIZE", "4"])
    cfg = setup_cfg(build_parser().parse_args(argv))
    set_random_seed(1)
    with common.quiet(f"{out}.log"):
        return build(cfg)


def measure_steps(trainer, batch, device, repeats, warmup):
    """Median seconds per step, image-encoder images per step and peak memory, per variant."""
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 10 ** 9  # never the epoch's last batch
    times = {name: [] for name in VARIANTS}
    memory = {name: common.PeakMemory(device) for name in VARIANTS}
    images = {}
    for repeat in range(warmup + repeats):
        for name, (context, _) in VARIANTS.items():
            trainer.set_model_mode("train")
            with context(trainer.backbone), common.ImagePasses(trainer.backbone) as passes, \
                    common.PeakMemory(device) as peak:
                seconds, _ = common.timed(lambda: trainer.forward_backward(batch), device)
            images[name] = passes.images
            if repeat >= warmup:
                times[name].append(seconds)
                memory[name].merge(peak)
    return {name: statistics.median(values) for name, values in times.items()}, images, memory


def fit_anchors(trainer, log_path):
    """Fit the anchors now (from the cache when the setup was measured): in memory for both variants,
    as during a run after its first step."""
    with common.quiet(log_path):
        return trainer.anchors


def prompt_lengths(trainer):
    mask = trainer.learner.prompt_learner.attention_mask
    return int(mask.sum(1).max()), trainer.backbone.context_length


def check_same_features(trainer):
    """Max |difference| between the trimmed and the padded learned-prompt features."""
    with torch.no_grad():
        trimmed = trainer.learned_text_features()
        with common.text_padded_to_context(trainer.backbone):
            padded = trainer.learned_text_features()
    return float((trimmed - padded).abs().max())


def evenly_spaced(items, count):
    step = max(len(items) // count, 1)
    return items[::step][:count]


def measure_anchor_setup(trainer, device, sample_sentences, sample_tokens):
    """Seconds of the per-run fixed text work (anchors): project cold and warm, reference estimated."""
    from vmfcoop.datasets.prompt_bank import load_prompt_bank_from_cfg
    from vmfcoop.trainers.anchors import (
        anchor_geometry_from_cfg,
        filter_vocabulary,
        mean_vocabulary_feature,
        template_frame,
    )
    from vmfcoop.trainers.text_features import encode_sentences

    cfg, backbone, node = trainer.cfg, trainer.backbone, trainer.method_cfg

    def geometry(config):
        return anchor_geometry_from_cfg(config, backbone, trainer.classnames, node, progress=False)

    cold, _ = common.timed(lambda: geometry(cfg), device)  # fresh cache folder: a miss
    warm, _ = common.timed(lambda: geometry(cfg), device)  # served from disk

    banks = load_prompt_bank_from_cfg(cfg, trainer.classnames)
    sentences = [s for bank in banks.values() for name in trainer.classnames for s in bank[name]]
    vocab_ids, _ = filter_vocabulary(*backbone.vocabulary(), node.VOCAB_FILTER)
    head, tail = template_frame(backbone, node.VOCAB_TEMPLATE)
    sentence_sample = evenly_spaced(sentences, sample_sentences)
    token_sample = evenly_spaced(vocab_ids, sample_tokens)
    with common.text_padded_to_context(backbone):
        t_sentences, _ = common.timed(lambda: encode_sentences(backbone, sentence_sample), device)
        t_tokens, _ = common.timed(lambda: mean_vocabulary_feature(backbone, token_sample, head, tail,
                                                                   progress=False), device)
    reference = (t_sentences * len(sentences) / len(sentence_sample)
                 + t_tokens * len(vocab_ids) / len(token_sample))
    counts = {"sentences": len(sentences), "tokens": len(vocab_ids), "sentence_sample": len(sentence_sample),
              "token_sample": len(token_sample)}
    return {"cold": cold, "warm": warm, "reference": reference, "counts": counts,
            "reference_parts": (t_sentences, t_tokens)}


def measure_full_vocabulary(backbone, device, full_size, trimmed_batch, padded_batch):
    """Seconds per token of the vocabulary field, trimmed (L=3, batch ``trimmed_batch``) and padded."""
    from vmfcoop.trainers.anchors import mean_vocabulary_feature, template_frame

    head, tail = template_frame(backbone, "{}")
    ids, _ = backbone.vocabulary()

    def per_token(count):
        sample = [ids[i % len(ids)] for i in range(count)]
        seconds, _ = common.timed(lambda: mean_vocabulary_feature(backbone, sample, head, tail, batch_size=count,
                                                                  progress=False), device)
        return seconds, seconds / count

    trimmed = per_token(trimmed_batch)
    with common.text_padded_to_context(backbone):
        padded = per_token(padded_batch)
    return {"trimmed": trimmed, "padded": padded, "full_size": full_size,
            "batches": (trimmed_batch, padded_batch)}


def duration(seconds):
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first (default 1)")
    parser.add_argument("--sample-sentences", type=int, default=8,
                        help="prompt-bank sentences encoded padded to estimate the reference setup (default 8)")
    parser.add_argument("--sample-tokens", type=int, default=8,
                        help="vocabulary tokens encoded padded to estimate the reference setup (default 8)")
    parser.add_argument("--full-vocab", type=int, default=30517,
                        help="real vocabulary size for the one-off field estimate (BiomedBERT: 30522 - 5 specials)")
    parser.add_argument("--vocab-batch", type=int, default=512, help="tokens in the measured trimmed batch")
    parser.add_argument("--skip-setup", action="store_true", help="time only the training step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = common.resolve_device(args.device)
    started = time.perf_counter()

    with common.work_dir(args.work_dir) as work:
        words = common.prompt_words()
        backbone, build_seconds = common.install_random_backbone(args.backbone, device, words)
        trainer = build_trainer(f"{work}/data", f"{work}/out", f"{work}/cache", device)
        batch = next(iter(trainer.train_loader_x))
        trim, pad = prompt_lengths(trainer)
        setup = None if args.skip_setup else measure_anchor_setup(trainer, device, args.sample_sentences,
                                                                  args.sample_tokens)
        fit_anchors(trainer, f"{work}/out.log")
        diff = check_same_features(trainer)
        medians, images, memory = measure_steps(trainer, batch, device, args.repeats, args.warmup)
        vocab = None if args.skip_setup else measure_full_vocabulary(
            backbone, device, args.full_vocab, args.vocab_batch, args.sample_tokens)

    print(f"vMFCoOp training step: {args.backbone} (real size, random weights, built in {build_seconds:.1f} s), "
          f"SyntheticMed 4 classes, K=1, batch {batch['img'].shape[0]}; {common.describe_machine(device, args.threads)}")
    print(f"Tokenizer: the random build's vocabulary plus the {len(words)} words of SyntheticMed's class names and "
          "prompts, one token each as in BiomedBERT (realistic prompt lengths).")
    print("Step = the trainer's forward_backward: ViT on the batch, text forward+backward of the 4 class prompts "
          "into the learned context, SCE + L_anc + L_sc, SGD step (same trainer, same batch for both).")
    for name, (_, text) in VARIANTS.items():
        print(f"  {name:<9} {text.format(trim=trim, pad=pad)}")
    print(f"Per step, median of {args.repeats} after {args.warmup} warm-up (variants alternate):")
    for name in VARIANTS:
        print(f"  {name:<9} {medians[name] * 1000:9.1f} ms   images encoded per step {images[name]}   "
              f"{memory[name].describe()}")
    print(f"  reference / project: {common.ratio(medians['reference'], medians['project'])}   "
          f"(prompt features padded vs trimmed: max |diff| {diff:.1e})")
    if setup:
        c = setup["counts"]
        t_sent, t_tok = setup["reference_parts"]
        print(f"Per-run fixed text work (vMF anchors: {c['sentences']} prompt-bank sentences + "
              f"{c['tokens']} vocabulary tokens of this build):")
        print(f"  project, first run (cache miss, trimmed)   {setup['cold']:9.2f} s  measured")
        print(f"  project, later runs (cache hit)            {setup['warm']:9.2f} s  measured")
        print(f"  reference, every run (no cache, padded)    {setup['reference']:9.2f} s  estimated: "
              f"{c['sentence_sample']} sentences in {t_sent:.2f} s, {c['token_sample']} tokens in {t_tok:.2f} s, "
              f"scaled to the counts above")
        print(f"  reference / project later runs: {common.ratio(setup['reference'], setup['warm'])}; "
              f"reference / project first run: {common.ratio(setup['reference'], setup['cold'])}")
    if vocab:
        (t_trim, per_trim), (t_pad, per_pad) = vocab["trimmed"], vocab["padded"]
        n_trim, n_pad = vocab["batches"]
        full = vocab["full_size"]
        print(f"One-off vocabulary field of the real BiomedCLIP vocabulary ({full} tokens, cached per backbone):")
        print(f"  trimmed, L=3        ~{duration(per_trim * full):>9}  (measured {n_trim} tokens in {t_trim:.2f} s)")
        print(f"  padded to L={pad:<4}    ~{duration(per_pad * full):>9}  (measured {n_pad} tokens in {t_pad:.2f} s)")
    print(f"Process peak RSS (ru_maxrss): {common.process_peak_rss_mib():.0f} MiB; "
          f"total benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
