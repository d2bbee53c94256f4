"""Run methods x datasets x shots x seeds through the training CLI, then aggregate the results into tables.

Usage::

    python -m vmfcoop.tools.compare --methods CoOp,VMFCoOp --datasets btmri,busi --shots 1,2,4,8,16 \\
        --seeds 1,2,3 [--protocol fewshot|base2new] [--root DATA] [--output OUT] [--backbone NAME] \\
        [--tag TAG] [--configs DIR] [--workers N] [--gpus 0,1] [--dry-run] [--opts KEY VALUE ...]

Each run is one subprocess of ``python -m vmfcoop.engine.cli`` (or the command in the environment variable
``VMFCOOP_TRAIN_CMD``, e.g. a wrapper script) in its own output folder:

* few-shot:      OUT/<dataset>/shots_<K>/<Trainer>/<tag>/seed<S>
* base-to-novel: OUT/base2new/train_base/<dataset>/shots_<K>/<Trainer>/<tag>/seed<S> (train on base classes,
  test on base) then OUT/base2new/test_new/... (``--eval-only`` on the new classes, loading the checkpoint
  of the epoch recorded in the training run's results.json).

A run is done when its ``results.json`` exists (the engine writes it atomically as its last step); done runs
are skipped, so rerunning the same command after an interruption completes only the missing runs. A run
folder without results.json (an interrupted run) is renamed to ``seed<S>.incomplete-<time>`` and the run
starts from scratch, so every reported number comes from one uninterrupted run. Output of each run goes to
``<run folder>/run.log``. At the end the tables of every run under OUT are printed and written to OUT/tables/.
"""
import argparse
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import aggregate

PROTOCOLS = ("fewshot", "base2new")
DEFAULT_SHOTS = {"fewshot": "1,2,4,8,16", "base2new": "16"}
CONFIG_SUBDIR = {"fewshot": "few_shot", "base2new": "base_to_novel"}
SUBSAMPLE_OF_PHASE = {"fewshot": "all", "train_base": "base", "test_new": "new"}
TRAIN_COMMAND_ENV = "VMFCOOP_TRAIN_CMD"
# Set by the comparison itself (from --shots, --seeds, --backbone, --root, --output); refused in --opts.
RESERVED_OPTS = ("DATASET.NUM_SHOTS", "DATASET.SUBSAMPLE_CLASSES", "DATASET.ROOT", "SEED", "OUTPUT_DIR",
                 "MODEL.BACKBONE.NAME")


# ----------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One invocation of the training CLI."""

    trainer: str
    dataset: str
    num_shots: int
    seed: int
    subsample_classes: str  # "all" (few-shot), "base" (train on base) or "new" (eval-only on new)
    output_dir: str
    root: str
    config_file: str
    dataset_config_file: str
    opts: list
    backbone: str = None  # checked against an existing results.json when given
    model_dir: str = None  # eval-only jobs: the training run whose checkpoint is evaluated

    @property
    def results_path(self):
        return os.path.join(self.output_dir, "results.json")

    @property
    def log_path(self):
        return os.path.join(self.output_dir, "run.log")

    def describe(self):
        phase = {"all": "", "base": " [train base]", "new": " [test new]"}[self.subsample_classes]
        return f"{self.trainer} {self.dataset} K={self.num_shots} seed={self.seed}{phase}"

    def cli_args(self, load_epoch=None):
        args = ["--root", self.root, "--output-dir", self.output_dir, "--seed", str(self.seed),
                "--trainer", self.trainer, "--config-file", self.config_file,
                "--dataset-config-file", self.dataset_config_file]
        if self.model_dir is not None:
            args += ["--eval-only", "--model-dir", self.model_dir]
            if load_epoch is not None:  # None: the run kept its best-val checkpoint (model-best.pth.tar)
                args += ["--load-epoch", str(load_epoch)]
        return args + list(self.opts)


def run_dir(output, phase, dataset, shots, trainer, tag, seed):
    """Output folder of one run; ``phase`` is "fewshot", "train_base" or "test_new"."""
    prefix = [output] if phase == "fewshot" else [output, "base2new", phase]
    return os.path.join(*prefix, dataset, f"shots_{shots}", trainer, tag, f"seed{seed}")


def trainer_config_file(configs_dir, trainer, dataset, protocol):
    """configs/trainers/<T>/<few_shot|base_to_novel>/<dataset>.yaml, else the default.yaml fallbacks."""
    trainer_dir = os.path.join(configs_dir, "trainers", trainer)
    candidates = [os.path.join(trainer_dir, CONFIG_SUBDIR[protocol], f"{dataset}.yaml")]
    if protocol == "base2new":
        candidates.append(os.path.join(trainer_dir, "base_to_novel", "default.yaml"))
    candidates.append(os.path.join(trainer_dir, "few_shot", "default.yaml"))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"No {protocol} config for trainer '{trainer}' on dataset '{dataset}'; tried: {', '.join(candidates)}. "
        f"Add one of these files (folders under {os.path.join(configs_dir, 'trainers')} are named after the "
        "trainer registry names, e.g. CoOp, VMFCoOp) or point --configs at the right folder."
    )


