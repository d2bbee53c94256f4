"""Tests of vmfcoop.tools.aggregate: the math against hand-computed values, and the tables of synthetic trees."""
import csv
import io
import json
import math
import os

import pytest
from vmfcoop.tools import aggregate as agg


def write_result(root, trainer, dataset, shots, seed, accuracy, subsample="all", tag_dir="default", **fields):
    """One results.json in the layout the scripts use; returns its path."""
    phase = {"all": [], "base": ["base2new", "train_base"], "new": ["base2new", "test_new"]}[subsample]
    folder = os.path.join(root, *phase, dataset, f"shots_{shots}", trainer, tag_dir, f"seed{seed}")
    os.makedirs(folder, exist_ok=True)
    data = {"trainer": trainer, "dataset": dataset, "backbone": "BiomedCLIP", "num_shots": shots, "seed": seed,
            "subsample_classes": subsample, "split": "test", "eval_only": subsample == "new", "epoch": 5,
            "metrics": {"accuracy": accuracy, "error_rate": 100 - accuracy, "macro_f1": accuracy - 10}}
    data.update(fields)
    path = os.path.join(folder, "results.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


# ----------------------------------------------------------------------------------------------------------
# Math
# ----------------------------------------------------------------------------------------------------------
def test_sample_std_uses_ddof_1_and_is_undefined_for_one_value():
    assert agg.sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)  # population std would be 0.8165
    assert agg.sample_std([80.0, 82.0]) == pytest.approx(math.sqrt(2))
    assert agg.sample_std([80.0]) is None


def test_harmonic_mean():
    assert agg.harmonic_mean(60.0, 40.0) == pytest.approx(48.0)
    assert agg.harmonic_mean(0.0, 0.0) == 0.0


def test_summarize_marks_missing_seeds():
    s = agg.summarize({3: 70.0, 1: 50.0}, n_expected=3)
    assert (s.mean, s.seeds, s.n, s.incomplete) == (60.0, (1, 3), 2, True)
    assert s.std == pytest.approx(math.sqrt(200))
    assert agg.summarize({}, 3) is None


def test_average_over_datasets_averages_per_seed_on_common_seeds():
    a = {1: 50.0, 2: 60.0, 3: 70.0}
    b = {1: 70.0, 2: 80.0}  # seed 3 missing: only seeds 1 and 2 are averaged
    s = agg.average_over_datasets([a, b], n_expected=3)
    assert s.seeds == (1, 2)
    assert s.mean == pytest.approx(65.0)  # per seed: 60, 70
    assert s.std == pytest.approx(math.sqrt(50))
    assert agg.average_over_datasets([a, {}], 3) is None  # a dataset without any run
    assert agg.average_over_datasets([{1: 1.0}, {2: 2.0}], 3) is None  # no common seed


def test_base_novel_average_gives_both_hm_conventions():
    # dataset A: base 85, novel 50 -> HM 62.963; dataset B: 60, 60 -> HM 60
    a = ({1: 80.0, 2: 90.0}, {1: 40.0, 2: 60.0})
    b = ({1: 60.0, 2: 60.0}, {1: 60.0, 2: 60.0})
    avg = agg.base_novel_average([a, b], n_expected=2)
    assert avg.base.mean == pytest.approx(72.5) and avg.base.std == pytest.approx(math.sqrt(12.5))
    assert avg.novel.mean == pytest.approx(55.0) and avg.novel.std == pytest.approx(math.sqrt(50))
    assert avg.hm == pytest.approx(2 * 72.5 * 55 / 127.5)  # 62.549
    assert avg.mean_of_hms == pytest.approx((2 * 85 * 50 / 135 + 60) / 2)  # 61.481


def test_base_novel_average_uses_seeds_paired_in_every_dataset():
    a = ({1: 80.0, 2: 90.0}, {1: 40.0, 2: 60.0})
    b = ({1: 60.0, 2: 70.0}, {1: 60.0})  # seed 2 unpaired in B
    avg = agg.base_novel_average([a, b], n_expected=2)
    assert avg.base.seeds == (1,) and avg.base.mean == pytest.approx(70.0) and avg.base.std is None
    assert avg.novel.mean == pytest.approx(50.0)
    assert agg.base_novel_average([a, ({}, {})], 2) is None


