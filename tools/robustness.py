"""Prompt-perturbation robustness of trained runs: accuracy under perturbed class names and LLM descriptions.

Usage::

    python -m vmfcoop.tools.robustness --model-dirs RUN_OR_FOLDER [RUN_OR_FOLDER ...]
        [--perturbations none,typo,synonym,swap_descriptions,truncate_descriptions,drop_words]
        [--severity 0.5[,0.8 ...]] [--seed 0] [--root DATA] [--workers N] [--out DIR]
        [--format text|markdown|csv] [--verbose]

BiomedAP's abstract claims robustness "under prompt perturbations" (noisy or heterogeneous class
descriptions) but ships no benchmark; this tool measures it for every trainer in the registry.

Runs. Each ``--model-dirs`` entry is a run folder (one with ``results.json``) or a folder searched for
them. The trainer is rebuilt from the run's own config (``results.json["config"]``), eval-only, and its
checkpoint is loaded with the engine's ``load_model``: the epoch recorded in results.json, or
``model-best.pth.tar`` for best-val runs. A base-to-novel ``test_new`` run (eval-only, no checkpoint of
its own) loads from its ``train_base`` twin. Evaluation is the engine's test path (``before_test``,
``inference_batches``, ``classify``) on the test split; nothing in the run folder is written.

What is perturbed (only the text; images, weights and labels are untouched):

* Class names, through every text a trainer builds from them: the class tokens of learned prompts
  (the names given to ``build_learner``), hand-crafted templates (``template_features``) and mentions of
  a class name inside LLM descriptions (``llm_prompt_features``).
  ``typo``: in a fraction ``severity`` of the words of 4+ characters (at least one per name), two
  adjacent inner letters are swapped. ``synonym``: names are matched against a small hand-written table
  of synonyms and abbreviations (``SYNONYMS``, not clinically validated) and a fraction ``severity`` of
  the matches (at least one) is replaced; a name without a match stays as it is.
* LLM descriptions (the DATASET.PROMPTS banks, after N_PROMPTS selection), per class and per source:
  ``swap_descriptions`` replaces a fraction ``severity`` of them by descriptions of other classes
  (heterogeneous, partly wrong banks); ``truncate_descriptions`` cuts a fraction ``severity`` of them
  to their first half (in words); ``drop_words`` deletes each word with probability ``severity``
  (at least one word deleted and one kept per description).

Who reads what at test time. The tool checks it for every cell: when the logits equal the clean ones,
the perturbed text never reached the classifier and the cell is marked "unused". At the time of writing:

* Class names: every prompt learner (CoOp, CoCoOp, KgCoOp, ProGrad, BiomedCoOp, OGKD, BiomedDPT,
  BiomedAP, VMFCoOp, BioVLM); the template zero-shot classifier of ZeroShot, CLIP-Adapter,
  Tip-Adapter(-F) and LP++; the names inside descriptions for ZeroShotEnsemble and ZeroShotSelective.
  LinearProbe reads no text on the classes it was trained on.
* Descriptions: ZeroShotEnsemble and ZeroShotSelective only. The methods distilling from descriptions
  (BiomedCoOp, OGKD, VMFCoOp's anchors, BioVLM's teacher, ...) use them in training only, which an
  eval-only study cannot reach: robustness of *training* to noisy banks needs retraining with a
  perturbed bank (e.g. a DATASET.PROMPTS source written from robustness.Perturbation.bank).

Reproducibility: every random choice comes from ``random.Random("<seed>|<perturbation>|<severity>|...|
<class name>")``, so a class is perturbed the same way in every run, class subset (base/new) and order
(``swap_descriptions`` draws its replacements from the other classes being evaluated).

Output: a table with one row per run (accuracy per condition, change vs. the clean evaluation in
parentheses, plus the accuracy recorded in results.json, which "none" reproduces), a mean-over-runs
table when several runs share trainer, dataset, backbone, K and class subset, and the perturbed class
names. Written to ``--out``: robustness.csv (long format), robustness.md and robustness.txt.
"""
import argparse
import contextlib
import io
import os
import random
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tabulate import tabulate
from vmfcoop.datasets.prompt_bank import load_prompt_bank_from_cfg
from vmfcoop.engine import TRAINER_REGISTRY
from vmfcoop.engine.cli import import_plugins
from vmfcoop.engine.config import extend_cfg, get_cfg_default
from vmfcoop.engine.errors import ConfigError, VmfcoopError
from vmfcoop.engine.utils import read_json, set_random_seed
from vmfcoop.trainers.text_features import prompt_bank_features, template_features
from yacs.config import CfgNode

