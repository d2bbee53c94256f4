"""Tests of vmfcoop.tools.compare with a fake training command that writes deterministic results.json files."""
import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from vmfcoop.tools import compare

FAKE_TRAIN = textwrap.dedent(
    """
    # Stands in for `python -m vmfcoop.engine.cli`: parses the same flags, logs the call, writes results.json.
    import json, os, signal, sys, time

    VALUE_FLAGS = {"--root", "--output-dir", "--seed", "--trainer", "--config-file", "--dataset-config-file",
                   "--model-dir", "--load-epoch"}
    flags, opts, argv = {}, [], sys.argv[1:]
    i = 0
    while i < len(argv):
        if argv[i] in VALUE_FLAGS:
            flags[argv[i]] = argv[i + 1]
            i += 2
        elif argv[i] == "--eval-only":
            flags["--eval-only"] = True
            i += 1
        else:
            opts.append(argv[i])
            i += 1
    cfg = dict(zip(opts[::2], opts[1::2]))
    out, trainer, seed = flags["--output-dir"], flags["--trainer"], int(flags["--seed"])
    shots, subsample = int(cfg["DATASET.NUM_SHOTS"]), cfg.get("DATASET.SUBSAMPLE_CLASSES", "all")
    dataset = os.path.basename(flags["--dataset-config-file"])[:-5].upper()
    start = time.time()
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(json.dumps({"out": out, "argv": argv, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
    with open(os.environ["FAKE_CALLS"]) as f:
        call_number = sum(1 for _ in f)
    print("training", trainer, dataset, shots, seed, subsample)
    with open(os.path.join(out, "model.pth.tar-1"), "w") as f:  # a checkpoint before the end, as a real run
        f.write("partial")
    if call_number == int(os.environ.get("FAKE_FAIL_ON", "0")):
        if os.environ.get("FAKE_FAIL_MODE") == "kill_parent":
            os.kill(os.getppid(), signal.SIGKILL)  # the whole comparison dies mid-run
        print("simulated crash")
        sys.exit(3)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    epoch = int(os.environ.get("FAKE_EPOCH", "7"))
    if flags.get("--eval-only"):
        with open(os.path.join(flags["--model-dir"], "results.json")) as f:
            trained = json.load(f)
        if int(flags["--load-epoch"]) != trained["epoch"]:
            sys.exit("wrong --load-epoch")
        epoch = trained["epoch"]
    offset = {"CoOp": 0.0, "VMFCoOp": 10.0}[trainer] + {"all": 0.0, "base": 20.0, "new": 0.0}[subsample]
    accuracy = 50.0 + shots + seed + offset + (5.0 if dataset == "BUSI" else 0.0)
    results = {"trainer": trainer, "dataset": dataset, "backbone": cfg.get("MODEL.BACKBONE.NAME", "BiomedCLIP"),
               "num_shots": shots, "seed": seed, "subsample_classes": subsample, "split": "test",
               "eval_only": bool(flags.get("--eval-only")), "epoch": epoch,
               "metrics": {"accuracy": accuracy, "macro_f1": accuracy - 1, "error_rate": 100 - accuracy},
               "fake_gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "fake_start": start, "fake_end": time.time()}
    with open(os.path.join(out, "results.json.tmp"), "w") as f:
        json.dump(results, f)
    os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))
    """
)


