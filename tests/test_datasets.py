"""Every registered dataset: split reading, deterministic few-shot sampling, base/new, clear errors."""
import glob
import math
import os
import random
from collections import Counter

import numpy as np
import pytest
import vmfcoop.datasets  # noqa: F401  (registers the datasets)
import yaml
from vmfcoop.datasets.fewshot import make_fewshot_split
from vmfcoop.datasets.layout import DatasetNotFoundError, DatasetPaths, SplitFileError, check_classnames, read_split
from vmfcoop.datasets.synthetic import SyntheticMed, synthetic_prompt_bank
from vmfcoop.datasets.testing import write_fake_dataset, write_split_tree
from vmfcoop.engine.build import DATASET_REGISTRY, build_dataset
from vmfcoop.engine.config import extend_cfg, get_cfg_default
from vmfcoop.engine.utils import ImageReadError, read_image, read_json, write_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_SPLITS = "/work/shared/data/biomedcoop_splits"
PER_CLASS = (20, 8, 8)  # train, val, test images per class in the fake trees
DATASET_NAMES = sorted(DATASET_REGISTRY.registered_names())
PUBLIC_NAMES = ["BTMRI", "BUSI", "CHMNIST", "COVID_19", "CTKidney", "DermaMNIST", "KneeXray", "Kvasir",
                "LungColon", "OCTMNIST", "RETINA"]


def make_cfg(root, name, num_shots=-1, seed=1, subsample="all", **dataset_keys):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.VERBOSE = False
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.DATASET.DOWNLOAD = False
    cfg.SEED = seed
    for key, value in dataset_keys.items():
        node = cfg.DATASET
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def classnames_for(name):
    declared = DATASET_REGISTRY.get(name).CLASSNAMES
    return list(declared) if declared else ["scan type a", "scan type b", "scan type c"]


def prepare(root, name):
    """Fake tree for ``name``; returns the extra config keys the dataset needs."""
    if name == "ImageFolderSplit":
        write_split_tree(os.path.join(root, "mine", "images"), os.path.join(root, "mine", "split.json"),
                         classnames_for(name), PER_CLASS)
        return {"IMAGE_FOLDER.DIR": "mine/images", "IMAGE_FOLDER.SPLIT_FILE": "mine/split.json",
                "IMAGE_FOLDER.MODALITY": "test imaging"}
    write_fake_dataset(root, name, classnames_for(name), PER_CLASS)
    return {}


def selection(dataset):
    return [(d.impath, d.label) for d in dataset.train_x], [(d.impath, d.label) for d in dataset.val]


@pytest.fixture(params=DATASET_NAMES)
def prepared(request, tmp_path):
    return request.param, tmp_path, prepare(str(tmp_path), request.param)


def test_full_split_loads(prepared):
    name, root, keys = prepared
    dataset = build_dataset(make_cfg(root, name, **keys))
    classnames = classnames_for(name)
    assert dataset.classnames == classnames
    assert dataset.num_classes == len(classnames)
    assert [len(dataset.train_x), len(dataset.val), len(dataset.test)] == [n * len(classnames) for n in PER_CLASS]
    assert all(os.path.isfile(d.impath) for d in dataset.test)


@pytest.mark.parametrize("num_shots", [1, 2, 4, 8, 16])
def test_fewshot_is_deterministic_and_cached(prepared, num_shots):
    name, root, keys = prepared
    n_classes = len(classnames_for(name))
    draws = {}
    for seed in (1, 2, 3):
        cfg = make_cfg(root, name, num_shots=num_shots, seed=seed, **keys)
        random.seed(seed * 7919)  # global state must not matter
        first = build_dataset(cfg)
        cache = first.paths.fewshot_path(num_shots, seed)
        assert os.path.isfile(cache) and not cache.endswith(".pkl")
        assert all(not os.path.isabs(entry[0]) for entry in read_json(cache)["train"])
        random.seed(0)
        from_cache = build_dataset(cfg)
        os.remove(cache)
        redrawn = build_dataset(cfg)
        assert selection(first) == selection(from_cache) == selection(redrawn)
        assert Counter(d.label for d in first.train_x) == {label: num_shots for label in range(n_classes)}
        assert Counter(d.label for d in first.val) == {label: min(num_shots, 4) for label in range(n_classes)}
        assert len(first.test) == PER_CLASS[2] * n_classes  # test is never subsampled by shots
        draws[seed] = selection(first)[0]
    assert draws[1] != draws[2] != draws[3] != draws[1]


