"""Bad input gets one clear message and leaves no partial output; interrupted runs resume."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import toy_trainer  # noqa: F401  (registers ToyTrainer and DivergingToyTrainer)
from PIL import Image
from vmfcoop.datasets.testing import write_fake_dataset
from vmfcoop.engine.checkpoint import CheckpointError, load_checkpoint
from vmfcoop.engine.cli import lock_output_dir, main
from vmfcoop.engine.utils import ImageReadError, read_image

TOY = ["--trainer", "ToyTrainer"]
FAST = ["DATALOADER.NUM_WORKERS", "0", "INPUT.SIZE", "(32, 32)", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2"]


def run(root, out, flags, opts, capsys):
    code = main(["--root", str(root), "--output-dir", str(out), "--seed", "1", *flags, *FAST, *opts])
    return code, capsys.readouterr()


def assert_one_line_error(code, captured, *fragments):
    """Exit code 2 and one ``error:`` message ending stderr (progress bars may precede it), no traceback."""
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err, captured.err
    assert sum(line.startswith("error: ") for line in lines) == 1, captured.err
    for fragment in fragments:
        assert fragment in captured.err, captured.err


def assert_no_results(out):
    assert not os.path.exists(os.path.join(out, "results.json"))
    assert not any(name.startswith(("model", "prompt_learner")) for name in os.listdir(out))


def make_dataset(root, name="BUSI", classnames=("benign tumor", "malignant tumor", "normal scan")):
    return write_fake_dataset(str(root), name, list(classnames), counts=(4, 2, 2))


def test_unknown_backbone_suggests_names(synthetic_root, tmp_path, capsys):
    code, captured = run(synthetic_root, tmp_path / "o", ["--trainer", "CoOp", "--backbone", "BiomedCLP"],
                         ["DATASET.NAME", "SyntheticMed"], capsys)
    assert_one_line_error(code, captured, 'Unknown backbone "BiomedCLP"', "Did you mean: BiomedCLIP")


def test_missing_dataset_root_names_the_paths(tmp_path, capsys):
    code, captured = run(tmp_path / "nowhere", tmp_path / "o", TOY,
                         ["DATASET.NAME", "BTMRI", "DATASET.DOWNLOAD", "False"], capsys)
    assert_one_line_error(code, captured, str(tmp_path / "nowhere" / "BTMRI" / "split_BTMRI.json"))
    assert_no_results(tmp_path / "o")


def test_malformed_split_json_names_the_file(tmp_path, capsys):
    paths = make_dataset(tmp_path)
    with open(paths.split_path, "w") as f:
        f.write('{"train": [["a.png", 0, ')
    code, captured = run(tmp_path, tmp_path / "o", TOY, ["DATASET.NAME", "BUSI"], capsys)
    assert_one_line_error(code, captured, paths.split_path)
    assert_no_results(tmp_path / "o")


def test_split_pointing_at_missing_files_names_them(tmp_path, capsys):
    paths = make_dataset(tmp_path)
    split = json.load(open(paths.split_path))
    os.remove(os.path.join(paths.image_dir, split["test"][0][0]))
    code, captured = run(tmp_path, tmp_path / "o", TOY, ["DATASET.NAME", "BUSI", "DATASET.DOWNLOAD", "False"], capsys)
    assert_one_line_error(code, captured, split["test"][0][0])
    assert_no_results(tmp_path / "o")


def test_corrupt_image_is_named(tmp_path, capsys):
    paths = make_dataset(tmp_path)
    split = json.load(open(paths.split_path))
    for relpath, _, _ in split["train"]:  # every training image: the first batch hits one
        with open(os.path.join(paths.image_dir, relpath), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n not really")
    code, captured = run(tmp_path, tmp_path / "o", TOY, ["DATASET.NAME", "BUSI"], capsys)
    assert_one_line_error(code, captured, paths.image_dir, "corrupt")
    assert_no_results(tmp_path / "o")


@pytest.mark.parametrize("mode, array", [
    ("L", np.full((8, 8), 200, dtype=np.uint8)),
    ("RGBA", np.full((8, 8, 4), 120, dtype=np.uint8)),
    ("I;16", np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000),
])
def test_medical_image_modes_are_converted_to_rgb(mode, array, tmp_path):
    path = str(tmp_path / "x.png")
    Image.fromarray(array).save(path)  # uint8 2-D -> L, 3-D x4 -> RGBA, uint16 -> I;16
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (8, 8)
    if mode == "I;16":  # rescaled by its own range, not clipped to 255
        pixels = np.asarray(img)[..., 0]
        assert pixels.min() == 0 and pixels.max() == 255


def test_read_image_names_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(str(tmp_path / "bad.jpg"))


@pytest.mark.parametrize("problem, fragment", [
    ({"benign tumor": ["a"], "malignant tumor": ["b"]}, "normal scan"),
    ({"benign tumor": ["a"], "malignant tumor": ["b"], "normal scan": ["", "c"]}, "normal scan"),
])
def test_prompt_bank_missing_class_or_empty_strings(problem, fragment, tmp_path, capsys):
    make_dataset(tmp_path)
    bank = tmp_path / "bank.json"
    bank.write_text(json.dumps({"dataset": "BUSI", "modality": "breast ultrasound", "generator": "test",
                                "instruction": "x", "prompts": problem}))
    code, captured = run(tmp_path, tmp_path / "o", ["--trainer", "ZeroShotEnsemble", "--backbone", "tiny-bert"],
                         ["DATASET.NAME", "BUSI", "DATASET.PROMPTS.SOURCES", f"('{bank}',)", "OPTIM.MAX_EPOCH", "0",
                          "DATASET.PROMPTS.N_PROMPTS", "1"],
                         capsys)
    assert_one_line_error(code, captured, str(bank), fragment)
    assert_no_results(tmp_path / "o")


def test_k_larger_than_a_class_keeps_all_with_a_warning(tmp_path, capsys):
    make_dataset(tmp_path)
    with pytest.warns(UserWarning, match="benign tumor"):
        code, _ = run(tmp_path, tmp_path / "o", TOY, ["DATASET.NAME", "BUSI", "DATASET.NUM_SHOTS", "16"], capsys)
    assert code == 0


def test_base_to_novel_on_a_one_class_dataset_is_refused(tmp_path, capsys):
    make_dataset(tmp_path, "ImageFolderSplit", ["only class"])
    code, captured = run(tmp_path, tmp_path / "o", TOY, [
        "DATASET.NAME", "ImageFolderSplit", "DATASET.IMAGE_FOLDER.DIR", "ImageFolderSplit/ImageFolderSplit",
        "DATASET.IMAGE_FOLDER.SPLIT_FILE", "ImageFolderSplit/split_ImageFolderSplit.json",
        "DATASET.SUBSAMPLE_CLASSES", "base"], capsys)
    assert_one_line_error(code, captured, "at least 2 classes")
    assert_no_results(tmp_path / "o")


def test_nan_loss_stops_keeps_last_good_checkpoint_and_names_the_step(synthetic_root, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["--root", synthetic_root, "--output-dir", str(out), "--seed", "1", "--trainer", "DivergingToyTrainer",
                 "DATASET.NAME", "SyntheticMed", *FAST, "OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1"])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured, "NaN at epoch 2, batch 1")
    assert sorted(os.listdir(out / "model")) == ["checkpoint", "model.pth.tar-1"]
    assert not (out / "results.json").exists()


def test_two_runs_never_share_an_output_dir(synthetic_root, tmp_path, capsys):
    out = tmp_path / "o"
    holder = lock_output_dir(str(out))
    try:
        code, captured = run(synthetic_root, out, TOY, ["DATASET.NAME", "SyntheticMed"], capsys)
    finally:
        holder.close()
    assert_one_line_error(code, captured, "Another run is writing to")
    assert not (out / "results.json").exists()


def test_checkpoints_with_arbitrary_objects_are_refused(tmp_path):
    path = str(tmp_path / "evil.pth.tar")
    torch.save({"state_dict": {}, "payload": np.dtype("float64")}, path)  # needs pickle globals
    with pytest.raises(CheckpointError, match="safely"):
        load_checkpoint(path)


def test_killed_run_resumes_from_its_last_checkpoint(synthetic_root, tmp_path, repo_root):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "vmfcoop.engine.cli", "--root", synthetic_root, "--output-dir", str(out),
            "--seed", "1", "--trainer", "CoOp", "--backbone", "tiny-bert", "DATASET.NAME", "SyntheticMed",
            "DATASET.NUM_SHOTS", "1", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
            "OPTIM.MAX_EPOCH", "300", "TRAIN.CHECKPOINT_FREQ", "1", "TRAIN.PRINT_FREQ", "100", "TEST.NO_TEST", "True"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    pointer = out / "prompt_learner" / "checkpoint"
    deadline = time.time() + 120
    while not pointer.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert pointer.exists(), "the run wrote a checkpoint before it was killed"
    done = int(open(pointer).read().strip().rsplit("-", 1)[1])
    assert 1 <= done < 300

    second = subprocess.run(argv[:-2] + ["TEST.NO_TEST", "False"], capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr
    resumed = [f for f in os.listdir(out) if f.startswith("log.txt-")]
    log = open(out / resumed[0]).read()
    assert "Found checkpoint at" in log
    previous = int(log.split("Previous epoch: ")[1].split()[0])
    assert previous >= done
    assert json.load(open(out / "results.json"))["epoch"] == 300


def test_best_val_without_a_val_split_is_refused(tmp_path, capsys):
    write_fake_dataset(str(tmp_path), "BUSI", ["benign tumor", "malignant tumor", "normal scan"], counts=(4, 0, 2))
    code, captured = run(tmp_path, tmp_path / "o", TOY, ["DATASET.NAME", "BUSI", "TEST.FINAL_MODEL", "best_val"], capsys)
    assert_one_line_error(code, captured, "best_val needs a validation split")
    assert_no_results(tmp_path / "o")