@pytest.fixture
def configs(tmp_path):
    """CoOp has per-dataset configs; VMFCoOp only few_shot/default.yaml (the fallback)."""
    root = tmp_path / "configs"
    for path in ("trainers/CoOp/few_shot/btmri.yaml", "trainers/CoOp/few_shot/busi.yaml",
                 "trainers/CoOp/base_to_novel/btmri.yaml", "trainers/VMFCoOp/few_shot/default.yaml",
                 "datasets/btmri.yaml", "datasets/busi.yaml"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("{}\n")
    return root


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake trainer as VMFCOOP_TRAIN_CMD; ``fake.calls()`` lists its invocations."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv(compare.TRAIN_COMMAND_ENV, f"{sys.executable} {script}")
    monkeypatch.setenv("FAKE_CALLS", str(calls))

    class Fake:
        @staticmethod
        def calls():
            return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return Fake


def cli(configs, output, *extra):
    return ["--configs", str(configs), "--output", str(output), "--root", "/data", *extra]


# ----------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------
def test_fewshot_plan(configs, tmp_path):
    out = str(tmp_path / "out")
    chains = compare.plan_jobs(["CoOp", "VMFCoOp"], ["btmri", "busi"], [1, 16], [1, 2], root="/data", output=out,
                               configs_dir=str(configs), backbone="CLIP", opts=["OPTIM.MAX_EPOCH", "3"])
    assert [len(c) for c in chains] == [1] * 16
    job = chains[0][0]
    assert job.output_dir == os.path.join(out, "btmri", "shots_1", "CoOp", "default", "seed1")
    assert job.cli_args() == [
        "--root", "/data", "--output-dir", job.output_dir, "--seed", "1", "--trainer", "CoOp",
        "--config-file", str(configs / "trainers/CoOp/few_shot/btmri.yaml"),
        "--dataset-config-file", str(configs / "datasets/btmri.yaml"),
        "DATASET.NUM_SHOTS", "1", "MODEL.BACKBONE.NAME", "CLIP", "OPTIM.MAX_EPOCH", "3"]
    last = chains[-1][0]
    assert (last.trainer, last.dataset, last.num_shots, last.seed) == ("VMFCoOp", "busi", 16, 2)
    assert last.config_file == str(configs / "trainers/VMFCoOp/few_shot/default.yaml")  # fallback


def test_base2new_plan(configs, tmp_path):
    out = str(tmp_path / "out")
    (chain,) = compare.plan_jobs(["CoOp"], ["btmri"], [16], [2], "base2new", root="/data", output=out,
                                 configs_dir=str(configs), tag="long")
    train, test = chain
    assert train.output_dir == os.path.join(out, "base2new", "train_base", "btmri", "shots_16", "CoOp", "long", "seed2")
    assert test.output_dir == os.path.join(out, "base2new", "test_new", "btmri", "shots_16", "CoOp", "long", "seed2")
    assert train.config_file == test.config_file == str(configs / "trainers/CoOp/base_to_novel/btmri.yaml")
    assert train.cli_args()[-4:] == ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]
    args = test.cli_args(load_epoch=12)
    assert args[args.index("--eval-only"):] == ["--eval-only", "--model-dir", train.output_dir, "--load-epoch", "12",
                                                "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new"]
    assert "--eval-only" not in train.cli_args()
    # base2new falls back to few_shot/default.yaml as well
    (vmf,) = compare.plan_jobs(["VMFCoOp"], ["busi"], [16], [1], "base2new", root="/d", output=out,
                               configs_dir=str(configs))
    assert vmf[0].config_file.endswith(os.path.join("VMFCoOp", "few_shot", "default.yaml"))


def test_default_shots_depend_on_protocol():
    assert compare.parse_args(["--methods", "CoOp", "--datasets", "btmri"]).shots == [1, 2, 4, 8, 16]
    args = compare.parse_args(["--methods", "CoOp", "--datasets", "btmri", "--protocol", "base2new"])
    assert (args.shots, args.seeds) == ([16], [1, 2, 3])


def test_plan_errors_name_the_fix(configs, tmp_path):
    kwargs = dict(root="/d", output=str(tmp_path), configs_dir=str(configs))
    with pytest.raises(FileNotFoundError, match=r"trainer 'CoOp' on dataset 'chmnist'.*few_shot/default.yaml"):
        compare.plan_jobs(["CoOp"], ["chmnist"], [1], [1], **kwargs)
    (configs / "trainers/Other/few_shot").mkdir(parents=True)
    (configs / "trainers/Other/few_shot/default.yaml").write_text("{}")
    with pytest.raises(FileNotFoundError, match="Known datasets: btmri, busi"):
        compare.plan_jobs(["Other"], ["chmnist"], [1], [1], **kwargs)
    with pytest.raises(ValueError, match="DATASET.NUM_SHOTS"):
        compare.plan_jobs(["CoOp"], ["btmri"], [1], [1], opts=["DATASET.NUM_SHOTS", "4"], **kwargs)
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        compare.plan_jobs(["CoOp"], ["btmri"], [1], [1], opts=["OPTIM.LR"], **kwargs)


def test_cli_reports_plan_errors(configs, tmp_path, capsys):
    assert compare.main(cli(configs, tmp_path / "out", "--methods", "Nope", "--datasets", "btmri")) == 2
    assert "No fewshot config for trainer 'Nope'" in capsys.readouterr().err