def dataset_config_file(configs_dir, dataset):
    path = os.path.join(configs_dir, "datasets", f"{dataset}.yaml")
    if not os.path.isfile(path):
        folder = os.path.dirname(path)
        known = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []
        raise FileNotFoundError(
            f"No dataset config {path}. Known datasets: {', '.join(known) or 'none'}; --datasets takes these names."
        )
    return path


def check_user_opts(opts):
    if len(opts) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs; got an odd number of items: {' '.join(opts)}")
    reserved = [key for key in opts[::2] if key in RESERVED_OPTS]
    if reserved:
        raise ValueError(
            f"--opts may not set {', '.join(reserved)}: the comparison sets it per run "
            "(use --shots, --seeds, --backbone, --root or --output)."
        )


def phase_job(phase, common, num_shots, seed, output, tag, shared_opts, model_dir=None):
    """The Job of one run; ``phase`` is "fewshot", "train_base" or "test_new"."""
    subsample = SUBSAMPLE_OF_PHASE[phase]
    opts = ["DATASET.NUM_SHOTS", str(num_shots)]
    if subsample != "all":
        opts += ["DATASET.SUBSAMPLE_CLASSES", subsample]
    return Job(num_shots=num_shots, seed=seed, subsample_classes=subsample,
               output_dir=run_dir(output, phase, common["dataset"], num_shots, common["trainer"], tag, seed),
               opts=opts + shared_opts, model_dir=model_dir, **common)


def plan_jobs(methods, datasets, shots, seeds, protocol="fewshot", *, root, output, configs_dir,
              tag="default", backbone=None, opts=()):
    """Chains of jobs to run in order: [few-shot run], or [train on base, eval-only on new] for base2new.

    Every config file is resolved here, so a missing one stops the comparison before anything runs.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}")
    check_user_opts(list(opts))
    shared_opts = (["MODEL.BACKBONE.NAME", backbone] if backbone else []) + list(opts)
    chains = []
    for trainer in methods:
        for dataset in datasets:
            common = dict(trainer=trainer, dataset=dataset, root=root, backbone=backbone,
                          config_file=trainer_config_file(configs_dir, trainer, dataset, protocol),
                          dataset_config_file=dataset_config_file(configs_dir, dataset))
            for k in shots:
                for seed in seeds:
                    if protocol == "fewshot":
                        chains.append([phase_job("fewshot", common, k, seed, output, tag, shared_opts)])
                        continue
                    train = phase_job("train_base", common, k, seed, output, tag, shared_opts)
                    test = phase_job("test_new", common, k, seed, output, tag, shared_opts, model_dir=train.output_dir)
                    chains.append([train, test])
    return chains


# ----------------------------------------------------------------------------------------------------------
# Run state
# ----------------------------------------------------------------------------------------------------------
def read_results(path):
    with open(path) as f:
        return json.load(f)


def results_mismatch(results, job):
    """'' when an existing results.json belongs to ``job``, else which fields differ."""
    expected = {"trainer": job.trainer, "num_shots": job.num_shots, "seed": job.seed,
                "subsample_classes": job.subsample_classes}
    if job.backbone:
        expected["backbone"] = job.backbone
    wrong = [f"{key}={results.get(key)!r} (expected {value!r})" for key, value in expected.items()
             if str(results.get(key)) != str(value)]
    return ", ".join(wrong)


def job_state(job):
    """(state, message): state is "done", "pending", "incomplete" or "conflict"."""
    if os.path.isfile(job.results_path):
        try:
            mismatch = results_mismatch(read_results(job.results_path), job)
        except (OSError, ValueError) as err:
            return "conflict", f"unreadable {job.results_path} ({err}); delete it to rerun this run"
        if mismatch:
            return "conflict", (f"{job.results_path} belongs to another run: {mismatch}. "
                                "Use another --tag or --output, or delete that folder.")
        return "done", ""
    if os.path.isdir(job.output_dir) and os.listdir(job.output_dir):
        return "incomplete", "folder exists without results.json"
    return "pending", ""


def trained_epoch(model_dir):
    """The epoch the training run in ``model_dir`` ended at (its checkpoint to load), from its results.json;
    None when the run deployed its best-val checkpoint, which eval-only loads without an epoch."""
    path = os.path.join(model_dir, "results.json")
    try:
        results = read_results(path)
    except (OSError, ValueError) as err:
        raise RuntimeError(f"Cannot read the training run's {path} ({err}); rerun the base training.") from None
    if results.get("config", {}).get("TEST", {}).get("FINAL_MODEL") == "best_val":
        return None
    epoch = results.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise RuntimeError(f"{path} has no integer 'epoch' field (got {epoch!r}); cannot choose the checkpoint.")
    return epoch


def move_aside(folder):
    """Rename an interrupted run folder to ``<folder>.incomplete-<time>`` (kept for its logs); return the name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = f"{folder}.incomplete-{stamp}", 1
    while os.path.exists(target):
        target, n = f"{folder}.incomplete-{stamp}-{n}", n + 1
    os.rename(folder, target)
    return target