# ----------------------------------------------------------------------------------------------------------
# Loading and labels
# ----------------------------------------------------------------------------------------------------------
def test_tag_from_path():
    assert agg.tag_from_path("/o/BTMRI/shots_1/CoOp/nctx4/seed1/results.json", "CoOp") == "nctx4"
    assert agg.tag_from_path("/o/BTMRI/shots_1/CoOp/a/b/seed2/results.json", "CoOp") == "a/b"
    assert agg.tag_from_path("/o/BTMRI/shots_1/CoOp/seed1/results.json", "CoOp") == ""
    assert agg.tag_from_path("/o/somewhere/seed1/results.json", "CoOp") == ""


def test_method_labels_disambiguate_tags_and_backbones():
    coop_a, coop_b = agg.Method("CoOp", "default", "B"), agg.Method("CoOp", "long", "B")
    vmf = agg.Method("VMFCoOp", "default", "B")
    assert agg.method_labels({coop_a, coop_b, vmf}) == {coop_a: "CoOp:default", coop_b: "CoOp:long", vmf: "VMFCoOp"}
    clip = agg.Method("VMFCoOp", "default", "CLIP")
    assert agg.method_labels({vmf, clip}) == {vmf: "VMFCoOp@B", clip: "VMFCoOp@CLIP"}


def test_groups_by_file_fields_not_by_path(tmp_path):
    path = write_result(tmp_path, "CoOp", "BTMRI", 1, 1, 50.0)
    misleading = tmp_path / "BUSI" / "shots_8" / "CoOp" / "default" / "seed9"
    misleading.mkdir(parents=True)
    os.replace(path, misleading / "results.json")
    (run,), problems = agg.load_runs(agg.find_results(tmp_path))
    assert (run.dataset, run.num_shots, run.seed, run.method.tag) == ("BTMRI", 1, 1, "default")
    assert problems == []


def test_tag_field_overrides_path(tmp_path):
    write_result(tmp_path, "CoOp", "BTMRI", 1, 1, 50.0)
    write_result(tmp_path, "CoOp", "BTMRI", 1, 2, 50.0, tag="ablation")
    runs, _ = agg.load_runs(agg.find_results(tmp_path))
    assert sorted(r.method.tag for r in runs) == ["ablation", "default"]


def test_problems_are_reported_not_used(tmp_path):
    kept = write_result(tmp_path, "CoOp", "BTMRI", 1, 1, 50.0)
    copy = tmp_path / "backup" / "CoOp" / "default" / "seed1"
    copy.mkdir(parents=True)
    (copy / "results.json").write_text(open(kept).read())  # the same run again: duplicate
    write_result(tmp_path, "CoOp", "BTMRI", 1, 2, 60.0, split="val")
    broken = tmp_path / "broken" / "seed1"
    broken.mkdir(parents=True)
    (broken / "results.json").write_text("{not json")
    (tmp_path / "nofields").mkdir()
    (tmp_path / "nofields" / "results.json").write_text('{"trainer": "CoOp"}')
    runs, problems = agg.load_runs(agg.find_results(tmp_path))
    assert [r.path for r in runs] == [kept]
    text = "\n".join(problems)
    assert "duplicate" in text and "split 'val'" in text and "broken" in text and "lacks field(s) dataset" in text
    latex = agg.render_report(agg.build_report(agg.find_results(tmp_path)), "latex")
    assert "\n% Problems:\n% - split 'val'" in latex and "\n% - duplicate run, ignored: " in latex


# ----------------------------------------------------------------------------------------------------------
# Few-shot tables on a synthetic tree
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def fewshot_tree(tmp_path):
    """CoOp: complete. VMFCoOp: BUSI K=2 lacks seed 3; BUSI K=4 has no run at all."""
    root = tmp_path / "output"
    for seed in (1, 2, 3):
        for k in (1, 2, 4):
            write_result(root, "CoOp", "BTMRI", k, seed, 48.0 + k + 2 * seed)  # K=1: 51, 53, 55
            write_result(root, "CoOp", "BUSI", k, seed, 56.0 + k + 4 * seed)  # K=1: 61, 65, 69
            write_result(root, "VMFCoOp", "BTMRI", k, seed, 60.0 + k + seed)  # K=2: 63, 64, 65
            if k == 1 or (k == 2 and seed < 3):
                write_result(root, "VMFCoOp", "BUSI", k, seed, 70.0 + k + 3 * seed)  # K=2: 75, 78
    return root