from . import aggregate
from .compare import comma_list

DEFAULT_PERTURBATIONS = "none,typo,synonym,swap_descriptions,truncate_descriptions,drop_words"
DEFAULT_SEVERITY = 0.5
UNUSED = "unused"

# ----------------------------------------------------------------------------------------------------------
# Text perturbations: small pure functions of (text, rng, severity)
# ----------------------------------------------------------------------------------------------------------

# Term -> replacements (synonyms, spelling variants, abbreviations). Multi-word terms match first.
SYNONYMS = {
    "tumor": ["neoplasm", "mass"], "tumour": ["neoplasm", "tumor"], "lesion": ["abnormality"],
    "malignant": ["cancerous"], "benign": ["non-cancerous"], "normal": ["healthy", "unremarkable"],
    "healthy": ["normal"], "cyst": ["fluid-filled sac"], "inflammatory": ["inflamed"], "tissue": ["parenchyma"],
    "scan": ["image"], "glioma": ["glial tumor"], "meningioma": ["meningeal tumor"], "pituitary": ["hypophyseal"],
    "brain": ["cerebrum"], "kidney": ["renal"], "kidney stone": ["nephrolithiasis", "renal calculus"],
    "carcinoma": ["cancer"], "adenocarcinoma": ["adenoca", "glandular cancer"],
    "squamous cell carcinoma": ["SCC"], "basal cell carcinoma": ["BCC"], "actinic keratosis": ["AK", "solar keratosis"],
    "benign keratosis": ["BKL", "seborrheic keratosis"], "dermatofibroma": ["DF", "fibrous histiocytoma"],
    "melanoma": ["MEL", "malignant melanoma"], "melanocytic nevus": ["mole", "NV"], "vascular lesion": ["angioma"],
    "osteoarthritis": ["OA", "degenerative joint disease"], "knee": ["knee joint"], "severe": ["advanced"],
    "moderate": ["intermediate"], "minimal": ["mild"], "doubtful": ["questionable"],
    "covid": ["COVID-19", "SARS-CoV-2"], "viral pneumonia": ["viral lung infection"], "opacity": ["haziness"],
    "lungs": ["pulmonary fields"], "lung": ["pulmonary"], "choroidal neovascularization": ["CNV"],
    "diabetic macular edema": ["DME"], "drusen": ["retinal deposits"], "OCT scan": ["tomogram"],
    "diabetic retinopathy": ["DR"], "glaucoma": ["optic neuropathy"], "cataract": ["lens opacity"],
    "retina": ["fundus"], "adipose tissue": ["fat"], "stroma": ["connective tissue"], "complex": ["mixed"],
    "simple": ["plain"], "debris": ["necrotic material"], "empty background": ["blank area"],
    "immune cells": ["lymphocytes"], "mucosal glands": ["mucosa"], "epithelium": ["lining cells"],
    "polyps": ["adenomas", "growths"], "dyed": ["stained"], "lifted": ["raised"], "resection margins": ["cut edges"],
    "esophagitis": ["oesophagitis"], "cecum": ["caecum"], "pylorus": ["pyloric canal"],
    "z line": ["gastroesophageal junction"], "ulcerative colitis": ["UC"],
}


def affected_count(total, severity):
    """How many of ``total`` items a perturbation of ``severity`` touches: round(severity * total), in [1, total]."""
    return min(total, max(1, int(severity * total + 0.5))) if total else 0


