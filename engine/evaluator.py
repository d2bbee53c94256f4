"""Classification evaluator: Dassl's printed result lines plus a machine-readable results.json."""
import os
from collections import OrderedDict

import torch

from .utils import write_json


def macro_f1(y_true, y_pred):
    """Mean F1 over the labels present in ``y_true`` (as sklearn's ``labels=unique(y_true)``)."""
    labels = sorted(set(y_true))
    scores = []
    for label in labels:
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == label and p == label)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != label and p == label)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == label and p != label)
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def compute_accuracy(output, target, topk=(1,)):
    """Top-k accuracy in percent, as a list of 1-element tensors (Dassl's return type)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True) * (100.0 / target.size(0)) for k in topk]


class Classification:
    def __init__(self, cfg, lab2cname=None):
        self.cfg = cfg
        self.lab2cname = lab2cname or {}
        self.reset()

    def reset(self):
        self._y_true = []
        self._y_pred = []

    def process(self, logits, labels):
        self._y_pred.extend(logits.argmax(1).tolist())
        self._y_true.extend(labels.tolist())

    def evaluate(self):
        total = len(self._y_true)
        correct = sum(1 for t, p in zip(self._y_true, self._y_pred) if t == p)
        acc = 100.0 * correct / max(total, 1)
        results = OrderedDict(
            accuracy=acc, error_rate=100.0 - acc, macro_f1=100.0 * macro_f1(self._y_true, self._y_pred)
        )
        print("=> result")
        print(f"* total: {total:,}")
        print(f"* correct: {correct:,}")
        print(f"* accuracy: {acc:.2f}%")
        print(f"* error: {100.0 - acc:.2f}%")
        print(f"* macro_f1: {results['macro_f1']:.2f}%")
        self.per_class = self._per_class()
        if self.cfg.TEST.PER_CLASS_RESULT:
            print("=> per-class result")
            for label, row in enumerate(self.per_class.values()):
                print(f"* class: {label} ({row['classname']})\ttotal: {row['total']:,}\t"
                      f"correct: {row['correct']:,}\tacc: {row['accuracy']:.2f}%")
            mean_acc = sum(r["accuracy"] for r in self.per_class.values()) / max(len(self.per_class), 1)
            print(f"* average: {mean_acc:.2f}%")
            results["perclass_accuracy"] = mean_acc
        return results

    def _per_class(self):
        rows = OrderedDict()
        for label in sorted(set(self._y_true)):
            pairs = [(t, p) for t, p in zip(self._y_true, self._y_pred) if t == label]
            correct = sum(1 for t, p in pairs if t == p)
            name = self.lab2cname.get(label, str(label))
            rows[name] = {"classname": name, "total": len(pairs), "correct": correct,
                          "accuracy": 100.0 * correct / len(pairs)}
        return rows


def build_evaluator(cfg, lab2cname=None):
    if cfg.TEST.EVALUATOR != "Classification":
        from .errors import ConfigError

        raise ConfigError(f"TEST.EVALUATOR {cfg.TEST.EVALUATOR!r} is not supported; use Classification")
    if cfg.VERBOSE:
        print("Loading evaluator: Classification")
    return Classification(cfg, lab2cname=lab2cname)


def write_results(path, cfg, results, per_class, **run_info):
    """Atomically write one run's results.json (what the aggregation tools read)."""
    payload = {
        "trainer": cfg.TRAINER.NAME,
        "dataset": cfg.DATASET.NAME,
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "num_shots": cfg.DATASET.NUM_SHOTS,
        "seed": cfg.SEED,
        "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES,
        **run_info,
        "metrics": {k: float(v) for k, v in results.items()},
        "per_class": {name: {k: v for k, v in row.items() if k != "classname"} for name, row in per_class.items()},
        "output_dir": os.path.abspath(cfg.OUTPUT_DIR),
        "config": _cfg_to_dict(cfg),
    }
    write_json(payload, path)
    return payload


def _cfg_to_dict(node):
    if hasattr(node, "items"):
        return {k: _cfg_to_dict(v) for k, v in node.items()}
    if isinstance(node, tuple):
        return list(node)
    if isinstance(node, torch.Tensor):
        return node.tolist()
    return node
