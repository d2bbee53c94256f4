"""A methods x seeds sweep with and without the feature cache: wall time, image-encoder passes, memory.

Each run is one few-shot training run (1 epoch by default, then the test split) on SyntheticMed
(4 classes; K=1: 4 training images; 24 test images) with the real-size backbone and random weights,
started in-process through ``vmfcoop.engine.cli.main`` exactly as ``vmfcoop-train`` runs it. The
sweep runs twice, each variant in its own child process, one after the other, so each process's
``ru_maxrss`` is its own; the backbone is built once per process (the backbone module cache), as an
in-process sweep does. A sweep of subprocesses (``tools/compare.py``) additionally pays imports and
the backbone load (~10 s on 2 CPU cores) per run in both variants.

- cached:   CACHE.ENABLED True with a fresh CACHE.DIR: test-split image features, template and
            prompt-bank text features and the vocabulary field are computed by the first run that
            needs them and read from disk by the others.
- uncached: CACHE.ENABLED False: every run computes all of them again.

Text is trimmed in both (the cache alone is compared). Image-encoder passes are counted by
wrapping the backbone's ``encode_image`` (images in); training images go through it every step in
both variants. Per run: wall time, images encoded, peak resident memory during the run (sampled)
and, on CUDA, ``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_sweep.py [--device auto|cpu|cuda] [--methods ZeroShot,CoOp,...] [--seeds 1,2,3]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import common
import torch

VARIANTS = {"cached": True, "uncached": False}
DEFAULT_METHODS = "ZeroShot,CoOp,KgCoOp,ProGrad,BiomedCoOp,VMFCoOp"


def comma_list(text, cast=str):
    return [cast(item) for item in text.split(",") if item.strip()]


def training_free(trainer_name):
    """Zero-shot trainers only evaluate (MAX_EPOCH 0 in their configs)."""
    from vmfcoop.engine import TRAINER_REGISTRY
    from vmfcoop.trainers.zeroshot import ZeroShot

    return issubclass(TRAINER_REGISTRY.get(trainer_name), ZeroShot)


class CacheCounter:
    """Counts feature-cache hits and misses of every FeatureCache (trainers make their own) while installed."""

    def __init__(self):
        self.hits = self.misses = 0

    def __enter__(self):
        from vmfcoop.engine.cache import FeatureCache

        self._class, self._original = FeatureCache, FeatureCache.get_or_compute
        counter, original = self, self._original

        def counted(cache, key, compute):
            hits, misses = cache.hits, cache.misses
            value = original(cache, key, compute)
            counter.hits += cache.hits - hits
            counter.misses += cache.misses - misses
            return value

        FeatureCache.get_or_compute = counted
        return self

    def __exit__(self, *exc):
        self._class.get_or_compute = self._original


def prepare_dataset(root, device):
    """Generate SyntheticMed under ``root`` before any timing."""
    from vmfcoop.engine import DataManager
    from vmfcoop.engine.cli import build_parser, setup_cfg

    argv = common.trainer_argv("ZeroShot", root, os.path.join(root, "prepare"), seed=1, shots=1, device=device)
    with common.quiet(os.path.join(root, "prepare.log")):
        DataManager(setup_cfg(build_parser().parse_args(argv)))


def one_run(backbone, argv, output_dir, device):
    """Run the training CLI in this process; return its measurements."""
    from vmfcoop.engine.cli import main as train_main

    log_path = output_dir + ".log"
    with common.ImagePasses(backbone) as passes, CacheCounter() as cache, common.PeakMemory(device) as peak, \
            common.quiet(log_path):
        seconds, code = common.timed(lambda: train_main(argv), device)
    if code != 0:
        sys.exit(f"error: a run failed (exit code {code}); see {log_path} and {output_dir}/log.txt")
    with open(os.path.join(output_dir, "results.json")) as f:
        accuracy = json.load(f)["metrics"]["accuracy"]
    return {"seconds": seconds, "images": passes.images, "hits": cache.hits, "misses": cache.misses,
            "rss_mib": peak.rss_mib, "cuda_mib": peak.cuda_mib, "accuracy": accuracy}


def run_variant(variant, args, device):
    """The whole sweep for one variant in this process (the child); returns a JSON-able summary."""
    started = time.perf_counter()
    backbone, _ = common.install_random_backbone(args.backbone, device, common.prompt_words())
    base = os.path.join(args.work_dir, variant)
    root, cache_dir = os.path.join(base, "data"), os.path.join(base, "cache")
    prepare_dataset(root, device)
    setup_seconds = time.perf_counter() - started
    extra_opts = ["DATASET.PROMPTS.N_PROMPTS", str(args.n_prompts)]
    rows = []
    total = len(args.methods) * len(args.seeds)
    for method in args.methods:
        epochs = [] if training_free(method) else ["OPTIM.MAX_EPOCH", str(args.epochs)]
        for seed in args.seeds:
            output_dir = os.path.join(base, "output", method, f"seed{seed}")
            argv = common.trainer_argv(method, root, output_dir, seed, args.shots, device, cache_dir=cache_dir,
                                       cache=VARIANTS[variant], extra=extra_opts + epochs)
            row = dict(one_run(backbone, argv, output_dir, device), method=method, seed=seed)
            rows.append(row)
            print(f"[{variant} {len(rows)}/{total}] {method} seed {seed}: {row['seconds']:.2f} s, "
                  f"{row['images']} images encoded", file=sys.stderr, flush=True)
    if not VARIANTS[variant] and os.path.exists(cache_dir):
        sys.exit(f"error: the uncached sweep wrote to {cache_dir}; CACHE.ENABLED False is not honoured")
    return {"variant": variant, "rows": rows, "setup_seconds": setup_seconds,
            "ru_maxrss_mib": common.process_peak_rss_mib()}


def child_command(variant, args, device, json_path):
    return [sys.executable, os.path.abspath(__file__), "--child", variant, "--json", json_path,
            "--work-dir", args.work_dir, "--device", device.type, "--threads", str(args.threads),
            "--backbone", args.backbone, "--methods", ",".join(args.methods),
            "--seeds", ",".join(map(str, args.seeds)), "--shots", str(args.shots), "--epochs", str(args.epochs),
            "--n-prompts", str(args.n_prompts)]


def memory_cell(row):
    text = f"{row['rss_mib']:.0f}" if row["rss_mib"] is not None else "n/a"
    return text + (f" / {row['cuda_mib']:.0f}" if row["cuda_mib"] is not None else "")


def print_report(results, args, device):
    cached, uncached = results["cached"], results["uncached"]
    on_cuda = device.type == "cuda"
    print(f"Sweep: {len(args.methods)} methods x {len(args.seeds)} seeds = {len(cached['rows'])} runs per variant; "
          f"SyntheticMed (4 classes, K={args.shots}, {args.epochs} epoch(s), 24 test images, "
          f"{args.n_prompts} prompts per class), {args.backbone} real size with random weights; "
          f"{common.describe_machine(device, args.threads)}")
    print("Runs in-process via vmfcoop.engine.cli.main; one child process per variant, run one after the other; "
          "backbone built once per process. Text trimmed in both.")
    print("  cached    CACHE.ENABLED True, fresh CACHE.DIR: frozen features computed once, then read from disk")
    print("  uncached  CACHE.ENABLED False: every run recomputes test-image, text and vocabulary features")
    memory = "peak RSS MiB" + (" / CUDA MiB" if on_cuda else "")
    header = f"{'run':<20} {'cached: s':>9} {'images':>6} {'hit/miss':>8} {memory:>13}  " \
             f"{'uncached: s':>11} {'images':>6} {memory:>13}"
    print(header)
    for a, b in zip(cached["rows"], uncached["rows"]):
        print(f"{a['method'] + ' seed ' + str(a['seed']):<20} {a['seconds']:9.2f} {a['images']:6d} "
              f"{str(a['hits']) + '/' + str(a['misses']):>8} {memory_cell(a):>13}  "
              f"{b['seconds']:11.2f} {b['images']:6d} {memory_cell(b):>13}")
    totals = {}
    for name, result in results.items():
        rows = result["rows"]
        totals[name] = {"seconds": sum(r["seconds"] for r in rows), "images": sum(r["images"] for r in rows)}
    print("Totals                          cached     uncached   uncached/cached")
    for key, label, spec in (("seconds", "wall time of the runs, s", ".1f"), ("images", "image-encoder passes", "d")):
        a, b = totals["cached"][key], totals["uncached"][key]
        print(f"  {label:<26} {a:>10{spec}} {b:>12{spec}}   {common.ratio(b, a):>8}")
    for key, label in (("process_seconds", "child process wall time, s"), ("setup_seconds", "  in it: build + data, s")):
        print(f"  {label:<26} {cached[key]:>10.1f} {uncached[key]:>12.1f}")
    print(f"  {'process peak RSS, MiB':<26} {cached['ru_maxrss_mib']:>10.0f} {uncached['ru_maxrss_mib']:>12.0f}"
          "   (ru_maxrss of each child process)")
    same = sum(a["accuracy"] == b["accuracy"] for a, b in zip(cached["rows"], uncached["rows"]))
    print(f"Same test accuracy with and without the cache: {same}/{len(cached['rows'])} runs")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--methods", type=comma_list, default=comma_list(DEFAULT_METHODS),
                        help=f"trainer names (default {DEFAULT_METHODS})")
    parser.add_argument("--seeds", type=lambda t: comma_list(t, int), default=[1, 2, 3], help="default 1,2,3")
    parser.add_argument("--shots", type=int, default=1, help="K (default 1)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per run (default 1)")
    parser.add_argument("--n-prompts", type=int, default=50,
                        help="LLM prompts per class for BiomedCoOp/VMFCoOp (DATASET.PROMPTS.N_PROMPTS; default 50)")
    parser.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = common.resolve_device(args.device)
    if args.child:
        summary = run_variant(args.child, args, device)
        with open(args.json, "w") as f:
            json.dump(summary, f)
        return
    with common.work_dir(args.work_dir) as work:
        args.work_dir = work
        results = {}
        for variant in VARIANTS:
            json_path = os.path.join(work, f"{variant}.json")
            started = time.perf_counter()
            code = subprocess.call(child_command(variant, args, device, json_path))
            if code != 0:
                sys.exit(f"error: the {variant} sweep failed (exit code {code})")
            with open(json_path) as f:
                results[variant] = dict(json.load(f), process_seconds=time.perf_counter() - started)
        print_report(results, args, device)


if __name__ == "__main__":
    main()