def test_dry_run_prints_commands_and_runs_nothing(configs, tmp_path, fake, capsys):
    out = tmp_path / "out"
    argv = cli(configs, out, "--methods", "CoOp", "--datasets", "btmri", "--seeds", "1", "--protocol", "base2new",
               "--dry-run")
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Plan: 2 runs; 2 pending")
    assert "--eval-only --model-dir" in printed and "--load-epoch '<epoch from " in printed
    assert "fake_train.py --root /data" in printed
    assert fake.calls() == [] and not out.exists()


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------
def read_csv(path):
    return list(csv.DictReader(open(path)))


def test_fewshot_run_then_skip(configs, tmp_path, fake, capsys):
    out = tmp_path / "out"
    argv = cli(configs, out, "--methods", "CoOp,VMFCoOp", "--datasets", "btmri,busi", "--shots", "1,4",
               "--seeds", "1,2,3")
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert len(fake.calls()) == 24 and "[24/24] ran" in printed and "Summary: 24 ran, 0 skipped" in printed
    run = out / "busi" / "shots_4" / "VMFCoOp" / "default" / "seed2"
    assert json.loads((run / "results.json").read_text())["metrics"]["accuracy"] == 50 + 4 + 2 + 10 + 5
    assert "training VMFCoOp BUSI 4 2 all" in (run / "run.log").read_text()
    # tables from the results: mean over seeds of 50 + K + seed (+10 VMFCoOp, +5 BUSI) = 52 + K + ..., std 1
    rows = {(r["method"], r["dataset"], r["num_shots"]): r for r in read_csv(out / "tables" / "fewshot.csv")}
    assert (rows[("VMFCoOp", "BUSI", "4")]["mean"], rows[("VMFCoOp", "BUSI", "4")]["std"]) == ("71.0", "1.0")
    assert rows[("CoOp", "Average", "1")]["mean"] == "55.5"  # (53 + 58) / 2
    assert "CoOp      55.50 ± 1.00" in printed
    assert (out / "tables" / "fewshot_average.png").stat().st_size > 0

    assert compare.main(argv) == 0  # everything done: nothing runs again
    printed = capsys.readouterr().out
    assert len(fake.calls()) == 24 and "Summary: 0 ran, 24 skipped" in printed


