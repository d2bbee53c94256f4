"""Prompt-perturbation robustness: each perturbation pinned down, then the tool end to end on tiny runs."""
import csv
import json
import os
import random

import pytest
from vmfcoop.engine.cli import main as train_main
from vmfcoop.engine.errors import ConfigError
from vmfcoop.tools import robustness
from vmfcoop.tools.robustness import (
    PERTURBATIONS,
    affected_count,
    conditions_from,
    drop_words_from,
    rename_mentions,
    swap_descriptions,
    synonym_name,
    train_base_twin,
    truncate_descriptions,
    typo_name,
)


def rng_of(classname):
    return random.Random(f"test|{classname}")


# ---------------------------------------------------------------- class names


def test_typo_swaps_two_adjacent_inner_letters_of_one_word():
    name = "inflammatory cyst"
    typo = typo_name(name, random.Random(3), 0.1)
    assert typo != name and len(typo) == len(name)
    changed = [i for i, (a, b) in enumerate(zip(name, typo)) if a != b]
    assert len(changed) == 2 and changed[1] == changed[0] + 1
    assert typo[changed[0]] == name[changed[1]] and typo[changed[1]] == name[changed[0]]
    for word, typo_word in zip(name.split(), typo.split()):
        assert (word[0], word[-1]) == (typo_word[0], typo_word[-1]), "first and last letters stay"


def test_typo_severity_is_the_share_of_words_changed():
    name = "lung squamous cell carcinoma"
    every = typo_name(name, random.Random(0), 1.0)
    assert all(a != b for a, b in zip(name.split(), every.split()))
    assert typo_name(name, random.Random(0), 1.0) == every, "seeded"
    assert typo_name("OCT", random.Random(0), 0.5) != "OCT", "short names still get a typo"


def test_synonyms_come_from_the_table_and_match_whole_terms():
    assert synonym_name("malignant tumor", random.Random(0), 1.0).split(" ")[0] == "cancerous"
    assert synonym_name("malignant tumor", random.Random(0), 1.0).split(" ")[1] in ("neoplasm", "mass")
    one = synonym_name("malignant tumor", random.Random(0), 0.1).split(" ")
    assert len(one) == 2 and sum(a != b for a, b in zip(["malignant", "tumor"], one)) == 1, "one term of two"
    assert synonym_name("Kidney Stone", random.Random(0), 1.0) in ("nephrolithiasis", "renal calculus"), \
        "case-insensitive, the longest term first"
    assert synonym_name("tumorous growth", random.Random(0), 1.0) == "tumorous growth", "no partial words"


def test_class_names_are_seeded_per_class_whatever_the_order_or_subset():
    typo = PERTURBATIONS["typo"]
    names = ["benign lesion", "malignant tumor", "normal tissue"]
    full = typo.class_names(names, 0.5, seed=0)
    assert typo.class_names(names[::-1], 0.5, seed=0) == full[::-1]
    assert typo.class_names(names[1:], 0.5, seed=0) == full[1:]
    assert PERTURBATIONS["none"].class_names(names, 0.5, seed=0) == names
    assert any(typo.class_names(names, 0.5, seed=s) != full for s in range(1, 5))


# ---------------------------------------------------------------- descriptions

BANK = {
    "glioma tumor": [f"glioma sentence {i} about a Glioma Tumor mass" for i in range(10)],
    "normal brain": [f"normal sentence {i} unlike a glioma tumor" for i in range(10)],
}


@pytest.mark.parametrize("total, severity, expected", [(10, 0.5, 5), (10, 0.01, 1), (3, 1.0, 3), (50, 0.3, 15)])
def test_affected_count(total, severity, expected):
    assert affected_count(total, severity) == expected


def test_swap_descriptions_takes_the_share_from_other_classes():
    swapped = swap_descriptions(BANK, rng_of, 0.3)
    for classname, sentences in swapped.items():
        other = [s for c, ss in BANK.items() if c != classname for s in ss]
        foreign = [s for s in sentences if s not in BANK[classname]]
        assert len(foreign) == 3 and all(s in other for s in foreign)
        assert [s for s in sentences if s in BANK[classname]] == [s for s in BANK[classname] if s in sentences]
    assert swap_descriptions({"only": ["a b c"]}, rng_of, 1.0) == {"only": ["a b c"]}
    assert swap_descriptions(BANK, rng_of, 0.3) == swapped, "seeded"


