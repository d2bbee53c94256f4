"""Prompt banks: the shipped files, the loader's errors, and the BiomedCoOp GPT-4 parser."""
import json
import os

import pytest
import vmfcoop.datasets  # noqa: F401  (registers the datasets)
from vmfcoop.datasets import prompt_bank
from vmfcoop.datasets.prompt_bank import (
    INSTRUCTION,
    PACKAGED_DIR,
    PromptBankError,
    load_prompt_bank,
    load_prompt_bank_from_cfg,
    parse_python_dict_literal,
)
from vmfcoop.engine.build import DATASET_REGISTRY
from vmfcoop.engine.config import extend_cfg, get_cfg_default

# Datasets whose class names are public (the UK Biobank sets and ImageFolderSplit take theirs from the user).
BANKED = sorted(n for n in DATASET_REGISTRY.registered_names() if DATASET_REGISTRY.get(n).CLASSNAMES)


@pytest.mark.parametrize("name", BANKED)
def test_claude_bank_has_50_distinct_prompts_per_class(name):
    cls = DATASET_REGISTRY.get(name)
    path = os.path.join(PACKAGED_DIR, "claude", f"{name}.json")
    assert os.path.isfile(path), f"missing prompt bank {path}"
    with open(path) as f:
        bank = json.load(f)
    assert bank["dataset"] == name and bank["modality"] == cls.MODALITY
    assert bank["generator"] and bank["instruction"] == INSTRUCTION.format(
        n=50, classname="[CLASS]", modality="[MODALITY]")
    assert set(bank["prompts"]) == set(cls.CLASSNAMES)
    for classname, sentences in bank["prompts"].items():
        distinct = {s.strip() for s in sentences if isinstance(s, str) and s.strip()}
        assert len(sentences) == 50 and len(distinct) == 50, f"{path}: {classname!r} has {len(distinct)} distinct"
    loaded = load_prompt_bank(name, list(cls.CLASSNAMES))
    assert list(loaded) == ["claude"] and all(len(v) == 50 for v in loaded["claude"].values())


