"""Aggregate ``results.json`` files into few-shot and base-to-novel tables (text, Markdown, CSV, LaTeX) and plots.

Usage::

    python -m vmfcoop.tools.aggregate OUTPUT_ROOT [--format text|markdown|csv|latex] [--out DIR]
                                      [--plots] [--metric accuracy|macro_f1]

Every ``results.json`` below OUTPUT_ROOT is one run of (trainer, dataset, num_shots, seed, subsample_classes).
Runs are grouped by the fields inside the file, never by its path. The rules:

* Method label: the trainer name, or ``Trainer:tag`` when one trainer appears with several tags, with
  ``@backbone`` appended when the runs use more than one backbone. The tag is the file's ``tag`` field if
  present, else the path component(s) between the trainer directory and the ``seed<S>`` directory.
* Few-shot runs are those with ``subsample_classes == "all"``. A cell (method, dataset, K) is the mean and
  sample standard deviation (ddof=1) over its seeds.
* Average over datasets (method, K): for every seed present in *every* dataset, the accuracies are averaged
  over datasets; the cell is the mean and sample std of these per-seed averages. It is "—" when some dataset
  has no run at all for this method and K.
* Base-to-novel: base runs have ``subsample_classes == "base"``, novel runs ``"new"``. They are paired by
  (method, dataset, K, seed); an unpaired run is listed as missing and not used. Per dataset, HM is the
  harmonic mean of the mean base and the mean novel accuracy. The average row gives both conventions in use:
  "HM of means" = HM(average base, average novel) (vMFCoOp, OGKD) and "mean of HMs" = mean over datasets of
  the per-dataset HMs (BiomedCoOp README), both on the seeds paired in every dataset.
* Expected sets: the seeds, datasets and K values found anywhere among that protocol's runs. A cell with
  fewer seeds than expected is marked ``(n/N)``; a cell without any run is "—". Every missing run is listed.
* Runs evaluated on another split than ``test``, unreadable files and duplicated runs are reported, not used.
"""
import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass

from tabulate import tabulate

METRICS = ("accuracy", "macro_f1")
FORMATS = ("text", "markdown", "csv", "latex")
MISSING = "—"
AVERAGE = "Average"
SEED_DIR = re.compile(r"^seed-?\d+$")


# ----------------------------------------------------------------------------------------------------------
# Math: small pure functions
# ----------------------------------------------------------------------------------------------------------
def mean(values):
    return statistics.fmean(values)


def sample_std(values):
    """Sample standard deviation (ddof=1); None for fewer than two values, where it is undefined."""
    return statistics.stdev(values) if len(values) >= 2 else None


def harmonic_mean(a, b):
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


@dataclass(frozen=True)
class Summary:
    """Mean ± sample std of one quantity over seeds; ``n_expected`` is how many seeds there should be."""

    mean: float
    std: object  # float, or None with a single seed
    seeds: tuple
    n_expected: int

    @property
    def n(self):
        return len(self.seeds)

    @property
    def incomplete(self):
        return self.n < self.n_expected


def summarize(value_by_seed, n_expected):
    """Summary of {seed: value}; None when there is no value at all."""
    if not value_by_seed:
        return None
    seeds = tuple(sorted(value_by_seed))
    values = [value_by_seed[s] for s in seeds]
    return Summary(mean(values), sample_std(values), seeds, n_expected)


def seeds_in_every(value_by_seed_per_dataset):
    """Seeds present in every one of the {seed: value} dicts given (empty if one dict is empty)."""
    seed_sets = [set(d) for d in value_by_seed_per_dataset]
    return set.intersection(*seed_sets) if seed_sets else set()


def average_over_datasets(value_by_seed_per_dataset, n_expected):
    """Per seed, average over datasets; then summarize over seeds. Uses only seeds present in every dataset.

    ``value_by_seed_per_dataset`` is a list with one {seed: value} dict per expected dataset; an empty dict
    (dataset missing) or no common seed gives None.
    """
    common = seeds_in_every(value_by_seed_per_dataset)
    per_seed = {s: mean([d[s] for d in value_by_seed_per_dataset]) for s in common}
    return summarize(per_seed, n_expected)


