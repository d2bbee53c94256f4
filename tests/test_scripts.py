"""The method scripts and the comparison command, end to end on the tiny backbone."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

from vmfcoop.engine import TRAINER_REGISTRY
from vmfcoop.engine.cli import import_plugins
from vmfcoop.tools import aggregate

import_plugins()


def script_trainers(repo_root):
    """{script folder: trainer name} for every scripts/<method>/fewshot.sh."""
    found = {}
    for path in glob.glob(os.path.join(repo_root, "scripts", "*", "fewshot.sh")):
        match = re.search(r"run\.sh\" fewshot (\S+)", open(path).read())
        found[os.path.basename(os.path.dirname(path))] = match.group(1) if match else None
    return found


def test_every_registered_trainer_has_both_scripts(repo_root):
    by_folder = script_trainers(repo_root)
    shipped = {name for name in TRAINER_REGISTRY.registered_names()
               if TRAINER_REGISTRY.get(name).__module__.startswith("vmfcoop.trainers.")}
    assert set(by_folder.values()) == shipped
    for folder, trainer in by_folder.items():
        base2new = open(os.path.join(repo_root, "scripts", folder, "base2new.sh")).read()
        assert f'run.sh" base2new {trainer} "$@"' in base2new
        assert os.path.isdir(os.path.join(repo_root, "configs", "trainers", trainer, "few_shot"))


def tiny_env(tmp_path, synthetic_root, **extra):
    return dict(os.environ, DATA=synthetic_root, OUTPUT=str(tmp_path / "output"), BACKBONE="tiny-bert",
                OPTS="OPTIM.MAX_EPOCH 1 DATALOADER.NUM_WORKERS 0 DATALOADER.TEST.BATCH_SIZE 32", **extra)


def test_vmfcoop_fewshot_script_runs_seeds_1_to_3(repo_root, synthetic_root, tmp_path):
    done = subprocess.run(["bash", "scripts/vmfcoop/fewshot.sh", "syntheticmed", "2"], cwd=repo_root,
                          env=tiny_env(tmp_path, synthetic_root), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = sorted(glob.glob(str(tmp_path / "output/syntheticmed/shots_2/VMFCoOp/default/seed*/results.json")))
    assert [os.path.basename(os.path.dirname(p)) for p in runs] == ["seed1", "seed2", "seed3"]
    accuracies = [json.load(open(p))["metrics"]["accuracy"] for p in runs]
    assert "VMFCoOp" in done.stdout and "Summary: 3 ran" in done.stdout
    mean = sum(accuracies) / 3
    assert f"{mean:.2f}" in done.stdout, "the printed table shows the mean over seeds"

    again = subprocess.run(["bash", "scripts/vmfcoop/fewshot.sh", "syntheticmed", "2"], cwd=repo_root,
                           env=tiny_env(tmp_path, synthetic_root), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 ran, 3 skipped" in again.stdout


def compare_argv(tmp_path, synthetic_root):
    return [sys.executable, "-m", "vmfcoop.tools.compare", "--methods", "CoOp,KgCoOp", "--datasets", "syntheticmed",
            "--shots", "1,2", "--seeds", "1,2", "--root", synthetic_root, "--output", str(tmp_path / "out"),
            "--backbone", "tiny-clip", "--opts", "OPTIM.MAX_EPOCH", "1", "DATALOADER.NUM_WORKERS", "0"]


def test_comparison_killed_midway_resumes_and_tables_match_runs(repo_root, synthetic_root, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(compare_argv(tmp_path, synthetic_root), cwd=repo_root, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(glob.glob(str(out / "**/results.json"), recursive=True)) < 3 and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished = len(glob.glob(str(out / "**/results.json"), recursive=True))
    assert 3 <= finished < 8, "killed midway"

    second = subprocess.run(compare_argv(tmp_path, synthetic_root), cwd=repo_root, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"Summary: {8 - finished} ran, {finished} skipped" in second.stdout

    paths = aggregate.find_results(str(out))
    assert len(paths) == 8
    runs = [json.load(open(p)) for p in paths]
    csv_text = open(out / "tables" / "fewshot.csv").read()
    for trainer in ("CoOp", "KgCoOp"):
        for shots in (1, 2):
            accs = [r["metrics"]["accuracy"] for r in runs if r["trainer"] == trainer and r["num_shots"] == shots]
            assert len(accs) == 2
            mean = sum(accs) / 2
            std = abs(accs[0] - accs[1]) / 2 ** 0.5  # sample std of two values
            row = next(line for line in csv_text.splitlines()
                       if line.startswith(f"{trainer},") and f",{shots}," in line and "syntheticmed" in line.lower())
            values = [float(v) for v in row.split(",") if re.fullmatch(r"-?\d+(\.\d+)?", v)]
            assert any(abs(v - mean) < 1e-6 for v in values), (row, mean)
            assert any(abs(v - std) < 1e-6 for v in values), (row, std)
    plot = out / "tables" / "fewshot_average.png"
    assert plot.is_file() and plot.stat().st_size > 1000