def test_failed_run_is_listed_and_rerun_completes_only_it(configs, tmp_path, fake, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = cli(configs, out, "--methods", "CoOp", "--datasets", "btmri", "--shots", "1,2", "--seeds", "1,2")
    monkeypatch.setenv("FAKE_FAIL_ON", "3")
    assert compare.main(argv) == 1
    printed = capsys.readouterr().out
    failed = out / "btmri" / "shots_2" / "CoOp" / "default" / "seed1"  # the 3rd run
    assert f"failed  CoOp btmri K=2 seed=1: exit code 3; log: {failed / 'run.log'}" in printed
    assert "Summary: 3 ran, 0 skipped, 1 failed" in printed
    assert "simulated crash" in (failed / "run.log").read_text()
    assert "54.00 (1/2)" in printed  # the table marks the missing seed: K=2 has seed 2 only (50 + 2 + 2)
    monkeypatch.delenv("FAKE_FAIL_ON")
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert len(fake.calls()) == 5 and fake.calls()[-1]["out"] == str(failed)
    assert "Summary: 1 ran, 3 skipped" in printed and "moved interrupted run to" in printed
    (moved,) = [p for p in failed.parent.iterdir() if ".incomplete-" in p.name]
    assert (moved / "model.pth.tar-1").exists() and not (moved / "results.json").exists()


def test_resume_after_the_comparison_is_killed(configs, tmp_path, fake, monkeypatch):
    out = tmp_path / "out"
    argv = cli(configs, out, "--methods", "CoOp,VMFCoOp", "--datasets", "btmri", "--shots", "1,2", "--seeds", "1,2")
    env = dict(os.environ, FAKE_FAIL_ON="3", FAKE_FAIL_MODE="kill_parent")
    killed = subprocess.run([sys.executable, "-m", "vmfcoop.tools.compare", *argv], env=env, capture_output=True,
                            text=True, timeout=60)
    assert killed.returncode == -9
    assert len(fake.calls()) == 3 and len(aggregate_results(out)) == 2
    assert compare.main(argv) == 0
    assert len(fake.calls()) == 3 + 6  # the killed run and the 5 never started
    assert len(aggregate_results(out)) == 8


def aggregate_results(out):
    return [p for p in compare.aggregate.find_results(out) if ".incomplete-" not in p]


def test_base2new_loads_the_trained_epoch(configs, tmp_path, fake, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_EPOCH", "13")
    argv = cli(configs, out, "--methods", "CoOp", "--datasets", "btmri", "--seeds", "1,2", "--protocol", "base2new")
    assert compare.main(argv) == 0
    calls = fake.calls()
    assert len(calls) == 4
    evals = [c["argv"] for c in calls if "--eval-only" in c["argv"]]
    assert len(evals) == 2 and all(a[a.index("--load-epoch") + 1] == "13" for a in evals)
    rows = {r["dataset"]: r for r in read_csv(out / "tables" / "base2new.csv")}
    # base: 50 + 16 + seed + 20 -> 87.5; novel: 50 + 16 + seed -> 67.5
    assert (rows["BTMRI"]["base_mean"], rows["BTMRI"]["novel_mean"]) == ("87.5", "67.5")
    assert float(rows["Average"]["hm"]) == pytest.approx(2 * 87.5 * 67.5 / 155, abs=1e-4)
    assert "HM (of means)" in capsys.readouterr().out


def test_failed_base_training_blocks_its_eval(configs, tmp_path, fake, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_FAIL_ON", "1")
    argv = cli(configs, tmp_path / "out", "--methods", "CoOp", "--datasets", "btmri", "--seeds", "1,2",
               "--protocol", "base2new")
    assert compare.main(argv) == 1
    printed = capsys.readouterr().out
    assert "blocked CoOp btmri K=16 seed=1 [test new]: needs CoOp btmri K=16 seed=1 [train base]" in printed
    assert "Summary: 2 ran, 0 skipped, 1 failed, 1 blocked" in printed


def test_existing_results_of_another_run_are_not_skipped(configs, tmp_path, fake, capsys):
    out = tmp_path / "out"
    run = out / "btmri" / "shots_1" / "CoOp" / "default" / "seed1"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"trainer": "CoOp", "num_shots": 1, "seed": 1,
                                                  "subsample_classes": "all", "backbone": "BiomedCLIP"}))
    argv = cli(configs, out, "--methods", "CoOp", "--datasets", "btmri", "--shots", "1", "--seeds", "1")
    assert compare.main(argv) == 0  # same run: skipped
    assert compare.main(argv + ["--backbone", "CLIP"]) == 1
    assert "belongs to another run: backbone='BiomedCLIP' (expected 'CLIP')" in capsys.readouterr().out
    assert fake.calls() == []


def test_parallel_workers_get_one_gpu_each(configs, tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "0.4")
    out = tmp_path / "out"
    argv = cli(configs, out, "--methods", "CoOp", "--datasets", "btmri", "--shots", "1,2", "--seeds", "1,2",
               "--workers", "2", "--gpus", "0,1")
    assert compare.main(argv) == 0
    runs = [json.load(open(p)) for p in aggregate_results(out)]
    assert sorted(r["fake_gpu"] for r in runs) == ["0", "0", "1", "1"]
    overlapping = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
                   if a["fake_start"] < b["fake_end"] and b["fake_start"] < a["fake_end"]]
    assert overlapping, "the two workers never ran at the same time"
    assert all(a["fake_gpu"] != b["fake_gpu"] for a, b in overlapping)


def test_injected_launcher(configs, tmp_path, capsys):
    """``launch`` replaces the subprocess: it gets the command, the log path and the environment."""
    seen = []

    def launch(command, log_path, env):
        seen.append((command, log_path, env.get("CUDA_VISIBLE_DEVICES")))
        output_dir = command[command.index("--output-dir") + 1]
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump({"trainer": "CoOp", "dataset": "BTMRI", "num_shots": 2, "seed": 1, "subsample_classes": "all",
                       "metrics": {"accuracy": 70.0}}, f)
        return 0

    argv = cli(configs, tmp_path / "out", "--methods", "CoOp", "--datasets", "btmri", "--shots", "2", "--seeds", "1",
               "--gpus", "3")
    assert compare.main(argv, launch=launch) == 0
    ((command, log_path, gpu),) = seen
    assert command[:3] == [sys.executable, "-m", "vmfcoop.engine.cli"] and gpu == "3"
    assert log_path.endswith(os.path.join("seed1", "run.log"))
    assert re.search(r"\nCoOp +70\.00\n", capsys.readouterr().out)