def swap_positions(word):
    """Positions i where swapping letters i and i+1 changes ``word``; the first and last letters stay in
    place in words of 4+ letters (they stay readable)."""
    inner = len(word) >= 4
    return [i for i in range(int(inner), len(word) - 1 - int(inner)) if word[i] != word[i + 1]]


def swap_inner_letters(word, rng):
    """``word`` with two adjacent letters swapped (unchanged if no swap changes it)."""
    positions = swap_positions(word)
    if not positions:
        return word
    i = rng.choice(positions)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def typo_name(name, rng, severity):
    """Swap two adjacent inner letters in a fraction ``severity`` of the 4+ letter words (at least one word)."""
    words = name.split(" ")
    eligible = [i for i, w in enumerate(words) if len(w) >= 4 and swap_positions(w)]
    if not eligible:  # only short words: swap anywhere in the longest one
        eligible = [max(range(len(words)), key=lambda i: len(words[i]))]
    for i in rng.sample(eligible, affected_count(len(eligible), severity)):
        words[i] = swap_inner_letters(words[i], rng)
    return " ".join(words)


def term_pattern(terms):
    """Regex matching any of ``terms`` as whole words, case-insensitive, longest first."""
    ordered = sorted(terms, key=len, reverse=True)
    return re.compile(r"(?<!\w)(" + "|".join(re.escape(t) for t in ordered) + r")(?!\w)", re.IGNORECASE)


SYNONYM_PATTERN = term_pattern(SYNONYMS)
SYNONYM_KEYS = {term.lower(): term for term in SYNONYMS}


def synonym_name(name, rng, severity):
    """Replace a fraction ``severity`` of the table terms found in ``name`` (at least one) by a synonym."""
    matches = list(SYNONYM_PATTERN.finditer(name))
    if not matches:
        return name
    chosen = set(rng.sample(range(len(matches)), affected_count(len(matches), severity)))
    pieces, end = [], 0
    for index, match in enumerate(matches):
        replacement = match.group(0)
        if index in chosen:
            replacement = rng.choice(SYNONYMS[SYNONYM_KEYS[match.group(0).lower()]])
        pieces += [name[end:match.start()], replacement]
        end = match.end()
    return "".join(pieces) + name[end:]