# ----------------------------------------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------------------------------------
def default_train_command():
    override = os.environ.get(TRAIN_COMMAND_ENV)
    return shlex.split(override) if override else [sys.executable, "-m", "vmfcoop.engine.cli"]


@dataclass
class Outcome:
    job: Job
    status: str  # "ran", "skipped", "failed" or "blocked" (its training run failed)
    message: str = ""
    seconds: float = 0.0


@dataclass
class Runner:
    """Runs job chains, ``workers`` at a time; each worker slot owns one GPU of ``gpus`` (round-robin).

    ``launch(command, log_path, env) -> exit code`` starts one job; the default runs a subprocess.
    """

    train_command: list
    workers: int = 1
    gpus: list = field(default_factory=list)
    launch: object = None
    stream: object = None  # default: sys.stdout
    outcomes: list = field(default_factory=list)

    def __post_init__(self):
        self.launch = self.launch or self.launch_subprocess
        self.stream = self.stream or sys.stdout
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.live = set()
        self.total = 0

    def launch_subprocess(self, command, log_path, env):
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            with self.lock:
                self.live.add(process)
            try:
                return process.wait()
            finally:
                with self.lock:
                    self.live.discard(process)

    def stop(self):
        """Start no new job and terminate the running ones (their folders stay incomplete)."""
        self.stopping.set()
        with self.lock:
            for process in self.live:
                process.terminate()

    def record(self, outcome):
        with self.lock:
            self.outcomes.append(outcome)
            done = len(self.outcomes)
            detail = f" ({outcome.seconds:.1f}s)" if outcome.status == "ran" else ""
            if outcome.message:
                detail += f": {outcome.message}"
            print(f"[{done}/{self.total}] {outcome.status:<7} {outcome.job.describe()}{detail}",
                  file=self.stream, flush=True)

    def run_job(self, job, gpu):
        state, message = job_state(job)
        if state == "done":
            return Outcome(job, "skipped", "results.json exists")
        if state == "conflict":
            return Outcome(job, "failed", message)
        try:
            load_epoch = trained_epoch(job.model_dir) if job.model_dir else None
        except RuntimeError as err:
            return Outcome(job, "failed", str(err))
        note = f"moved interrupted run to {move_aside(job.output_dir)}; " if state == "incomplete" else ""
        os.makedirs(job.output_dir, exist_ok=True)
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        start = time.monotonic()
        code = self.launch(self.train_command + job.cli_args(load_epoch), job.log_path, env)
        seconds = time.monotonic() - start
        if code != 0:
            return Outcome(job, "failed", f"{note}exit code {code}; log: {job.log_path}", seconds)
        if not os.path.isfile(job.results_path):
            return Outcome(job, "failed", f"{note}exited 0 without writing results.json; log: {job.log_path}", seconds)
        return Outcome(job, "ran", note.rstrip("; "), seconds)

    def run_chain(self, chain, slots):
        gpu = slots.get()
        try:
            for position, job in enumerate(chain):
                if self.stopping.is_set():
                    return
                outcome = self.run_job(job, gpu)
                self.record(outcome)
                if outcome.status == "failed":
                    for later in chain[position + 1:]:
                        self.record(Outcome(later, "blocked", f"needs {job.describe()}, which failed"))
                    return
        finally:
            slots.put(gpu)

    def run(self, chains):
        """Run every chain; return the outcomes. KeyboardInterrupt stops the running jobs and is re-raised."""
        self.total = sum(len(chain) for chain in chains)
        slots = queue.Queue()
        for slot in range(self.workers):
            slots.put(self.gpus[slot % len(self.gpus)] if self.gpus else None)
        pool = ThreadPoolExecutor(max_workers=self.workers)
        try:
            futures = [pool.submit(self.run_chain, chain, slots) for chain in chains]
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self.outcomes


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def default_configs_dir():
    """./configs when it exists, else the configs/ folder of this source tree."""
    local = os.path.abspath("configs")
    return local if os.path.isdir(local) else str(Path(__file__).resolve().parents[1] / "configs")