@pytest.mark.parametrize("subsample", ["base", "new"])
def test_base_new_relabels(prepared, subsample):
    name, root, keys = prepared
    classnames = classnames_for(name)
    m = math.ceil(len(classnames) / 2)
    expected = classnames[:m] if subsample == "base" else classnames[m:]
    full = build_dataset(make_cfg(root, name, num_shots=4, seed=1, **keys))
    part = build_dataset(make_cfg(root, name, num_shots=4, seed=1, subsample=subsample, **keys))
    assert part.classnames == expected
    for split in ("train_x", "val", "test"):
        items = getattr(part, split)
        assert sorted({d.label for d in items}) == list(range(len(expected)))
        assert all(d.classname == expected[d.label] for d in items)
        # the same images as the full few-shot sample, restricted to the chosen classes
        kept = {d.impath for d in getattr(full, split) if d.classname in expected}
        assert {d.impath for d in items} == kept


@pytest.mark.parametrize("name", sorted(n for n in PUBLIC_NAMES if n != "OCTMNIST"))
def test_declared_classnames_match_official_split(name):
    path = os.path.join(OFFICIAL_SPLITS, f"split_{name}.json")
    if not os.path.isfile(path):
        pytest.skip(f"official split not available at {path}")
    check_classnames(read_split(path), DATASET_REGISTRY.get(name).CLASSNAMES, path, name)


def test_public_datasets_declare_classes_modality_and_download():
    for name in PUBLIC_NAMES:
        cls = DATASET_REGISTRY.get(name)
        assert cls.CLASSNAMES and len(set(cls.CLASSNAMES)) == len(cls.CLASSNAMES), name
        assert cls.MODALITY and cls.DOWNLOAD.name == name and cls.DOWNLOAD.gdrive_id, name
    assert DATASET_REGISTRY.get("OCTMNIST").CLASSNAMES[3] == "normal OCT scan"


def test_each_dataset_has_a_config_file():
    names = {}
    for path in glob.glob(os.path.join(REPO_ROOT, "configs", "datasets", "*.yaml")):
        with open(path) as f:
            names[os.path.basename(path)] = yaml.safe_load(f)["DATASET"]["NAME"]
    assert set(names.values()) == set(DATASET_NAMES)
    assert names["covid.yaml"] == "COVID_19" and names["syntheticmed.yaml"] == "SyntheticMed"


def test_sampling_ignores_global_random_state():
    entries = [(f"c{label}/{i}.png", label, f"class {label}") for label in range(3) for i in range(30)]
    random.seed(1)
    first = make_fewshot_split(entries, entries, 5, seed=2)
    random.seed(99)
    random.random()
    assert make_fewshot_split(entries, entries, 5, seed=2) == first
    assert make_fewshot_split(entries, entries, 5, seed=3) != first


# ---------------------------------------------------------------- errors


def test_too_many_shots_keep_the_class_and_warn(tmp_path):
    write_fake_dataset(tmp_path, "BUSI", classnames_for("BUSI"), (3, 8, 1))
    with pytest.warns(UserWarning) as record:
        dataset = build_dataset(make_cfg(tmp_path, "BUSI", num_shots=8))
    messages = " ".join(str(w.message) for w in record)
    for classname in classnames_for("BUSI"):
        assert f"class '{classname}'" in messages
    assert "only 3 train image(s), fewer than the 8 requested" in messages
    assert Counter(d.label for d in dataset.train_x) == {0: 3, 1: 3, 2: 3}