def first_half(sentence):
    """The first half (rounded up) of the words of ``sentence``."""
    words = sentence.split()
    return " ".join(words[:(len(words) + 1) // 2])


def drop_words_from(sentence, rng, severity):
    """Delete each word with probability ``severity``; at least one word deleted and one kept."""
    words = sentence.split()
    if len(words) < 2:
        return sentence
    keep = [rng.random() >= severity for _ in words]
    if all(keep):
        keep[rng.randrange(len(words))] = False
    if not any(keep):
        keep[rng.randrange(len(words))] = True
    return " ".join(w for w, k in zip(words, keep) if k)


def swap_descriptions(bank, rng_of, severity):
    """Replace a fraction ``severity`` of each class's descriptions by descriptions of other classes."""
    perturbed = {}
    for classname, sentences in bank.items():
        rng = rng_of(classname)
        pool = [s for other, others in bank.items() if other != classname for s in others]
        if not pool:
            perturbed[classname] = list(sentences)
            continue
        positions = rng.sample(range(len(sentences)), affected_count(len(sentences), severity))
        picks = rng.sample(pool, len(positions)) if len(pool) >= len(positions) else rng.choices(pool, k=len(positions))
        replaced = dict(zip(positions, picks))
        perturbed[classname] = [replaced.get(i, s) for i, s in enumerate(sentences)]
    return perturbed


def truncate_descriptions(bank, rng_of, severity):
    """Cut a fraction ``severity`` of each class's descriptions to their first half."""
    perturbed = {}
    for classname, sentences in bank.items():
        chosen = set(rng_of(classname).sample(range(len(sentences)), affected_count(len(sentences), severity)))
        perturbed[classname] = [first_half(s) if i in chosen else s for i, s in enumerate(sentences)]
    return perturbed


def drop_description_words(bank, rng_of, severity):
    """Delete words from every description (see :func:`drop_words_from`)."""
    perturbed = {}
    for classname, sentences in bank.items():
        rng = rng_of(classname)
        perturbed[classname] = [drop_words_from(s, rng, severity) for s in sentences]
    return perturbed


def rename_mentions(bank, renamed):
    """Replace every whole-word, case-insensitive mention of a class name (``renamed``: old -> new)."""
    changed = {old.lower(): new for old, new in renamed.items() if old != new}
    if not changed:
        return {classname: list(sentences) for classname, sentences in bank.items()}
    pattern = term_pattern(changed)
    return {classname: [pattern.sub(lambda m: changed[m.group(0).lower()], s) for s in sentences]
            for classname, sentences in bank.items()}


@dataclass(frozen=True)
class Perturbation:
    """A named text perturbation: ``rename`` edits class names, ``rewrite`` edits a description bank."""

    name: str
    summary: str
    rename: Callable = None  # (name, rng, severity) -> name
    rewrite: Callable = None  # (bank {class: [sentences]}, rng_of(class), severity) -> bank

    @property
    def target(self):
        return "class names" if self.rename else "descriptions" if self.rewrite else "nothing"

    def rng_of(self, seed, severity, *scope):
        return lambda classname: random.Random("|".join(map(str, (seed, self.name, severity, *scope, classname))))

    def class_names(self, classnames, severity, seed):
        """The names the trainer's texts will use, in the same order."""
        if self.rename is None:
            return list(classnames)
        rng_of = self.rng_of(seed, severity, "name")
        return [self.rename(name, rng_of(name), severity) for name in classnames]

    def bank(self, bank, severity, seed, source=""):
        """A perturbed copy of one source's bank ``{true class name: [sentences]}``."""
        rewritten = self.rewrite(bank, self.rng_of(seed, severity, source), severity) if self.rewrite else bank
        classnames = list(bank)
        return rename_mentions(rewritten, dict(zip(classnames, self.class_names(classnames, severity, seed))))


PERTURBATIONS = {p.name: p for p in [
    Perturbation("none", "clean texts"),
    Perturbation("typo", "adjacent letters swapped in class names", rename=typo_name),
    Perturbation("synonym", "class-name terms replaced by synonyms/abbreviations", rename=synonym_name),
    Perturbation("swap_descriptions", "descriptions replaced by other classes' ones", rewrite=swap_descriptions),
    Perturbation("truncate_descriptions", "descriptions cut to their first half", rewrite=truncate_descriptions),
    Perturbation("drop_words", "words deleted from descriptions", rewrite=drop_description_words),
]}


@dataclass(frozen=True)
class Condition:
    perturbation: Perturbation
    severity: float

    @property
    def label(self):
        return "none" if self.perturbation.name == "none" else f"{self.perturbation.name}@{self.severity:g}"


def conditions_from(perturbation_names, severities):
    """'none' first (always evaluated: it is the reference), then every perturbation at every severity."""
    unknown = [n for n in perturbation_names if n not in PERTURBATIONS]
    if unknown:
        raise ConfigError(f"Unknown perturbation(s) {unknown}; available: {', '.join(PERTURBATIONS)}")
    bad = [s for s in severities if not 0.0 < s <= 1.0]
    if bad:
        raise ConfigError(f"--severity values must be in (0, 1]; got {bad}")
    named = [n for n in dict.fromkeys(perturbation_names) if n != "none"]
    return [Condition(PERTURBATIONS["none"], 0.0)] + [
        Condition(PERTURBATIONS[n], s) for n in named for s in dict.fromkeys(severities)]


# ----------------------------------------------------------------------------------------------------------
# Trainers with perturbed text
# ----------------------------------------------------------------------------------------------------------
class PerturbedText:
    """Mixin placed before a ClipTrainer subclass: its texts use perturbed class names and descriptions.

    ``build_learner`` sees the perturbed names (so learned prompts splice them in); ``self.classnames``
    is restored afterwards, so label bookkeeping (e.g. the class records of feature-based methods) still
    uses the true names. Templates and LLM banks go through the overridden feature methods.
    """

    condition = None
    perturbation_seed = 0

    def build_learner(self):
        condition = self.condition
        self.true_classnames = list(self.classnames)
        self.text_classnames = condition.perturbation.class_names(self.classnames, condition.severity,
                                                                  self.perturbation_seed)
        self.classnames = list(self.text_classnames)
        try:
            return super().build_learner()
        finally:
            self.classnames = self.true_classnames

    def template_features(self, template):
        return template_features(self.backbone, self.text_classnames, template, cache=self.feature_cache)

    def llm_prompt_features(self):
        condition = self.condition
        banks = load_prompt_bank_from_cfg(self.cfg, self.true_classnames)
        perturbed = [condition.perturbation.bank(bank, condition.severity, self.perturbation_seed, source)
                     for source, bank in banks.items()]
        return torch.cat([prompt_bank_features(self.backbone, self.true_classnames, bank, self.feature_cache)
                          for bank in perturbed], dim=1)


def perturbed_trainer_class(trainer_cls, condition, seed):
    """An unregistered subclass of ``trainer_cls`` whose texts are perturbed by ``condition``."""
    return type(f"{trainer_cls.__name__}Perturbed", (PerturbedText, trainer_cls),
                {"condition": condition, "perturbation_seed": seed})


# ----------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    directory: str
    results: dict
    label: str

    @property
    def trainer(self):
        return self.results["trainer"]

    @property
    def recorded_accuracy(self):
        return float(self.results["metrics"]["accuracy"])

    def key(self):
        r = self.results
        return (self.label, r.get("backbone", ""), r["dataset"], r["num_shots"], r["subsample_classes"])


def find_run_dirs(paths):
    """Run folders (holding results.json) given as such or found below the given folders; sorted, unique."""
    found = []
    for path in paths:
        if os.path.isfile(os.path.join(path, "results.json")):
            found.append(os.path.abspath(path))
        elif os.path.isdir(path):
            found += [os.path.dirname(os.path.abspath(p)) for p in aggregate.find_results(path)]
        else:
            raise FileNotFoundError(f"--model-dirs: {path} does not exist")
    unique = sorted(dict.fromkeys(found))
    if not unique:
        raise FileNotFoundError(f"No results.json under {', '.join(paths)}: train the runs first")
    return unique


def load_run(directory):
    results = read_json(os.path.join(directory, "results.json"))
    missing = [k for k in ("trainer", "dataset", "num_shots", "seed", "subsample_classes", "metrics", "config")
               if k not in results]
    if missing:
        raise VmfcoopError(f"{directory}/results.json lacks {', '.join(missing)}; rerun the run with this version")
    if results.get("split", "test") != "test":
        raise VmfcoopError(f"{directory} was evaluated on the '{results['split']}' split; only test runs are supported")
    tag = aggregate.tag_from_path(os.path.join(directory, "results.json"), results["trainer"])
    label = results["trainer"] if tag in ("", "default") else f"{results['trainer']}:{tag}"
    return Run(directory, results, label)


def assign_saved(node, saved, path="cfg"):
    """Copy the saved values into ``node`` as they are (yacs' merge would parse strings such as "{}" as
    Python literals); JSON lists become tuples where the default is a tuple."""
    for key, value in saved.items():
        if key not in node:
            raise ConfigError(f"The saved config has {path}.{key}, which this version does not know; "
                              "was the run written by another version?")
        if isinstance(node[key], CfgNode):
            assign_saved(node[key], value, f"{path}.{key}")
        else:
            node[key] = tuple(value) if isinstance(node[key], tuple) and isinstance(value, list) else value


def default_config():
    """Today's defaults with every registered trainer's and dataset's keys."""
    import_plugins()
    cfg = get_cfg_default()
    extend_cfg(cfg)
    return cfg


def config_from_results(results, root=None, workers=None):
    """The run's config rebuilt on today's defaults, with local overrides."""
    cfg = default_config()
    assign_saved(cfg, results["config"])
    if root is not None:
        cfg.DATASET.ROOT = root
    if workers is not None:
        cfg.DATALOADER.NUM_WORKERS = workers
    cfg.VERBOSE = False
    cfg.freeze()
    return cfg


def train_base_twin(directory):
    """The ``.../base2new/train_base/...`` folder of a ``.../base2new/test_new/...`` run, else None."""
    parts = os.path.normpath(directory).split(os.sep)
    for i in range(len(parts) - 1):
        if parts[i] == "base2new" and parts[i + 1] == "test_new":
            return os.sep.join(parts[:i + 1] + ["train_base"] + parts[i + 2:])
    return None


def checkpoint_source(run, names):
    """``(model_dir, epoch)`` for ``load_model``: the run folder (or its train_base twin) holding every
    module's checkpoint of the recorded epoch (epoch None = model-best.pth.tar)."""
    epoch = run.results.get("epoch")
    candidates = [run.directory] + [d for d in [train_base_twin(run.directory)] if d]
    for directory in candidates:
        for wanted, file_name in [(epoch, f"model.pth.tar-{epoch}"), (None, "model-best.pth.tar")]:
            if all(os.path.isfile(os.path.join(directory, name, file_name)) for name in names):
                return directory, wanted
    looked = ", ".join(os.path.join(d, n, f"model.pth.tar-{epoch} | model-best.pth.tar")
                       for d in candidates for n in names)
    raise FileNotFoundError(f"No checkpoint for {run.directory} (looked for {looked}); keep checkpoints of runs "
                            "you want to evaluate")


# ----------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluation_logits(trainer):
    """``(logits, labels)`` on the test split, through the engine's evaluation path."""
    trainer.set_model_mode("eval")
    trainer.before_test()
    try:
        pairs = [(logits.float().cpu(), labels.cpu())
                 for logits, labels in trainer.inference_batches(trainer.test_loader, "test")]
    finally:
        trainer.after_test()
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def percent_correct(logits, labels):
    """Accuracy in percent, computed as the evaluator does (so "none" matches results.json exactly)."""
    return 100.0 * int((logits.argmax(1) == labels).sum()) / max(len(labels), 1)


def evaluate_condition(run, cfg, condition, seed, log):
    """``(logits, labels, {true class name: name used in the texts})`` of ``run`` under ``condition``."""
    cls = perturbed_trainer_class(TRAINER_REGISTRY.get(cfg.TRAINER.NAME), condition, seed)
    with contextlib.redirect_stdout(log):
        set_random_seed(max(cfg.SEED, 0))
        trainer = cls(cfg)
        trainer.eval_only = True
        names = trainer.get_model_names()
        if names:
            model_dir, epoch = checkpoint_source(run, names)
            trainer.load_model(model_dir, epoch=epoch)
        logits, labels = evaluation_logits(trainer)
    return logits, labels, dict(zip(trainer.true_classnames, trainer.text_classnames))


@dataclass
class Cell:
    accuracy: float
    change: float  # accuracy - clean accuracy (negative: a drop)
    reaches_classifier: bool  # False: identical logits, the perturbed text is not used at test time


@dataclass
class RunReport:
    run: Run
    cells: dict  # condition label -> Cell
    names: dict = field(default_factory=dict)  # condition label -> {true class name: perturbed name}


def evaluate_run(run, conditions, seed=0, root=None, workers=None, log=None):
    cfg = config_from_results(run.results, root=root, workers=workers)
    log = log if log is not None else io.StringIO()
    clean_logits, labels, _ = evaluate_condition(run, cfg, conditions[0], seed, log)
    clean = percent_correct(clean_logits, labels)
    report = RunReport(run, {conditions[0].label: Cell(clean, 0.0, True)})
    for condition in conditions[1:]:
        logits, _, names = evaluate_condition(run, cfg, condition, seed, log)
        accuracy = percent_correct(logits, labels)
        same = logits.shape == clean_logits.shape and torch.allclose(logits, clean_logits, rtol=0.0, atol=1e-5)
        report.cells[condition.label] = Cell(accuracy, accuracy - clean, not same)
        if condition.perturbation.rename:
            report.names[condition.label] = names
    return report


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------
RUN_COLUMNS = ["Trainer", "Dataset", "Backbone", "K", "Seed", "Classes"]


def format_cell(cell, clean=False):
    if clean:
        return f"{cell.accuracy:.2f}"
    change = f"{cell.change:+.2f}" if cell.reaches_classifier else UNUSED
    return f"{cell.accuracy:.2f} ({change})"


def run_table(reports, conditions):
    header = RUN_COLUMNS + ["recorded"] + [c.label for c in conditions]
    rows = []
    for rep in reports:
        r = rep.run.results
        row = [rep.run.label, r["dataset"], r.get("backbone", ""), r["num_shots"], r["seed"], r["subsample_classes"],
               f"{rep.run.recorded_accuracy:.2f}"]
        row += [format_cell(rep.cells[c.label], clean=i == 0) for i, c in enumerate(conditions)]
        rows.append(row)
    return header, rows


def mean_table(reports, conditions):
    """Mean over runs sharing (trainer label, backbone, dataset, K, classes); None when no group has 2+ runs."""
    groups = defaultdict(list)
    for rep in reports:
        groups[rep.run.key()].append(rep)
    if all(len(g) < 2 for g in groups.values()):
        return None
    header = ["Trainer", "Backbone", "Dataset", "K", "Classes", "runs"] + [c.label for c in conditions]
    rows = []
    for (label, backbone, dataset, shots, classes), members in groups.items():
        row = [label, backbone, dataset, shots, classes, len(members)]
        for i, c in enumerate(conditions):
            cells = [m.cells[c.label] for m in members]
            mean = Cell(sum(x.accuracy for x in cells) / len(cells), sum(x.change for x in cells) / len(cells),
                        any(x.reaches_classifier for x in cells))
            row.append(format_cell(mean, clean=i == 0))
        rows.append(row)
    return header, rows


def names_table(reports, conditions):
    """Perturbed class names per dataset and name perturbation (the same in every run of the dataset)."""
    by_dataset = {}
    for rep in reports:
        for label, names in rep.names.items():
            entry = by_dataset.setdefault(rep.run.results["dataset"], {})
            for true, text in names.items():
                entry.setdefault(true, {})[label] = text
    used = {label for rep in reports for label in rep.names}
    labels = [c.label for c in conditions if c.label in used]
    if not labels:
        return None
    rows = [[dataset, true] + [texts.get(label, "") for label in labels]
            for dataset, classes in by_dataset.items() for true, texts in classes.items()]
    return ["Dataset", "Class"] + labels, rows


def legend(conditions, seed):
    lines = [(f"Cells: test accuracy (%) and its change vs. 'none' (same run, clean texts); '{UNUSED}': identical "
              "logits, the perturbed text does not reach this trainer's test-time classifier. 'recorded': "
              f"results.json. Seed {seed}.")]
    lines += [f"{c.label}: {c.perturbation.summary} ({c.perturbation.target})" for c in conditions[1:]]
    return lines


def render(reports, conditions, seed, fmt="text"):
    tablefmt = "github" if fmt == "markdown" else "simple"
    sections = [("Prompt-perturbation robustness", run_table(reports, conditions)),
                ("Mean over runs", mean_table(reports, conditions)),
                ("Perturbed class names", names_table(reports, conditions))]
    parts = []
    for title, table in sections:
        if table is None:
            continue
        header, rows = table
        heading = f"## {title}" if fmt == "markdown" else title
        parts.append(f"{heading}\n\n{tabulate(rows, headers=header, tablefmt=tablefmt, disable_numparse=True)}")
    bullet = "- " if fmt == "markdown" else ""
    parts.append("\n".join(bullet + line for line in legend(conditions, seed)))
    return "\n\n".join(parts) + "\n"


def csv_rows(reports, conditions):
    rows = []
    for rep in reports:
        r = rep.run.results
        for c in conditions:
            cell = rep.cells[c.label]
            rows.append({
                "trainer": r["trainer"], "label": rep.run.label, "dataset": r["dataset"],
                "backbone": r.get("backbone", ""), "num_shots": r["num_shots"], "seed": r["seed"],
                "subsample_classes": r["subsample_classes"], "perturbation": c.perturbation.name,
                "severity": c.severity, "target": c.perturbation.target, "accuracy": round(cell.accuracy, 4),
                "change_vs_clean": round(cell.change, 4), "reaches_classifier": cell.reaches_classifier,
                "recorded_accuracy": rep.run.recorded_accuracy, "run_dir": rep.run.directory,
            })
    return rows


def write_outputs(reports, conditions, seed, out_dir):
    contents = {"robustness.csv": aggregate.to_csv(csv_rows(reports, conditions)),
                "robustness.md": render(reports, conditions, seed, "markdown"),
                "robustness.txt": render(reports, conditions, seed, "text")}
    return aggregate.write_text_files(out_dir, contents)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m vmfcoop.tools.robustness",
                                     description="Accuracy of trained runs under perturbed class names and "
                                                 "LLM descriptions.")
    parser.add_argument("--model-dirs", nargs="+", required=True,
                        help="run folders (with results.json and checkpoints) or folders searched for them")
    parser.add_argument("--perturbations", default=DEFAULT_PERTURBATIONS,
                        help=f"comma list from {', '.join(PERTURBATIONS)} (default: all)")
    parser.add_argument("--severity", default=str(DEFAULT_SEVERITY),
                        help="comma list of severities in (0, 1] (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="perturbation seed (default: 0)")
    parser.add_argument("--root", default=None, help="datasets root (default: the one each run was trained with)")
    parser.add_argument("--workers", type=int, default=None, help="DATALOADER.NUM_WORKERS (default: the run's)")
    parser.add_argument("--out", default=os.path.join("output", "robustness"),
                        help="folder for robustness.{csv,md,txt} (default: %(default)s)")
    parser.add_argument("--format", choices=("text", "markdown", "csv"), default="text", help="what to print")
    parser.add_argument("--verbose", action="store_true", help="show the trainers' own log lines")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        severities = comma_list(args.severity, float)
    except argparse.ArgumentTypeError:
        print(f"error: --severity takes numbers in (0, 1] separated by commas, got {args.severity!r}", file=sys.stderr)
        return 2
    try:
        conditions = conditions_from(comma_list(args.perturbations), severities)
        runs = [load_run(d) for d in find_run_dirs(args.model_dirs)]
        log = sys.stderr if args.verbose else io.StringIO()
        reports = []
        for run in runs:
            print(f"evaluating {run.label} ({run.directory}) under {len(conditions)} conditions", file=sys.stderr)
            reports.append(evaluate_run(run, conditions, args.seed, args.root, args.workers, log))
    except (VmfcoopError, FileNotFoundError) as err:
        print(f"error: {str(err).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    if args.format == "csv":
        print(aggregate.to_csv(csv_rows(reports, conditions)), end="")
    else:
        print(render(reports, conditions, args.seed, args.format), end="")
    mismatched = [rep.run.directory for rep in reports
                  if abs(rep.cells["none"].accuracy - rep.run.recorded_accuracy) > 1e-9]
    if mismatched:
        print("warning: the clean evaluation differs from results.json for " + ", ".join(mismatched)
              + " (changed data, weights or code?)", file=sys.stderr)
    written = write_outputs(reports, conditions, args.seed, args.out)
    print(f"Wrote {', '.join(written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