def comma_list(text, cast=str):
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return [cast(item) for item in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {cast.__name__} values, got '{text}'") from None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m vmfcoop.tools.compare",
        description="Train and evaluate methods x datasets x shots x seeds, then aggregate the results.",
    )
    parser.add_argument("--methods", required=True, type=comma_list, help="trainer names, e.g. CoOp,VMFCoOp")
    parser.add_argument("--datasets", required=True, type=comma_list,
                        help="dataset config names (configs/datasets/<name>.yaml), e.g. btmri,busi")
    parser.add_argument("--shots", type=lambda t: comma_list(t, int),
                        help=f"K values (default: {DEFAULT_SHOTS['fewshot']}; base2new: {DEFAULT_SHOTS['base2new']})")
    parser.add_argument("--seeds", type=lambda t: comma_list(t, int), default=[1, 2, 3], help="default: 1,2,3")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="fewshot")
    parser.add_argument("--root", default="data", help="dataset root folder (DATASET.ROOT; default: ./data)")
    parser.add_argument("--output", default="output", help="output root (default: ./output)")
    parser.add_argument("--backbone", help="MODEL.BACKBONE.NAME for every run (default: the configs' own)")
    parser.add_argument("--tag", default="default", help="folder between trainer and seed (default: default)")
    parser.add_argument("--configs", default=None, help="configs folder (default: ./configs or the repo's)")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (default: 1)")
    parser.add_argument("--gpus", type=comma_list, default=[],
                        help="GPU ids given to the workers round-robin as CUDA_VISIBLE_DEVICES, e.g. 0,1")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands; run nothing")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE pairs passed to every run (must come last)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    args.shots = args.shots or comma_list(DEFAULT_SHOTS[args.protocol], int)
    return args


def print_plan(chains, train_command, stream):
    jobs = [job for chain in chains for job in chain]
    states = [job_state(job) for job in jobs]
    counts = {s: sum(1 for state, _ in states if state == s) for s in ("done", "incomplete", "pending", "conflict")}
    print(f"Plan: {len(jobs)} runs; " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), file=stream)
    for job, (state, message) in zip(jobs, states):
        if job.model_dir is None:
            load_epoch = None
        else:
            try:
                load_epoch = trained_epoch(job.model_dir)
            except RuntimeError:  # not trained yet: the epoch is read after training
                load_epoch = f"<epoch from {os.path.join(job.model_dir, 'results.json')}>"
        print(f"[{state}] {job.describe()}" + (f": {message}" if message else ""), file=stream)
        print("    " + shlex.join(train_command + job.cli_args(load_epoch)), file=stream)


def print_summary(outcomes, stream):
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("ran", "skipped", "failed", "blocked")}
    print("\nSummary: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=stream)
    problems = [o for o in outcomes if o.status in ("failed", "blocked")]
    if problems:
        print("Runs without results:", file=stream)
        for o in problems:
            print(f"  {o.job.describe()}: {o.status}: {o.message}", file=stream)


def aggregate_tables(output, stream):
    """Print the tables of every run under ``output`` and write them to ``output/tables``."""
    paths = aggregate.find_results(output)
    if not paths:
        print(f"No results.json under {output}; no tables.", file=stream)
        return
    report = aggregate.build_report(paths)
    print("\n" + aggregate.render_report(report, "text"), end="", file=stream)
    tables_dir = os.path.join(output, "tables")
    aggregate.write_outputs(report, tables_dir)
    print(f"\nTables and plots written to {tables_dir}", file=stream)


def main(argv=None, launch=None, stream=None):
    """CLI entry point; ``launch`` replaces the subprocess launcher (see Runner), ``stream`` gets the report."""
    stream = stream or sys.stdout
    args = parse_args(argv)
    output = os.path.abspath(args.output)
    try:
        chains = plan_jobs(args.methods, args.datasets, args.shots, args.seeds, args.protocol,
                           root=os.path.abspath(args.root), output=output,
                           configs_dir=os.path.abspath(args.configs or default_configs_dir()),
                           tag=args.tag, backbone=args.backbone, opts=args.opts)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train_command = default_train_command()
    if args.dry_run:
        print_plan(chains, train_command, stream)
        return 0
    if args.workers > 1 and not args.gpus:
        print(f"note: --workers {args.workers} without --gpus: every run sees the same GPUs", file=stream)
    runner = Runner(train_command, workers=args.workers, gpus=args.gpus, launch=launch, stream=stream)
    try:
        outcomes = runner.run(chains)
    except KeyboardInterrupt:
        print("\nInterrupted; rerun the same command to complete the missing runs.", file=stream)
        return 130
    print_summary(outcomes, stream)
    aggregate_tables(output, stream)
    return 1 if any(o.status in ("failed", "blocked") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