def cell_text(report, dataset, method, column):
    """A few-shot cell as printed; ``dataset`` "average" picks the table averaged over datasets."""
    tables = report.tables("fewshot")
    table = tables[0] if dataset == "average" else next(t for t in tables if t.title.endswith(f", {dataset}"))
    row = next(r for r in table.rows if r[0] == method)
    return agg.format_cell(row[table.header.index(column)], "text")


def test_fewshot_cells_and_average(fewshot_tree):
    report = agg.build_report(agg.find_results(fewshot_tree))
    assert cell_text(report, "BTMRI", "CoOp", "K=1") == "53.00 ± 2.00"
    assert cell_text(report, "BUSI", "CoOp", "K=1") == "65.00 ± 4.00"
    # per seed: (51+61)/2=56, 59, 62 -> 59 ± 3
    assert cell_text(report, "average", "CoOp", "K=1") == "59.00 ± 3.00"
    # BUSI K=2 has seeds 1, 2 only: its cell and the average (on seeds 1, 2) are marked
    assert cell_text(report, "BUSI", "VMFCoOp", "K=2") == "76.50 ± 2.12 (2/3)"
    # per seed: (63+75)/2=69, (64+78)/2=71 -> 70 ± 1.41
    assert cell_text(report, "average", "VMFCoOp", "K=2") == "70.00 ± 1.41 (2/3)"
    # BUSI K=4 missing entirely: the cell and the average are missing
    assert cell_text(report, "BUSI", "VMFCoOp", "K=4") == agg.MISSING
    assert cell_text(report, "average", "VMFCoOp", "K=4") == agg.MISSING
    assert report.fewshot.missing == [
        "VMFCoOp | BUSI | K=2: missing seeds 3 (2/3 present)",
        "VMFCoOp | BUSI | K=4: missing seeds 1, 2, 3 (0/3 present)",
    ]


def test_fewshot_text_markdown_latex(fewshot_tree):
    report = agg.build_report(agg.find_results(fewshot_tree))
    text = agg.render_report(report, "text")
    assert "Few-shot accuracy, average over 2 datasets (BTMRI, BUSI)" in text
    assert "\nMissing runs:\n- VMFCoOp | BUSI | K=2: missing seeds 3" in text
    assert "ddof=1" in text
    markdown = agg.render_report(report, "markdown")
    assert "### Few-shot accuracy, BTMRI" in markdown
    assert "| CoOp     | 59.00 ± 3.00 |" in markdown
    latex = agg.render_report(report, "latex")
    assert latex.count(r"\begin{tabular}{lccc}") == 3 and latex.count(r"\bottomrule") == 3
    assert r"CoOp & 59.00 $\pm$ 3.00 & " in latex
    assert "\n% Missing runs:\n% - VMFCoOp | BUSI | K=2: missing seeds 3" in latex
    # VMFCoOp K=1 per seed: (62+74)/2, (63+77)/2, (64+80)/2 -> 70 ± 2
    assert r"VMFCoOp & 70.00 $\pm$ 2.00 & 70.00 $\pm$ 1.41 (2/3) & -- \\" in latex
    assert "±" not in latex.split("% Few-shot")[1]  # only LaTeX markup inside the tables


def test_fewshot_csv_rows(fewshot_tree):
    report = agg.build_report(agg.find_results(fewshot_tree))
    rows = list(csv.DictReader(io.StringIO(agg.render_protocol(report, "fewshot", "csv"))))
    assert len(rows) == 2 * 3 * 3  # methods x (2 datasets + Average) x K
    by_key = {(r["method"], r["dataset"], r["num_shots"]): r for r in rows}
    assert by_key[("CoOp", "Average", "1")] == {
        "method": "CoOp", "trainer": "CoOp", "tag": "default", "backbone": "BiomedCLIP", "dataset": "Average",
        "num_shots": "1", "metric": "accuracy", "mean": "59.0", "std": "3.0", "n_seeds": "3",
        "n_seeds_expected": "3", "seeds": "1 2 3"}
    assert (by_key[("VMFCoOp", "BUSI", "2")]["n_seeds"], by_key[("VMFCoOp", "BUSI", "2")]["seeds"]) == ("2", "1 2")
    assert by_key[("VMFCoOp", "BUSI", "4")]["mean"] == "" and by_key[("VMFCoOp", "Average", "4")]["n_seeds"] == "0"


def test_macro_f1_metric(fewshot_tree):
    report = agg.build_report(agg.find_results(fewshot_tree), metric="macro_f1")
    assert cell_text(report, "average", "CoOp", "K=1") == "49.00 ± 3.00"
    assert "Few-shot macro-f1" in agg.render_report(report, "text")
    with pytest.raises(ValueError, match="Unknown metric"):
        agg.build_report([], metric="auc")


