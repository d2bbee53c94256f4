"""Engine behaviour: registry, config merge order, schedules, evaluator, CLI end to end."""
import json
import math
import os
import re

import pytest
import torch
import toy_trainer  # noqa: F401  (registers ToyTrainer)
from vmfcoop.engine import TRAINER_REGISTRY, Registry, build_lr_scheduler, get_cfg_default
from vmfcoop.engine.cli import build_parser, main, setup_cfg
from vmfcoop.engine.config import extend_cfg
from vmfcoop.engine.errors import ConfigError
from vmfcoop.engine.evaluator import macro_f1
from vmfcoop.engine.optim import lr_at_epoch
from vmfcoop.engine.utils import atomic_write

# ---------------------------------------------------------------- registry


def test_registry_unknown_name_suggests_close_match():
    reg = Registry("TRAINER")

    @reg.register()
    class KgCoOp:
        pass

    with pytest.raises(KeyError, match=r'Unknown trainer "KgCoop".*Did you mean: KgCoOp'):
        reg.get("KgCoop")


def test_registry_same_class_twice_is_harmless_but_a_different_class_is_refused():
    reg = Registry("DATASET")

    class BTMRI:
        pass

    reg.register(BTMRI)
    reg.register(BTMRI)
    assert reg.registered_names() == ["BTMRI"]
    other = type("BTMRI", (), {"__module__": "somewhere.else"})
    with pytest.raises(KeyError, match="already registered"):
        reg.register(other)
    reg.register(other, force=True)
    assert reg.get("BTMRI") is other


def test_register_decorator_returns_the_class():
    reg = Registry("X")

    @reg.register()
    class Thing:
        pass

    assert Thing.__name__ == "Thing" and reg.get("Thing") is Thing


# ---------------------------------------------------------------- config


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_config_merge_order_defaults_dataset_trainer_cli(tmp_path):
    dataset_yaml = _write(tmp_path / "d.yaml", "DATASET:\n  NAME: SyntheticMed\nOPTIM:\n  LR: 0.1\n  MAX_EPOCH: 7\n")
    trainer_yaml = _write(tmp_path / "t.yaml", "OPTIM:\n  LR: 0.2\nDATALOADER:\n  TRAIN_X:\n    BATCH_SIZE: 4\n")
    args = build_parser().parse_args([
        "--dataset-config-file", dataset_yaml, "--config-file", trainer_yaml, "--seed", "0",
        "--trainer", "ToyTrainer", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
    ])
    cfg = setup_cfg(args)
    assert cfg.DATASET.NAME == "SyntheticMed"  # dataset yaml over defaults
    assert cfg.OPTIM.MAX_EPOCH == 7  # dataset yaml, untouched by the trainer yaml
    assert cfg.OPTIM.LR == 0.2  # trainer yaml over dataset yaml
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 8  # CLI opts over trainer yaml
    assert cfg.SEED == 0  # --seed 0 is honoured (Dassl drops it)
    assert cfg.TRAINER.TOY.HIDDEN == 0  # keys added by the trainer's extend_cfg
    assert cfg.OPTIM.NAME == get_cfg_default().OPTIM.NAME
    with pytest.raises(AttributeError):
        cfg.SEED = 3  # frozen


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    bad_key = _write(tmp_path / "bad.yaml", "TRAINER:\n  FOO: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*TRAINER.FOO"):
        setup_cfg(build_parser().parse_args(["--config-file", bad_key]))
    with pytest.raises(ConfigError, match="Bad value 'abc' for option DATASET.NUM_SHOTS"):
        setup_cfg(build_parser().parse_args(["DATASET.NUM_SHOTS", "abc"]))
    with pytest.raises(ConfigError, match="Unknown option OPTIM.LRR"):
        setup_cfg(build_parser().parse_args(["OPTIM.LRR", "0.1"]))
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        setup_cfg(build_parser().parse_args(["OPTIM.LR"]))


def test_yaml_cannot_execute_code(tmp_path):
    evil = _write(tmp_path / "evil.yaml", "OUTPUT_DIR: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        setup_cfg(build_parser().parse_args(["--config-file", evil]))


# ---------------------------------------------------------------- schedules


def _optim_cfg(**overrides):
    cfg = get_cfg_default()
    cfg.OPTIM.LR = 0.002
    cfg.OPTIM.MAX_EPOCH = 5
    for key, value in overrides.items():
        setattr(cfg.OPTIM, key, value)
    return cfg.OPTIM


def _lrs_per_epoch(optim_cfg, epochs=5):
    param = torch.nn.Parameter(torch.zeros(1))
    optim = torch.optim.SGD([param], lr=optim_cfg.LR)
    sched = build_lr_scheduler(optim, optim_cfg)
    lrs = []
    for _ in range(epochs):
        lrs.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    return lrs


# Values measured on the real Dassl (reference/dassl_api.md §5.2).
@pytest.mark.parametrize("overrides, expected", [
    (dict(WARMUP_EPOCH=1, WARMUP_TYPE="constant"), [1e-05, 0.002, 0.00180902, 0.00130902, 0.000690983]),
    (dict(WARMUP_EPOCH=2, WARMUP_TYPE="linear"), [1e-05, 0.001, 0.002, 0.00180902, 0.00130902]),
    (dict(WARMUP_EPOCH=-1), [0.002, 0.00180902, 0.00130902, 0.000690983, 0.000190983]),
])
def test_warmup_then_cosine_per_epoch(overrides, expected):
    assert _lrs_per_epoch(_optim_cfg(**overrides)) == pytest.approx(expected, rel=1e-5)


def test_cosine_formula_after_warmup():
    cfg = _optim_cfg(WARMUP_EPOCH=1, WARMUP_TYPE="constant", MAX_EPOCH=50)
    for epoch in (1, 10, 49):
        assert lr_at_epoch(epoch, 0.002, cfg) == pytest.approx(0.002 * (1 + math.cos(math.pi * (epoch - 1) / 50)) / 2)


def test_single_step_schedule():
    assert _lrs_per_epoch(_optim_cfg(LR_SCHEDULER="single_step", STEPSIZE=(2,)), 5) == pytest.approx(
        [0.002, 0.002, 0.0002, 0.0002, 0.00002])


def test_bad_scheduler_or_warmup_name_fails_at_build():
    with pytest.raises(ConfigError, match="LR_SCHEDULER"):
        _lrs_per_epoch(_optim_cfg(LR_SCHEDULER="poly"), 1)
    with pytest.raises(ConfigError, match="WARMUP_TYPE"):
        _lrs_per_epoch(_optim_cfg(WARMUP_EPOCH=1, WARMUP_TYPE="exp"), 1)


def test_scheduler_state_is_weights_only_safe(tmp_path):
    param = torch.nn.Parameter(torch.zeros(1))
    sched = build_lr_scheduler(torch.optim.SGD([param], lr=0.1), _optim_cfg(WARMUP_EPOCH=1))
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True)["last_epoch"] == 0