def test_missing_dataset_root_names_the_expected_paths(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(make_cfg(tmp_path, "BTMRI"))
    message = str(err.value)
    assert os.path.join(str(tmp_path), "BTMRI", "split_BTMRI.json") in message
    assert "DATASET.DOWNLOAD" in message and "download_datasets" in message


def test_uk_biobank_missing_says_data_are_restricted(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="UK Biobank"):
        build_dataset(make_cfg(tmp_path, "CardiacMRI"))


def test_split_referencing_missing_images_names_the_file(tmp_path):
    paths = write_fake_dataset(tmp_path, "BUSI", classnames_for("BUSI"), (2, 1, 1))
    os.remove(os.path.join(paths.image_dir, "normal_scan", "test_000.png"))
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(make_cfg(tmp_path, "BUSI"))
    assert "normal_scan/test_000.png" in str(err.value) and paths.split_path in str(err.value)


def test_split_with_wrong_class_order_is_rejected(tmp_path):
    swapped = ["malignant tumor", "benign tumor", "normal scan"]
    write_fake_dataset(tmp_path, "BUSI", swapped, (2, 1, 1))
    with pytest.raises(SplitFileError, match="label 0: split has 'malignant tumor', BUSI declares 'benign tumor'"):
        build_dataset(make_cfg(tmp_path, "BUSI"))


def test_pinned_classnames_check_user_split(tmp_path):
    write_fake_dataset(tmp_path, "LiverMRI", ["healthy liver", "fatty liver"], (2, 1, 1))
    dataset = build_dataset(make_cfg(tmp_path, "LiverMRI", CLASSNAMES=["healthy liver", "fatty liver"]))
    assert dataset.classnames == ["healthy liver", "fatty liver"]
    with pytest.raises(SplitFileError, match="LiverMRI"):
        build_dataset(make_cfg(tmp_path, "LiverMRI", CLASSNAMES=["fatty liver", "healthy liver"]))


@pytest.mark.parametrize("bad_entry", [["a.png", "0", "x"], ["a.png", 0], "a.png"])
def test_malformed_split_entry_is_named(tmp_path, bad_entry):
    paths = DatasetPaths.under_root(tmp_path, "BUSI")
    os.makedirs(paths.image_dir)
    write_json({"train": [bad_entry], "val": [], "test": []}, paths.split_path)
    with pytest.raises(SplitFileError, match=r"train\[0\]"):
        build_dataset(make_cfg(tmp_path, "BUSI"))


def test_unreadable_image_names_the_file(tmp_path):
    paths = write_fake_dataset(tmp_path, "BUSI", classnames_for("BUSI"), (2, 1, 1))
    dataset = build_dataset(make_cfg(tmp_path, "BUSI"))
    broken = dataset.train_x[0].impath
    with open(broken, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ImageReadError, match=broken):
        read_image(broken)
    assert read_image(dataset.train_x[1].impath).size == (4, 4)
    assert paths.image_dir in broken


def test_stale_fewshot_cache_is_redrawn(tmp_path):
    write_fake_dataset(tmp_path, "BUSI", classnames_for("BUSI"), (5, 2, 1))
    cfg = make_cfg(tmp_path, "BUSI", num_shots=2)
    first = build_dataset(cfg)
    cache = first.paths.fewshot_path(2, 1)
    write_json({"train": [["elsewhere/x.png", 0, "benign tumor"]], "val": []}, cache)
    with pytest.warns(UserWarning, match="split changed"):
        again = build_dataset(cfg)
    assert selection(again) == selection(first)


def test_image_folder_split_requires_its_keys(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="IMAGE_FOLDER.SPLIT_FILE"):
        build_dataset(make_cfg(tmp_path, "ImageFolderSplit"))


def test_image_folder_split_absolute_paths_and_modality(tmp_path):
    keys = prepare(str(tmp_path), "ImageFolderSplit")
    keys = {k: os.path.join(str(tmp_path), v) if k != "IMAGE_FOLDER.MODALITY" else v for k, v in keys.items()}
    dataset = build_dataset(make_cfg("/nonexistent", "ImageFolderSplit", num_shots=2, **keys))
    assert dataset.modality == "test imaging"
    assert os.path.isfile(os.path.join(str(tmp_path), "mine", "split_fewshot", "split", "shot_2-seed_1.json"))


# ---------------------------------------------------------------- SyntheticMed


def test_synthetic_generates_itself_deterministically(tmp_path):
    first = build_dataset(make_cfg(tmp_path / "a", "SyntheticMed"))
    second = build_dataset(make_cfg(tmp_path / "b", "SyntheticMed"))
    assert first.classnames == list(SyntheticMed.CLASSNAMES)
    assert all(" " in name for name in first.classnames)
    assert [len(first.train_x), len(first.val), len(first.test)] == [32, 16, 24]
    for a, b in zip(first.test, second.test):
        assert np.array_equal(np.asarray(read_image(a.impath)), np.asarray(read_image(b.impath)))
    assert not [p for p in os.listdir(tmp_path / "a") if p.startswith(".")]  # no staging left behind


def test_synthetic_classes_are_separable(tmp_path):
    dataset = build_dataset(make_cfg(tmp_path, "SyntheticMed"))

    def features(items):
        return np.stack([np.asarray(read_image(d.impath), dtype=float).mean(axis=(0, 1)) for d in items])

    train = features(dataset.train_x)
    labels = np.array([d.label for d in dataset.train_x])
    centroids = np.stack([train[labels == c].mean(0) for c in range(4)])
    test = features(dataset.test)
    predicted = np.argmin(((test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == np.array([d.label for d in dataset.test])).all()


def test_synthetic_bank_file_matches_its_generator():
    bank = read_json(os.path.join(REPO_ROOT, "datasets", "prompts", "claude", "SyntheticMed.json"))
    assert bank["prompts"] == synthetic_prompt_bank()
    assert bank["modality"] == SyntheticMed.MODALITY