def write_bank(directory, dataset, prompts):
    path = os.path.join(directory, "mine", f"{dataset}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"dataset": dataset, "modality": "x", "generator": "test", "instruction": "", "prompts": prompts}, f)
    return path


def test_search_dirs_path_sources_and_truncation(tmp_path):
    path = write_bank(str(tmp_path), "Toy", {"cat a": [f"a{i}" for i in range(60)], "cat b": [f"b{i}" for i in range(60)]})
    banks = load_prompt_bank("Toy", ["cat b", "cat a"], sources=("mine", path), n_prompts=3, search_dirs=(str(tmp_path),))
    assert banks["mine"] == {"cat b": ["b0", "b1", "b2"], "cat a": ["a0", "a1", "a2"]}
    assert banks[path] == banks["mine"]
    assert load_prompt_bank("Toy", ["cat a"], sources=(path,), n_prompts=None)[path]["cat a"][-1] == "a59"


def test_missing_class_names_file_and_class(tmp_path):
    path = write_bank(str(tmp_path), "Toy", {"cat a": ["x"] * 50})
    with pytest.raises(PromptBankError) as err:
        load_prompt_bank("Toy", ["cat a", "cat z"], sources=(path,))
    assert path in str(err.value) and "'cat z'" in str(err.value)


def test_empty_prompt_is_rejected(tmp_path):
    path = write_bank(str(tmp_path), "Toy", {"cat a": ["ok"] * 10 + ["  "] + ["ok"] * 39})
    with pytest.raises(PromptBankError, match=r"'cat a' has empty or non-string prompts at indices \[10\]"):
        load_prompt_bank("Toy", ["cat a"], sources=(path,))


def test_too_few_prompts_is_rejected(tmp_path):
    path = write_bank(str(tmp_path), "Toy", {"cat a": ["p"] * 10})
    with pytest.raises(PromptBankError, match="has 10 prompts, fewer than the 50"):
        load_prompt_bank("Toy", ["cat a"], sources=(path,))


def test_missing_bank_lists_the_searched_paths(tmp_path):
    with pytest.raises(PromptBankError) as err:
        load_prompt_bank("NoSuchSet", ["a"], sources=("claude",), search_dirs=(str(tmp_path),))
    assert os.path.join(str(tmp_path), "claude", "NoSuchSet.json") in str(err.value)
    assert os.path.join(PACKAGED_DIR, "claude", "NoSuchSet.json") in str(err.value)


def test_cfg_entry_point_uses_bank_name(tmp_path):
    write_bank(str(tmp_path), "Custom", {"c": [f"s{i}" for i in range(5)]})
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = "ImageFolderSplit"
    cfg.DATASET.PROMPTS.BANK_NAME = "Custom"
    cfg.DATASET.PROMPTS.SOURCES = ["mine"]
    cfg.DATASET.PROMPTS.DIRS = [str(tmp_path)]
    cfg.DATASET.PROMPTS.N_PROMPTS = 2
    assert load_prompt_bank_from_cfg(cfg, ["c"]) == {"mine": {"c": ["s0", "s1"]}}


# ---------------------------------------------------------------- BiomedCoOp GPT-4 set

TEMPLATES_FIXTURE = '''
import os
CUSTOM_TEMPLATES = {"BTMRI": "a photo of a {}."}
os.environ["VMFCOOP_FIXTURE_EXECUTED"] = "1"
BIOMEDCOOP_TEMPLATES = {
    "glioma tumor": [
        "an MRI showing an infiltrative mass.",
        "a T2 scan with " "surrounding edema.",
    ],
    "normal brain": ["symmetric ventricles."] * 1,
}
'''


def test_gpt4_parser_reads_the_literal_without_executing():
    with pytest.raises(PromptBankError, match="not a plain literal"):
        parse_python_dict_literal(TEMPLATES_FIXTURE, "BIOMEDCOOP_TEMPLATES")  # `* 1` is not a literal
    fixture = TEMPLATES_FIXTURE.replace(" * 1", "")
    parsed = parse_python_dict_literal(fixture, "BIOMEDCOOP_TEMPLATES")
    assert parsed == {"glioma tumor": ["an MRI showing an infiltrative mass.", "a T2 scan with surrounding edema."],
                      "normal brain": ["symmetric ventricles."]}
    assert "VMFCOOP_FIXTURE_EXECUTED" not in os.environ
    with pytest.raises(PromptBankError, match="does not assign MISSING"):
        parse_python_dict_literal(fixture, "MISSING")
    with pytest.raises(PromptBankError, match="dict of class name"):
        parse_python_dict_literal("X = {'a': 'not a list'}", "X")


def test_gpt4_source_downloads_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("VMFCOOP_CACHE", str(tmp_path))
    calls = []

    def fake_fetch(url):
        calls.append(url)
        return TEMPLATES_FIXTURE.replace(" * 1", "")

    monkeypatch.setattr(prompt_bank, "fetch_text", fake_fetch)
    first = load_prompt_bank("BTMRI", ["glioma tumor"], sources=("biomedcoop-gpt4",), n_prompts=2)
    second = load_prompt_bank("BTMRI", ["glioma tumor"], sources=("biomedcoop-gpt4",), n_prompts=2)
    assert first == second and len(first["biomedcoop-gpt4"]["glioma tumor"]) == 2
    assert calls == [prompt_bank.GPT4_URL]
    with pytest.raises(PromptBankError, match="'meningioma tumor'"):
        load_prompt_bank("BTMRI", ["meningioma tumor"], sources=("biomedcoop-gpt4",), n_prompts=2)


def test_gpt4_download_failure_explains_the_offline_route(tmp_path, monkeypatch):
    monkeypatch.setenv("VMFCOOP_CACHE", str(tmp_path))

    def offline(url):
        raise OSError("network unreachable")

    monkeypatch.setattr(prompt_bank, "fetch_text", offline)
    with pytest.raises(PromptBankError, match="cache_biomedcoop_gpt4"):
        load_prompt_bank("BTMRI", ["glioma tumor"], sources=("biomedcoop-gpt4",))