# ---------------------------------------------------------------- evaluator and utils


def test_macro_f1_matches_formula():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    f1_0 = 2 * 1 / (2 * 1 + 1 + 1)
    f1_1 = 2 * 2 / (2 * 2 + 1 + 0)
    f1_2 = 0.0
    assert macro_f1(y_true, y_pred) == pytest.approx((f1_0 + f1_1 + f1_2) / 3)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_write(str(target)) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- end to end


def _train_args(root, out, *flags):
    return [
        "--root", root, "--output-dir", out, "--seed", "1", "--trainer", "ToyTrainer", *flags,
        "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "1",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "INPUT.SIZE", "(32, 32)",
        "OPTIM.LR", "0.05",
    ]


def test_train_then_eval_only_reproduces_accuracy(synthetic_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(_train_args(synthetic_root, out)) == 0
    log = open(os.path.join(out, "log.txt")).read()
    for line in ("Finish training", "=> result", "* accuracy: ", "* error: ", "* macro_f1: "):
        assert line in log
    assert re.search(r"^\* accuracy: [\d.]+%$", log, re.M)
    assert os.path.isfile(os.path.join(out, "model", "model.pth.tar-1"))
    trained = json.load(open(os.path.join(out, "results.json")))
    assert trained["trainer"] == "ToyTrainer" and trained["epoch"] == 1 and not trained["eval_only"]
    assert trained["num_examples"] == 24 and set(trained["per_class"]) == {
        "benign lesion", "malignant tumor", "normal tissue", "inflammatory cyst"}

    eval_out = str(tmp_path / "eval")
    assert main(_train_args(synthetic_root, eval_out, "--eval-only", "--model-dir", out, "--load-epoch", "1")) == 0
    evaluated = json.load(open(os.path.join(eval_out, "results.json")))
    assert evaluated["eval_only"] and evaluated["epoch"] == 1
    assert evaluated["metrics"] == trained["metrics"]
    assert "Finish training" not in open(os.path.join(eval_out, "log.txt")).read()


def test_rerun_resumes_from_checkpoint_and_keeps_old_log(synthetic_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(_train_args(synthetic_root, out)) == 0
    assert main(_train_args(synthetic_root, out)) == 0
    logs = sorted(f for f in os.listdir(out) if f.startswith("log.txt"))
    assert len(logs) == 2
    second = open(os.path.join(out, logs[1])).read()
    assert "Found checkpoint at" in second and "Previous epoch: 1" in second


def test_training_is_deterministic_for_a_seed(synthetic_root, tmp_path, capsys):
    results = []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        assert main(_train_args(synthetic_root, out)) == 0
        state = torch.load(os.path.join(out, "model", "model.pth.tar-1"), weights_only=True)["state_dict"]
        results.append(state["fc.weight"])
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("argv, message", [
    (["--trainer", "ToyTrainr", "DATASET.NAME", "SyntheticMed"], 'Unknown trainer "ToyTrainr". Did you mean: ToyTrainer'),
    (["--trainer", "ToyTrainer", "DATASET.NAME", "SynthMed"], 'Unknown dataset "SynthMed". Did you mean: SyntheticMed'),
    (["--config-file", "nope.yaml"], "Trainer config file not found: nope.yaml"),
    (["--dataset-config-file", "nope.yaml"], "Dataset config file not found: nope.yaml"),
    (["OPTIM.NOPE", "1"], "Unknown option OPTIM.NOPE"),
    (["DATASET.NAME", "SyntheticMed", "--trainer", "ToyTrainer"], "Flag --trainer appears after the KEY VALUE options"),
    (["--trainer", "ToyTrainer", "DATASET.NAME", "SyntheticMed", "OPTIM.NAME", "lbfgs"], "OPTIM.NAME 'lbfgs' is not supported"),
])
def test_cli_bad_input_prints_one_line(argv, message, synthetic_root, tmp_path, capsys):
    code = main(["--root", synthetic_root, "--output-dir", str(tmp_path / "o")] + argv + ["DATALOADER.NUM_WORKERS", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_trainer_keys_exist_for_every_registered_trainer():
    cfg = get_cfg_default()
    extend_cfg(cfg)
    assert "ToyTrainer" in TRAINER_REGISTRY.registered_names()
    assert "TOY" in cfg.TRAINER
