"""The feature cache gives the same logits as the uncached path and is invalidated by any key change."""
import os

import torch
from vmfcoop.engine import build_trainer
from vmfcoop.engine.cache import FeatureCache
from vmfcoop.engine.cli import build_parser, main, setup_cfg


def test_get_or_compute_computes_once_and_detects_changed_keys(tmp_path):
    cache = FeatureCache(str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(3.0)

    key = {"kind": "text", "backbone": "b", "texts": "abc"}
    assert torch.equal(cache.get_or_compute(key, compute), torch.arange(3.0))
    assert torch.equal(cache.get_or_compute(dict(key), compute), torch.arange(3.0))
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    cache.get_or_compute(dict(key, texts="abd"), compute)
    assert len(calls) == 2


def test_corrupt_entry_is_recomputed_and_disabled_cache_never_writes(tmp_path):
    cache = FeatureCache(str(tmp_path))
    key = {"kind": "image", "files": "x"}
    cache.get_or_compute(key, lambda: torch.ones(2))
    with open(cache.path(key), "wb") as f:
        f.write(b"not a tensor file")
    assert torch.equal(cache.get_or_compute(key, lambda: torch.zeros(2)), torch.zeros(2))
    off = FeatureCache(str(tmp_path / "off"), enabled=False)
    off.get_or_compute(key, lambda: torch.ones(2))
    assert not os.path.exists(tmp_path / "off")


def trainer_args(repo_root, root, out, *opts):
    return build_parser().parse_args([
        "--root", root, "--output-dir", out, "--seed", "1", "--trainer", "KgCoOp", "--backbone", "tiny-clip",
        "--config-file", os.path.join(repo_root, "configs/trainers/KgCoOp/few_shot/default.yaml"),
        "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "2", "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TEST.BATCH_SIZE", "7", *opts,
    ])


def logits_of(trainer):
    trainer.set_model_mode("eval")
    trainer.before_test()
    with torch.no_grad():
        out = [logits for logits, _ in trainer.inference_batches(trainer.test_loader, "test")]
    trainer.after_test()
    return torch.cat(out)


def test_cached_evaluation_equals_uncached(repo_root, synthetic_root, tmp_path, capsys):
    cache_dir = str(tmp_path / "cache")
    cached = build_trainer(setup_cfg(trainer_args(repo_root, synthetic_root, str(tmp_path / "a"), "CACHE.DIR", cache_dir)))
    first = logits_of(cached)
    second = logits_of(cached)  # served from disk
    assert cached.feature_cache.hits >= 1
    plain = build_trainer(setup_cfg(trainer_args(repo_root, synthetic_root, str(tmp_path / "b"), "CACHE.ENABLED", "False")))
    assert torch.allclose(first, logits_of(plain), atol=1e-5)
    assert torch.equal(first, second)


def test_cached_run_reports_the_same_accuracy(repo_root, synthetic_root, tmp_path, capsys):
    import json

    accs = []
    for name, enabled in (("on", "True"), ("off", "False")):
        out = str(tmp_path / name)
        argv = ["--root", synthetic_root, "--output-dir", out, "--seed", "2", "--trainer", "CoOp", "--backbone",
                "tiny-bert", "DATASET.NAME", "SyntheticMed", "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1",
                "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "CACHE.ENABLED", enabled]
        assert main(argv) == 0
        accs.append(json.load(open(os.path.join(out, "results.json")))["metrics"])
    assert accs[0] == accs[1]


def test_changed_transform_or_weights_invalidate_image_features(repo_root, synthetic_root, tmp_path, capsys):
    cache_dir = str(tmp_path / "cache")
    trainer = build_trainer(setup_cfg(trainer_args(repo_root, synthetic_root, str(tmp_path / "a"), "CACHE.DIR", cache_dir)))
    logits_of(trainer)
    assert trainer.feature_cache.misses >= 1
    misses = trainer.feature_cache.misses
    logits_of(trainer)
    assert trainer.feature_cache.misses == misses  # unchanged key: served from disk

    resized = build_trainer(setup_cfg(trainer_args(repo_root, synthetic_root, str(tmp_path / "b"), "CACHE.DIR", cache_dir,
                                                   "INPUT.INTERPOLATION", "bilinear")))
    logits_of(resized)
    assert resized.feature_cache.misses >= 1 and resized.feature_cache.hits == 1  # text hit, images recomputed

    weight = next(p for p in trainer.backbone.parameters() if p.dim() == 2)
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(0.01)
        before = trainer.feature_cache.misses
        logits_of(trainer)
        assert trainer.feature_cache.misses > before
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_concurrent_writers_never_leave_a_corrupt_entry(tmp_path):
    """Several processes racing on one key: each gets a correct value and the file stays loadable."""
    import multiprocessing

    key = {"kind": "text", "race": 1}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        values = pool.starmap(_race_once, [(str(tmp_path), key)] * 4)
    assert all(torch.equal(v, torch.arange(100_000.0)) for v in values)
    assert torch.load(FeatureCache(str(tmp_path)).path(key), weights_only=True)["key"] == key
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def _race_once(directory, key):
    return FeatureCache(directory).get_or_compute(key, lambda: torch.arange(100_000.0))
