"""LLM prompt banks: per-class lists of textual descriptions used to fit the vMF prototype fields.

A bank is one JSON file ``<dir>/<source>/<DATASET>.json``::

    {"dataset": "BTMRI", "modality": "brain MRI", "generator": "<model>", "instruction": "Give 50 ...",
     "prompts": {"<classname>": ["...", ...], ...}}

A source is a folder name looked up in ``search_dirs`` and then in the banks shipped with the package
(``datasets/prompts/``), a path to such a JSON file, or ``"biomedcoop-gpt4"``: the GPT-4 descriptions
published with BiomedCoOp, downloaded once from GitHub and cached (keyed by class name, all datasets).
"""
import ast
import os
import urllib.request

from vmfcoop.engine.errors import VmfcoopError
from vmfcoop.engine.utils import read_json, write_json

PACKAGED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")
DEFAULT_SOURCE = "claude"
INSTRUCTION = ("Give {n} textual descriptions of visual discriminative features for distinct medical cases "
               "of {classname} found in {modality}.")

GPT4_SOURCE = "biomedcoop-gpt4"
GPT4_URL = "https://raw.githubusercontent.com/HealthX-Lab/BiomedCoOp/main/trainers/prompt_templates.py"
GPT4_VARIABLE = "BIOMEDCOOP_TEMPLATES"


class PromptBankError(VmfcoopError, ValueError):
    """A prompt bank is missing, malformed, or lacks a class."""


def cache_dir():
    base = os.environ.get("VMFCOOP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vmfcoop")
    return os.path.join(base, "prompts")


# ---------------------------------------------------------------- BiomedCoOp GPT-4 set

def parse_python_dict_literal(source_text, variable, origin="<string>"):
    """The dict assigned to ``variable`` at module level, read with ast.literal_eval (never executed)."""
    try:
        tree = ast.parse(source_text, filename=origin)
    except SyntaxError as err:
        raise PromptBankError(f"{origin} is not valid Python: {err}") from None
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == variable for t in targets) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError as err:
                raise PromptBankError(f"{origin}: {variable} is not a plain literal ({err}).") from None
            if not (isinstance(value, dict) and all(
                    isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v)
                    for k, v in value.items())):
                raise PromptBankError(f"{origin}: {variable} is not a dict of class name -> list of strings.")
            return value
    raise PromptBankError(f"{origin} does not assign {variable} at module level.")


def fetch_text(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode("utf-8")


def gpt4_cache_path():
    return os.path.join(cache_dir(), f"{GPT4_SOURCE}.json")


def load_biomedcoop_gpt4(fetch=None):
    """``{classname: [sentences]}`` from the cache, downloading and caching it on first use."""
    path = gpt4_cache_path()
    if not os.path.isfile(path):
        fetch = fetch or fetch_text
        try:
            text = fetch(GPT4_URL)
        except OSError as err:
            raise PromptBankError(
                f"Could not download the BiomedCoOp GPT-4 prompts from {GPT4_URL} ({err}). Download that file "
                f"yourself and convert it with vmfcoop.datasets.prompt_bank.cache_biomedcoop_gpt4(<path>), "
                f"or use another prompt source."
            ) from None
        cache_gpt4_text(text, GPT4_URL)
    return read_json(path)["prompts"]


def cache_gpt4_text(text, origin):
    prompts = parse_python_dict_literal(text, GPT4_VARIABLE, origin)
    write_json({"source": origin, "generator": "GPT-4 (BiomedCoOp)", "prompts": prompts}, gpt4_cache_path())
    return prompts


def cache_biomedcoop_gpt4(templates_py_path):
    """Cache the GPT-4 set from a local copy of BiomedCoOp's trainers/prompt_templates.py (offline use)."""
    with open(templates_py_path, encoding="utf-8") as f:
        return cache_gpt4_text(f.read(), templates_py_path)


# ---------------------------------------------------------------- bank files

def bank_path(source, dataset_name, search_dirs=()):
    """Resolve a source to the JSON file holding ``dataset_name``'s bank."""
    if source.endswith(".json") or os.path.isfile(source):
        if not os.path.isfile(source):
            raise PromptBankError(f"Prompt bank file not found: {source}")
        return source
    candidates = [os.path.join(d, source, f"{dataset_name}.json") for d in (*search_dirs, PACKAGED_DIR)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise PromptBankError(
        f"No prompt bank '{source}' for {dataset_name}; looked for:\n  " + "\n  ".join(candidates)
        + "\nWrite one with `python -m vmfcoop.tools.generate_prompts`, or pick another source."
    )


def read_bank_file(path):
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("prompts"), dict):
        raise PromptBankError(f"{path}: a prompt bank needs a 'prompts' object mapping class name -> list of strings.")
    return raw["prompts"]


def select_prompts(prompts, classnames, n_prompts, origin):
    """The first ``n_prompts`` strings of each class, checked; errors name ``origin`` and the class."""
    selected = {}
    for classname in classnames:
        if classname not in prompts:
            raise PromptBankError(
                f"{origin} has no prompts for class {classname!r}; it has: {sorted(prompts)}."
            )
        sentences = prompts[classname]
        if not isinstance(sentences, list):
            raise PromptBankError(f"{origin}: the prompts of class {classname!r} must be a list of strings.")
        bad = [i for i, s in enumerate(sentences) if not isinstance(s, str) or not s.strip()]
        if bad:
            raise PromptBankError(f"{origin}: class {classname!r} has empty or non-string prompts at indices {bad}.")
        if n_prompts is not None and len(sentences) < n_prompts:
            raise PromptBankError(
                f"{origin}: class {classname!r} has {len(sentences)} prompts, fewer than the {n_prompts} requested."
            )
        selected[classname] = list(sentences[:n_prompts] if n_prompts is not None else sentences)
    return selected


def load_prompt_bank(dataset_name, classnames, sources=(DEFAULT_SOURCE,), n_prompts=50, search_dirs=()):
    """``{source: {classname: [first n_prompts strings]}}`` for every requested source."""
    banks = {}
    for source in sources:
        if source == GPT4_SOURCE:
            banks[source] = select_prompts(load_biomedcoop_gpt4(), classnames, n_prompts,
                                           f"{GPT4_SOURCE} ({gpt4_cache_path()})")
        else:
            path = bank_path(source, dataset_name, search_dirs)
            banks[source] = select_prompts(read_bank_file(path), classnames, n_prompts, path)
    return banks


def load_prompt_bank_from_cfg(cfg, classnames):
    """Read DATASET.PROMPTS.{SOURCES, N_PROMPTS, DIRS, BANK_NAME} (BANK_NAME "" = DATASET.NAME)."""
    prompts_cfg = cfg.DATASET.PROMPTS
    n_prompts = prompts_cfg.N_PROMPTS if prompts_cfg.N_PROMPTS > 0 else None
    return load_prompt_bank(prompts_cfg.BANK_NAME or cfg.DATASET.NAME, classnames, tuple(prompts_cfg.SOURCES),
                            n_prompts=n_prompts, search_dirs=tuple(prompts_cfg.DIRS))