# ----------------------------------------------------------------------------------------------------------
# Loading and grouping
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    trainer: str
    tag: str
    backbone: str


@dataclass(frozen=True)
class Run:
    method: Method
    dataset: str
    num_shots: int
    seed: int
    subsample_classes: str
    split: str
    eval_only: bool
    epoch: object
    metrics: dict
    num_examples: object
    elapsed_s: object
    path: str


def find_results(root):
    """Every results.json below ``root``, sorted; directories starting with '.' are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "results.json" in filenames:
            found.append(os.path.join(dirpath, "results.json"))
    return sorted(found)


def tag_from_path(path, trainer):
    """The path component(s) between the last ``<trainer>`` directory and the ``seed<S>`` directory."""
    parts = os.path.normpath(os.path.dirname(os.path.abspath(path))).split(os.sep)
    if parts and SEED_DIR.match(parts[-1]):
        parts = parts[:-1]
    if trainer not in parts:
        return ""
    last = len(parts) - 1 - parts[::-1].index(trainer)
    return "/".join(parts[last + 1:])


def run_from_dict(data, path):
    """A Run from the content of one results.json; KeyError names the missing field."""
    required = ("trainer", "dataset", "num_shots", "seed", "subsample_classes", "metrics")
    absent = [key for key in required if key not in data]
    if absent:
        raise KeyError(f"{path} lacks field(s) {', '.join(absent)}")
    trainer = str(data["trainer"])
    tag = str(data["tag"]) if data.get("tag") is not None else tag_from_path(path, trainer)
    return Run(
        method=Method(trainer, tag, str(data.get("backbone", ""))),
        dataset=str(data["dataset"]),
        num_shots=int(data["num_shots"]),
        seed=int(data["seed"]),
        subsample_classes=str(data["subsample_classes"]),
        split=str(data.get("split", "test")),
        eval_only=bool(data.get("eval_only", False)),
        epoch=data.get("epoch"),
        metrics=dict(data["metrics"]),
        num_examples=data.get("num_examples"),
        elapsed_s=data.get("elapsed_s"),
        path=path,
    )


def load_runs(paths):
    """(runs, problems): unreadable files, non-test splits and duplicates go to ``problems``, not ``runs``."""
    runs, problems, seen = [], [], {}
    for path in paths:
        try:
            with open(path) as f:
                run = run_from_dict(json.load(f), path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"unreadable, ignored: {path} ({err})")
            continue
        if run.split != "test":
            problems.append(f"split '{run.split}' (not test), ignored: {path}")
            continue
        key = (run.method, run.dataset, run.num_shots, run.seed, run.subsample_classes)
        if key in seen:
            problems.append(f"duplicate run, ignored: {path} (same run as {seen[key]}); delete one of them")
            continue
        seen[key] = path
        runs.append(run)
    return runs, problems


def method_labels(methods):
    """{Method: label}: trainer, ':tag' if that trainer has several tags, '@backbone' if backbones differ."""
    tags_by_trainer = defaultdict(set)
    for m in methods:
        tags_by_trainer[m.trainer].add(m.tag)
    several_backbones = len({m.backbone for m in methods}) > 1
    labels = {}
    for m in methods:
        label = m.trainer
        if len(tags_by_trainer[m.trainer]) > 1:
            label += f":{m.tag or '(no tag)'}"
        if several_backbones:
            label += f"@{m.backbone or '?'}"
        labels[m] = label
    return labels


def sort_key_dataset(name):
    return name.lower()


def index_by_seed(runs, metric):
    """{(Method, dataset, K): {seed: metric value}}."""
    table = defaultdict(dict)
    for run in runs:
        if metric not in run.metrics:
            raise KeyError(f"{run.path} has no metric '{metric}' (it has: {', '.join(run.metrics)})")
        table[(run.method, run.dataset, run.num_shots)][run.seed] = float(run.metrics[metric])
    return table


def describe_missing(label, dataset, shots, present, expected, what="seeds"):
    missing = sorted(set(expected) - set(present))
    if not missing:
        return None
    listed = ", ".join(str(s) for s in missing)
    return f"{label} | {dataset} | K={shots}: missing {what} {listed} ({len(present)}/{len(expected)} present)"


# ----------------------------------------------------------------------------------------------------------
# Protocol summaries
# ----------------------------------------------------------------------------------------------------------
@dataclass
class FewShotSummary:
    methods: list
    labels: dict
    datasets: list
    shots: list
    seeds: list
    cells: dict  # (Method, dataset, K) -> Summary or None
    averages: dict  # (Method, K) -> Summary or None
    missing: list


def summarize_fewshot(runs, metric, labels):
    runs = [r for r in runs if r.subsample_classes == "all"]
    if not runs:
        return None
    by_seed = index_by_seed(runs, metric)
    methods = sorted({r.method for r in runs}, key=lambda m: labels[m])
    datasets = sorted({r.dataset for r in runs}, key=sort_key_dataset)
    shots = sorted({r.num_shots for r in runs})
    seeds = sorted({r.seed for r in runs})
    cells, averages, missing = {}, {}, []
    for m in methods:
        for k in shots:
            per_dataset = [by_seed.get((m, d, k), {}) for d in datasets]
            for d, values in zip(datasets, per_dataset):
                cells[(m, d, k)] = summarize(values, len(seeds))
                line = describe_missing(labels[m], d, k, values, seeds)
                if line:
                    missing.append(line)
            averages[(m, k)] = average_over_datasets(per_dataset, len(seeds))
    return FewShotSummary(methods, labels, datasets, shots, seeds, cells, averages, missing)


@dataclass(frozen=True)
class BaseNovel:
    base: Summary
    novel: Summary
    hm: float  # HM of the two means
    mean_of_hms: object = None  # average rows only: mean over datasets of per-dataset HMs


def base_novel_from_pairs(base_by_seed, novel_by_seed, seeds, n_expected):
    """BaseNovel on the given seeds (each must be in both dicts); None when there is no seed."""
    if not seeds:
        return None
    base = summarize({s: base_by_seed[s] for s in seeds}, n_expected)
    novel = summarize({s: novel_by_seed[s] for s in seeds}, n_expected)
    return BaseNovel(base, novel, harmonic_mean(base.mean, novel.mean))


def base_novel_average(pairs_per_dataset, n_expected):
    """Average row over datasets from a list of (base {seed: v}, novel {seed: v}), one per expected dataset.

    Uses the seeds paired in every dataset: per seed, base and novel are averaged over datasets, then
    summarized over seeds. ``hm`` is the HM of the two averages; ``mean_of_hms`` is the mean over datasets of
    HM(mean base, mean novel) computed per dataset on the same seeds.
    """
    paired = [seeds_in_every([b, n]) for b, n in pairs_per_dataset]
    common = set.intersection(*paired) if paired else set()
    if not common:
        return None
    base = average_over_datasets([{s: b[s] for s in common} for b, _ in pairs_per_dataset], n_expected)
    novel = average_over_datasets([{s: n[s] for s in common} for _, n in pairs_per_dataset], n_expected)
    per_dataset_hms = [base_novel_from_pairs(b, n, common, n_expected).hm for b, n in pairs_per_dataset]
    return BaseNovel(base, novel, harmonic_mean(base.mean, novel.mean), mean(per_dataset_hms))


@dataclass
class BaseToNovelSummary:
    methods: list
    labels: dict
    datasets: list
    shots: list
    seeds: list
    cells: dict  # (Method, dataset, K) -> BaseNovel or None
    averages: dict  # (Method, K) -> BaseNovel or None
    missing: list


def summarize_base2new(runs, metric, labels):
    base_runs = [r for r in runs if r.subsample_classes == "base"]
    novel_runs = [r for r in runs if r.subsample_classes == "new"]
    if not base_runs and not novel_runs:
        return None
    both = base_runs + novel_runs
    base_by_seed, novel_by_seed = index_by_seed(base_runs, metric), index_by_seed(novel_runs, metric)
    methods = sorted({r.method for r in both}, key=lambda m: labels[m])
    datasets = sorted({r.dataset for r in both}, key=sort_key_dataset)
    shots = sorted({r.num_shots for r in both})
    seeds = sorted({r.seed for r in both})
    cells, averages, missing = {}, {}, []
    for m in methods:
        for k in shots:
            pairs = [(base_by_seed.get((m, d, k), {}), novel_by_seed.get((m, d, k), {})) for d in datasets]
            for d, (b, n) in zip(datasets, pairs):
                cells[(m, d, k)] = base_novel_from_pairs(b, n, sorted(seeds_in_every([b, n])), len(seeds))
                for side, values in (("base", b), ("novel", n)):
                    line = describe_missing(labels[m], d, k, values, seeds, what=f"{side} seeds")
                    if line:
                        missing.append(line)
            averages[(m, k)] = base_novel_average(pairs, len(seeds))
    return BaseToNovelSummary(methods, labels, datasets, shots, seeds, cells, averages, missing)


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Table:
    title: str
    header: list
    rows: list  # cells: str, float, Summary or None


def format_cell(cell, style):
    """One table cell as text; ``style`` is 'text' (also Markdown) or 'latex'."""
    if cell is None:
        return MISSING if style != "latex" else "--"
    if isinstance(cell, str):
        return latex_escape(cell) if style == "latex" else cell
    if isinstance(cell, float):
        return f"{cell:.2f}"
    pm = r"$\pm$" if style == "latex" else "±"
    text = f"{cell.mean:.2f}" if cell.std is None else f"{cell.mean:.2f} {pm} {cell.std:.2f}"
    if cell.incomplete:
        text += f" ({cell.n}/{cell.n_expected})"
    return text


def fewshot_tables(summary, metric_name):
    header = ["Method"] + [f"K={k}" for k in summary.shots]
    average_rows = [
        [summary.labels[m]] + [summary.averages[(m, k)] for k in summary.shots] for m in summary.methods
    ]
    tables = [
        Table(
            f"Few-shot {metric_name}, average over {len(summary.datasets)} datasets "
            f"({', '.join(summary.datasets)})",
            header,
            average_rows,
        )
    ]
    for d in summary.datasets:
        rows = [[summary.labels[m]] + [summary.cells[(m, d, k)] for k in summary.shots] for m in summary.methods]
        tables.append(Table(f"Few-shot {metric_name}, {d}", header, rows))
    return tables


def base2new_tables(summary, metric_name):
    tables = []
    for k in summary.shots:
        header = ["Method", "Base", "Novel", "HM (of means)", "HM (mean of per-dataset HMs)"]
        rows = []
        for m in summary.methods:
            avg = summary.averages[(m, k)]
            values = [avg.base, avg.novel, avg.hm, avg.mean_of_hms] if avg else [None] * 4
            rows.append([summary.labels[m]] + values)
        title = (
            f"Base-to-novel {metric_name}, K={k}, average over {len(summary.datasets)} datasets "
            f"({', '.join(summary.datasets)})"
        )
        tables.append(Table(title, header, rows))
        for d in summary.datasets:
            rows = []
            for m in summary.methods:
                cell = summary.cells[(m, d, k)]
                rows.append([summary.labels[m]] + ([cell.base, cell.novel, cell.hm] if cell else [None] * 3))
            tables.append(Table(f"Base-to-novel {metric_name}, K={k}, {d}", ["Method", "Base", "Novel", "HM"], rows))
    return tables


def latex_escape(text):
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(replacements.get(ch, ch) for ch in text)


def render_latex(table):
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), titled by a comment line."""
    lines = [f"% {table.title}", r"\begin{tabular}{l" + "c" * (len(table.header) - 1) + "}", r"\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in table.header) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        lines.append(" & ".join(format_cell(c, "latex") for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def render_table(table, fmt):
    if fmt == "latex":
        return render_latex(table)
    body = tabulate(
        [[format_cell(c, "text") for c in row] for row in table.rows],
        headers=table.header,
        tablefmt="github" if fmt == "markdown" else "simple",
        disable_numparse=True,
    )
    heading = f"### {table.title}" if fmt == "markdown" else table.title
    return f"{heading}\n\n{body}"


def legend_lines(seeds, style):
    listed = ", ".join(str(s) for s in seeds)
    missing = format_cell(None, style)
    return [
        f"Cells: mean ± sample std (ddof=1) over seeds; expected seeds: {listed}.",
        f"'(n/N)': averaged over n of the N expected seeds. '{missing}': no run, or (averages) a dataset missing.",
        "Dataset averages: per seed, mean over datasets (seeds present in every dataset); then mean ± std over seeds.",
    ]


# ----------------------------------------------------------------------------------------------------------
# CSV rows
# ----------------------------------------------------------------------------------------------------------
def method_columns(method, labels):
    return {"method": labels[method], "trainer": method.trainer, "tag": method.tag, "backbone": method.backbone}


def summary_columns(prefix, summary):
    if summary is None:
        return {f"{prefix}mean": "", f"{prefix}std": ""}
    std = "" if summary.std is None else round(summary.std, 4)
    return {f"{prefix}mean": round(summary.mean, 4), f"{prefix}std": std}


def seed_columns(summary, n_expected):
    seeds = summary.seeds if summary else ()
    return {"n_seeds": len(seeds), "n_seeds_expected": n_expected, "seeds": " ".join(str(s) for s in seeds)}


def fewshot_csv_rows(summary, metric):
    rows = []
    for m in summary.methods:
        for d in summary.datasets + [AVERAGE]:
            for k in summary.shots:
                cell = summary.averages[(m, k)] if d == AVERAGE else summary.cells[(m, d, k)]
                row = {**method_columns(m, summary.labels), "dataset": d, "num_shots": k, "metric": metric}
                row.update(summary_columns("", cell))
                row.update(seed_columns(cell, len(summary.seeds)))
                rows.append(row)
    return rows


def base2new_csv_rows(summary, metric):
    rows = []
    for m in summary.methods:
        for d in summary.datasets + [AVERAGE]:
            for k in summary.shots:
                cell = summary.averages[(m, k)] if d == AVERAGE else summary.cells[(m, d, k)]
                row = {**method_columns(m, summary.labels), "dataset": d, "num_shots": k, "metric": metric}
                row.update(summary_columns("base_", cell.base if cell else None))
                row.update(summary_columns("novel_", cell.novel if cell else None))
                row["hm"] = round(cell.hm, 4) if cell else ""
                row["mean_of_hms"] = round(cell.mean_of_hms, 4) if cell and cell.mean_of_hms is not None else ""
                row.update(seed_columns(cell.base if cell else None, len(summary.seeds)))
                rows.append(row)
    return rows


def runs_csv_rows(runs, labels):
    rows = []
    for r in sorted(runs, key=lambda r: (labels[r.method], r.dataset, r.subsample_classes, r.num_shots, r.seed)):
        row = {**method_columns(r.method, labels), "dataset": r.dataset, "num_shots": r.num_shots, "seed": r.seed,
               "subsample_classes": r.subsample_classes, "eval_only": r.eval_only, "epoch": r.epoch}
        row.update({m: r.metrics.get(m, "") for m in ("accuracy", "macro_f1", "error_rate")})
        row.update({"num_examples": r.num_examples, "elapsed_s": r.elapsed_s, "path": r.path})
        rows.append(row)
    return rows


def to_csv(rows):
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Report:
    metric: str
    runs: list
    labels: dict
    fewshot: object  # FewShotSummary or None
    base2new: object  # BaseToNovelSummary or None
    problems: list

    def tables(self, protocol):
        name = self.metric.replace("_", "-")
        if protocol == "fewshot":
            return fewshot_tables(self.fewshot, name) if self.fewshot else []
        return base2new_tables(self.base2new, name) if self.base2new else []

    def csv_rows(self, protocol):
        if protocol == "fewshot":
            return fewshot_csv_rows(self.fewshot, self.metric) if self.fewshot else []
        return base2new_csv_rows(self.base2new, self.metric) if self.base2new else []


def build_report(paths, metric="accuracy"):
    if metric not in METRICS:
        raise ValueError(f"Unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    runs, problems = load_runs(paths)
    labels = method_labels({r.method for r in runs})
    return Report(metric, runs, labels, summarize_fewshot(runs, metric, labels),
                  summarize_base2new(runs, metric, labels), problems)


def render_protocol(report, protocol, fmt):
    """All tables of one protocol in one format ('' when the protocol has no run)."""
    summary = report.fewshot if protocol == "fewshot" else report.base2new
    if summary is None:
        return ""
    if fmt == "csv":
        return to_csv(report.csv_rows(protocol))
    blocks = [render_table(t, fmt) for t in report.tables(protocol)]
    notes = legend_lines(summary.seeds, "latex" if fmt == "latex" else "text")
    if summary.missing:
        notes += ["Missing runs:"] + [f"- {line}" for line in summary.missing]
    if fmt == "latex":  # as comments, so the .tex file still compiles
        blocks.insert(0, "\n".join(f"% {line}" for line in notes))
    else:
        blocks.append("\n".join(notes))
    return "\n\n".join(blocks) + "\n"


def render_report(report, fmt):
    parts = [render_protocol(report, p, fmt) for p in ("fewshot", "base2new")]
    if report.problems and fmt != "csv":
        heading, bullet = ("% Problems:", "% - ") if fmt == "latex" else ("Problems:", "- ")
        parts.append(heading + "\n" + "\n".join(bullet + line for line in report.problems) + "\n")
    return "\n".join(p for p in parts if p)


def write_text_files(out_dir, contents):
    """Write ``{file name: text}`` into ``out_dir``; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, text in contents.items():
        path = os.path.join(out_dir, name)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written


def write_outputs(report, out_dir, plots=True):
    """Write every table format, runs.csv and (optionally) the PNG plots to ``out_dir``; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    extensions = {"csv": "csv", "markdown": "md", "latex": "tex", "text": "txt"}
    contents = {}
    for protocol in ("fewshot", "base2new"):
        for fmt, ext in extensions.items():
            text = render_protocol(report, protocol, fmt)
            if text:
                contents[f"{protocol}.{ext}"] = text
    contents["runs.csv"] = to_csv(runs_csv_rows(report.runs, report.labels))
    if report.problems:
        contents["problems.txt"] = "\n".join(report.problems) + "\n"
    written = write_text_files(out_dir, contents)
    if plots:
        written += write_plots(report, out_dir)
    return written


# ----------------------------------------------------------------------------------------------------------
# Plots (matplotlib Figure objects render with Agg without touching pyplot's global backend)
# ----------------------------------------------------------------------------------------------------------
def plot_method_lines(ax, summary, cell_of, title, ylabel):
    """One error-bar line per method over K; K values without a cell are left out of the line."""
    for m in summary.methods:
        points = [(k, cell_of(m, k)) for k in summary.shots if cell_of(m, k) is not None]
        if not points:
            continue
        ks = [k for k, _ in points]
        means = [c.mean for _, c in points]
        stds = [c.std or 0.0 for _, c in points]
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=summary.labels[m])
    ax.set_xscale("log", base=2)
    ax.set_xticks(summary.shots, [str(k) for k in summary.shots])
    ax.set_xlabel("shots per class (K)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def fewshot_figures(summary, ylabel):
    from matplotlib.figure import Figure

    average = Figure(figsize=(6, 4.5), layout="constrained")
    ax = average.subplots()
    plot_method_lines(ax, summary, lambda m, k: summary.averages[(m, k)],
                      f"Average over {len(summary.datasets)} datasets", ylabel)
    ax.legend(fontsize=8)
    columns = min(4, len(summary.datasets))
    rows = math.ceil(len(summary.datasets) / columns)
    per_dataset = Figure(figsize=(4 * columns, 3.2 * rows), layout="constrained")
    axes = per_dataset.subplots(rows, columns, squeeze=False).ravel()
    for ax, d in zip(axes, summary.datasets):
        plot_method_lines(ax, summary, lambda m, k, d=d: summary.cells[(m, d, k)], d, ylabel)
    for ax in axes[len(summary.datasets):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return {"fewshot_average.png": average, "fewshot_per_dataset.png": per_dataset}


def bar_label_marker(cell):
    if cell is None:
        return f" ({MISSING})"
    return f" ({cell.base.n}/{cell.base.n_expected} seeds)" if cell.base.incomplete else ""


def base2new_figure(summary, ylabel):
    """Grouped bars (base, novel, HM of means) per method, one subplot per K, from the dataset averages."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(5, 1.6 * len(summary.methods)), 4 * len(summary.shots)), layout="constrained")
    axes = figure.subplots(len(summary.shots), 1, squeeze=False).ravel()
    width = 0.27
    for ax, k in zip(axes, summary.shots):
        x = np.arange(len(summary.methods))
        cells = [summary.averages[(m, k)] for m in summary.methods]
        bars = {
            "Base": ([c.base.mean if c else 0.0 for c in cells], [c.base.std or 0.0 if c else 0.0 for c in cells]),
            "Novel": ([c.novel.mean if c else 0.0 for c in cells], [c.novel.std or 0.0 if c else 0.0 for c in cells]),
            "HM (of means)": ([c.hm if c else 0.0 for c in cells], None),
        }
        for offset, (name, (heights, errors)) in zip((-width, 0.0, width), bars.items()):
            ax.bar(x + offset, heights, width, yerr=errors, capsize=3, label=name)
        ax.set_xticks(x, [summary.labels[m] + bar_label_marker(c) for m, c in zip(summary.methods, cells)])
        ax.set_ylabel(ylabel)
        ax.set_title(f"Base-to-novel, K={k}, average over {len(summary.datasets)} datasets", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return {"base2new.png": figure}


def write_plots(report, out_dir):
    """Write the PNG plots of the protocols present; return their paths."""
    ylabel = f"{report.metric.replace('_', '-')} (%)"
    figures = {}
    if report.fewshot:
        figures.update(fewshot_figures(report.fewshot, ylabel))
    if report.base2new:
        figures.update(base2new_figure(report.base2new, ylabel))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, figure in figures.items():
        path = os.path.join(out_dir, name)
        figure.savefig(path, dpi=120)
        written.append(path)
    return written


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m vmfcoop.tools.aggregate",
        description="Aggregate results.json files into few-shot and base-to-novel tables and plots.",
    )
    parser.add_argument("output_root", help="folder searched recursively for results.json files")
    parser.add_argument("--format", choices=FORMATS, default="text", help="what to print (default: text)")
    parser.add_argument("--out", help="also write every format, runs.csv and the PNG plots to this folder")
    parser.add_argument("--plots", action="store_true",
                        help="write the PNG plots (implied by --out; without --out they go to OUTPUT_ROOT/tables)")
    parser.add_argument("--metric", choices=METRICS, default="accuracy")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(args.output_root):
        print(f"error: {args.output_root} is not a folder", file=sys.stderr)
        return 2
    paths = find_results(args.output_root)
    if not paths:
        print(f"No results.json found under {args.output_root}", file=sys.stderr)
        return 1
    try:
        report = build_report(paths, args.metric)
    except KeyError as err:  # a run without the chosen metric
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    print(render_report(report, args.format), end="")
    if args.out:
        written = write_outputs(report, args.out, plots=True)
        print(f"\nWrote {len(written)} files to {args.out}", file=sys.stderr)
    elif args.plots:
        written = write_plots(report, os.path.join(args.output_root, "tables"))
        print(f"\nWrote {', '.join(written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