# ----------------------------------------------------------------------------------------------------------
# Base-to-novel tables
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def base2new_tree(tmp_path):
    """CoOp on BTMRI and BUSI, seeds 1-2; the BUSI seed-2 novel run is missing (unpaired)."""
    root = tmp_path / "output"
    values = {("BTMRI", 1): (80, 40), ("BTMRI", 2): (90, 60), ("BUSI", 1): (60, 60), ("BUSI", 2): (70, 50)}
    for (dataset, seed), (base, novel) in values.items():
        write_result(root, "CoOp", dataset, 16, seed, float(base), subsample="base")
        if (dataset, seed) != ("BUSI", 2):
            write_result(root, "CoOp", dataset, 16, seed, float(novel), subsample="new")
    return root


def test_base2new_tables(base2new_tree):
    report = agg.build_report(agg.find_results(base2new_tree))
    assert report.fewshot is None
    average, btmri, busi = report.tables("base2new")
    assert average.header == ["Method", "Base", "Novel", "HM (of means)", "HM (mean of per-dataset HMs)"]
    text_row = lambda table: [agg.format_cell(c, "text") for c in table.rows[0]]  # noqa: E731
    assert text_row(btmri) == ["CoOp", "85.00 ± 7.07", "50.00 ± 14.14", f"{2 * 85 * 50 / 135:.2f}"]
    # BUSI: only seed 1 is paired, so base uses seed 1 only (70 of seed 2 is left out)
    assert text_row(busi) == ["CoOp", "60.00 (1/2)", "60.00 (1/2)", "60.00"]
    # average on seed 1 (the only seed paired everywhere): base (80+60)/2=70, novel (40+60)/2=50
    hm_of_means = 2 * 70 * 50 / 120
    mean_of_hms = (2 * 80 * 40 / 120 + 60) / 2
    assert text_row(average) == ["CoOp", "70.00 (1/2)", "50.00 (1/2)", f"{hm_of_means:.2f}", f"{mean_of_hms:.2f}"]
    assert report.base2new.missing == ["CoOp | BUSI | K=16: missing novel seeds 2 (1/2 present)"]
    rows = list(csv.DictReader(io.StringIO(agg.render_protocol(report, "base2new", "csv"))))
    avg_row = next(r for r in rows if r["dataset"] == "Average")
    assert float(avg_row["hm"]) == pytest.approx(hm_of_means, abs=1e-4)
    assert float(avg_row["mean_of_hms"]) == pytest.approx(mean_of_hms, abs=1e-4)
    assert next(r for r in rows if r["dataset"] == "BTMRI")["mean_of_hms"] == ""


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def test_cli_writes_every_format_and_plots(fewshot_tree, base2new_tree, tmp_path, capsys):
    out = tmp_path / "tables"
    assert agg.main([str(fewshot_tree), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Few-shot accuracy" in printed and "Base-to-novel accuracy, K=16" in printed
    expected = {"fewshot.csv", "fewshot.md", "fewshot.tex", "fewshot.txt", "base2new.csv", "base2new.md",
                "base2new.tex", "base2new.txt", "runs.csv", "fewshot_average.png", "fewshot_per_dataset.png",
                "base2new.png"}
    assert expected <= set(os.listdir(out))
    for name in ("fewshot_average.png", "fewshot_per_dataset.png", "base2new.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert len(runs) == 18 + 9 + 5 + 4 + 3  # few-shot CoOp, VMFCoOp BTMRI, VMFCoOp BUSI; base; new
    first = runs[0]
    assert (first["method"], first["dataset"], first["num_shots"], first["seed"], first["accuracy"]) == (
        "CoOp", "BTMRI", "1", "1", "51.0")


def test_cli_csv_format_and_plots_without_out(fewshot_tree, capsys):
    assert agg.main([str(fewshot_tree), "--format", "csv", "--plots"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("method,trainer,tag,backbone,dataset,num_shots,metric,mean,std,")
    assert (fewshot_tree / "tables" / "fewshot_average.png").stat().st_size > 0


def test_cli_without_results(tmp_path, capsys):
    assert agg.main([str(tmp_path)]) == 1
    assert "No results.json" in capsys.readouterr().err
    assert agg.main([str(tmp_path / "absent")]) == 2