def test_truncate_descriptions_cuts_the_share_to_the_first_half():
    cut = truncate_descriptions(BANK, rng_of, 0.2)
    for classname, sentences in cut.items():
        short = [(s, o) for s, o in zip(sentences, BANK[classname]) if s != o]
        assert len(short) == 2
        for s, o in short:
            words = o.split()
            assert s.split() == words[:(len(words) + 1) // 2]


def test_drop_words_deletes_some_and_keeps_some_in_order():
    sentence = "a dark crimson mass with striped texture near the upper right"
    for seed in range(20):
        for severity in (0.01, 0.5, 1.0):
            dropped = drop_words_from(sentence, random.Random(seed), severity).split()
            words = iter(sentence.split())
            assert all(w in words for w in dropped), "a subsequence of the original words"
            assert 1 <= len(dropped) < len(sentence.split())


def test_renamed_classes_are_renamed_inside_descriptions():
    renamed = rename_mentions(BANK, {"glioma tumor": "glial neoplasm", "normal brain": "normal brain"})
    assert renamed["glioma tumor"][0] == "glioma sentence 0 about a glial neoplasm mass"
    assert renamed["normal brain"][0] == "normal sentence 0 unlike a glial neoplasm"
    bank = PERTURBATIONS["typo"].bank(BANK, 1.0, seed=0)
    typo = PERTURBATIONS["typo"].class_names(list(BANK), 1.0, seed=0)[0]
    assert bank["glioma tumor"][0].endswith(f"about a {typo} mass")


def test_conditions_put_the_clean_reference_first():
    labels = [c.label for c in conditions_from(["typo", "none", "drop_words"], [0.2, 0.6])]
    assert labels == ["none", "typo@0.2", "typo@0.6", "drop_words@0.2", "drop_words@0.6"]
    with pytest.raises(ConfigError, match="Unknown perturbation"):
        conditions_from(["typos"], [0.5])
    with pytest.raises(ConfigError, match="severity"):
        conditions_from(["typo"], [1.5])


def test_saved_configs_keep_their_strings_and_tuples():
    cfg = robustness.default_config()
    robustness.assign_saved(cfg, {"INPUT": {"SIZE": [32, 32]}, "TRAINER": {"VMFCOOP": {"VOCAB_TEMPLATE": "{}"}}})
    assert cfg.INPUT.SIZE == (32, 32) and cfg.TRAINER.VMFCOOP.VOCAB_TEMPLATE == "{}"
    with pytest.raises(ConfigError, match="NOT_A_KEY"):
        robustness.assign_saved(cfg, {"INPUT": {"NOT_A_KEY": 1}})


def test_test_new_runs_load_their_train_base_twin():
    run = os.path.join("out", "base2new", "test_new", "btmri", "shots_16", "CoOp", "default", "seed1")
    assert train_base_twin(run) == os.path.join("out", "base2new", "train_base", "btmri", "shots_16", "CoOp",
                                                "default", "seed1")
    assert train_base_twin(os.path.join("out", "btmri", "shots_16", "CoOp", "default", "seed1")) is None


# ---------------------------------------------------------------- end to end

TRAINED = {"CoOp": "COOP", "BioVLM": "BIOVLM"}


def train(repo_root, root, out, trainer, *extra):
    learns = trainer in TRAINED
    opts = ["OPTIM.MAX_EPOCH", "1" if learns else "0", "OPTIM.LR", "0.1", "OPTIM.WARMUP_EPOCH", "0",
            "INPUT.TRANSFORMS", "('normalize',)", *([f"TRAINER.{TRAINED[trainer]}.CSC", "True"] if learns else [])]
    argv = ["--root", root, "--output-dir", out, "--seed", "1", "--trainer", trainer, "--backbone", "tiny-clip",
            "--config-file", os.path.join(repo_root, "configs", "trainers", trainer, "few_shot", "default.yaml"),
            *extra, "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "4", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16", *opts]
    assert train_main(argv) == 0
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_table_for_several_trainers_reproduces_their_clean_accuracy(repo_root, synthetic_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    recorded = {t: train(repo_root, synthetic_root, str(runs / t), t)["metrics"]["accuracy"]
                for t in ("CoOp", "BioVLM", "ZeroShotEnsemble")}
    capsys.readouterr()
    out = tmp_path / "tables"
    assert robustness.main(["--model-dirs", str(runs), "--out", str(out), "--severity", "0.5"]) == 0
    printed = capsys.readouterr().out

    header = next(line for line in printed.splitlines() if line.startswith("Trainer"))
    expected_columns = ["recorded", "none", "typo@0.5", "synonym@0.5", "swap_descriptions@0.5",
                        "truncate_descriptions@0.5", "drop_words@0.5"]
    assert header.split() == robustness.RUN_COLUMNS + expected_columns
    for trainer, accuracy in recorded.items():
        row = next(line for line in printed.splitlines() if line.split()[:1] == [trainer])
        assert row.split()[6:8] == [f"{accuracy:.2f}", f"{accuracy:.2f}"], "'none' reproduces the run"

    rows = read_csv(out / "robustness.csv")
    assert len(rows) == 3 * 6
    cell = {(r["trainer"], r["perturbation"]): r for r in rows}
    for trainer, accuracy in recorded.items():
        assert float(cell[trainer, "none"]["accuracy"]) == pytest.approx(accuracy, abs=1e-9)
        assert float(cell[trainer, "none"]["recorded_accuracy"]) == accuracy
        assert cell[trainer, "typo"]["reaches_classifier"] == "True", "class names enter every trainer's text"
    for trainer in ("CoOp", "BioVLM"):  # descriptions are training-only for these
        for name in ("swap_descriptions", "truncate_descriptions", "drop_words"):
            assert cell[trainer, name]["reaches_classifier"] == "False"
            assert cell[trainer, name]["accuracy"] == cell[trainer, "none"]["accuracy"]
    for name in ("swap_descriptions", "truncate_descriptions", "drop_words"):
        assert cell["ZeroShotEnsemble", name]["reaches_classifier"] == "True"
    assert "| Trainer" in (out / "robustness.md").read_text()
    assert "Perturbed class names" in printed


def test_test_new_run_uses_the_train_base_checkpoint(repo_root, synthetic_root, tmp_path, capsys):
    base = tmp_path / "base2new" / "train_base" / "SyntheticMed" / "CoOp" / "seed1"
    new = tmp_path / "base2new" / "test_new" / "SyntheticMed" / "CoOp" / "seed1"
    train(repo_root, synthetic_root, str(base), "CoOp", "DATASET.SUBSAMPLE_CLASSES", "base")
    novel = train(repo_root, synthetic_root, str(new), "CoOp", "--eval-only", "--model-dir", str(base),
                  "--load-epoch", "1", "DATASET.SUBSAMPLE_CLASSES", "new")
    assert not (new / "prompt_learner").exists()
    capsys.readouterr()
    assert robustness.main(["--model-dirs", str(new), "--perturbations", "typo", "--out", str(tmp_path / "t"),
                            "--format", "csv"]) == 0
    rows = read_csv(tmp_path / "t" / "robustness.csv")
    assert [r["perturbation"] for r in rows] == ["none", "typo"]
    assert float(rows[0]["accuracy"]) == novel["metrics"]["accuracy"]
    assert rows[0]["subsample_classes"] == "new"


def test_missing_checkpoints_are_a_clear_error(repo_root, synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    train(repo_root, synthetic_root, str(run), "CoOp")
    for path in (run / "prompt_learner").iterdir():
        path.unlink()
    assert robustness.main(["--model-dirs", str(run), "--out", str(tmp_path / "t")]) == 2
    assert "No checkpoint for" in capsys.readouterr().err


def test_runs_sharing_a_setting_are_averaged():
    conditions = conditions_from(["typo"], [0.5])

    def report(seed, clean, typo, reached=True):
        results = {"trainer": "CoOp", "dataset": "BTMRI", "backbone": "BiomedCLIP", "num_shots": 16, "seed": seed,
                   "subsample_classes": "all", "metrics": {"accuracy": clean}}
        run = robustness.Run(f"/runs/seed{seed}", results, "CoOp")
        return robustness.RunReport(run, {"none": robustness.Cell(clean, 0.0, True),
                                          "typo@0.5": robustness.Cell(typo, typo - clean, reached)})

    assert robustness.mean_table([report(1, 80.0, 70.0)], conditions) is None, "nothing to average"
    header, rows = robustness.mean_table([report(1, 80.0, 70.0), report(2, 90.0, 86.0)], conditions)
    assert header[-2:] == ["none", "typo@0.5"]
    assert rows == [["CoOp", "BiomedCLIP", "BTMRI", 16, "all", 2, "85.00", "78.00 (-7.00)"]]
    _, rows = robustness.run_table([report(1, 80.0, 80.0, reached=False)], conditions)
    assert rows[0][-1] == "80.00 (unused)"
