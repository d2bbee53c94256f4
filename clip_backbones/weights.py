"""Finding backbone files (explicit path, environment variable, Hugging Face hub) and reading them."""
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from vmfcoop.engine.errors import VmfcoopError

OPEN_CLIP_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Buffers that older checkpoints saved but current transformers no longer persists.
_STALE_BUFFER_SUFFIXES = ("position_ids", "relative_position_index")


class BackboneWeightsNotFound(VmfcoopError, RuntimeError):
    """The files a backbone needs are neither at the given path nor in the Hugging Face cache."""


class BackboneWeightsMismatch(VmfcoopError, RuntimeError):
    """A weights file does not fit the backbone's architecture (missing, extra or mis-shaped keys)."""


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    repo_type: str = "model"

    @property
    def url(self):
        kind = "datasets/" if self.repo_type == "dataset" else ""
        return f"https://huggingface.co/{kind}{self.repo_id}"


@dataclass(frozen=True)
class FileRequirement:
    """One role (``weights``, ``vocab``) and the file sets that can fill it, in preference order.

    A choice is a tuple of file names that must all be present together (PMC-CLIP ships its
    weights as three files)."""

    role: str
    choices: tuple
    hub: tuple = ()  # HubRepo sources, tried in order
    required: bool = True
    help: str = ""  # what the file is, for error messages

    def describe(self):
        options = " or ".join(" + ".join(choice) for choice in self.choices)
        where = ", ".join(repo.url for repo in self.hub)
        text = f"  - {self.role}: {options}"
        if self.help:
            text += f" ({self.help})"
        if where:
            text += f"\n      from {where}"
        return text


@dataclass
class ResolvedFiles:
    """Role -> {file name: local path}, plus a description of where they came from."""

    by_role: dict = field(default_factory=dict)
    origin: str = ""

    def get(self, role):
        return self.by_role.get(role)

    def single(self, role):
        files = self.by_role.get(role)
        return next(iter(files.values())) if files else None


def env_var_name(backbone_name):
    """``VMFCOOP_<NAME>_PATH`` with the name upper-cased and non-alphanumerics as ``_``."""
    cleaned = "".join(c if c.isalnum() else "_" for c in backbone_name.upper())
    return f"VMFCOOP_{cleaned}_PATH"


def find_local_files(requirements, path):
    """Fills each role from a folder; a file path is the weights and its folder holds the rest.

    Returns ``(ResolvedFiles, missing requirements)``."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    resolved, missing = ResolvedFiles(origin=str(path)), []
    for req in requirements:
        if req.role == "weights" and path.is_file():
            resolved.by_role[req.role] = {path.name: path}
            continue
        for choice in req.choices:
            candidates = {name: folder / name for name in choice}
            if all(p.is_file() for p in candidates.values()):
                resolved.by_role[req.role] = candidates
                break
        else:
            if req.required:
                missing.append(req)
    return resolved, missing


def fetch_hub_files(requirements):
    """Fills each role from the Hugging Face hub (or its cache when ``HF_HUB_OFFLINE=1``).

    After one failure to reach the hub, the remaining files are looked up in the cache only, so an
    unreachable hub costs one network time-out, not one per candidate file.
    Returns ``(ResolvedFiles, missing requirements, last error text)``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    resolved, missing, last_error = ResolvedFiles(origin="Hugging Face hub"), [], ""
    cache_only = False
    for req in requirements:
        for repo, choice in ((repo, choice) for repo in req.hub for choice in req.choices):
            try:
                resolved.by_role[req.role] = {
                    name: Path(hf_hub_download(repo.repo_id, name, repo_type=repo.repo_type,
                                               local_files_only=cache_only))
                    for name in choice}
                break
            except LocalEntryNotFoundError as error:  # not cached and the hub is unreachable/offline
                cache_only, last_error = True, _first_line(error)
            except Exception as error:  # not in this repo (404), gated, ...: try the next candidate
                last_error = _first_line(error)
        else:
            if req.required:
                missing.append(req)
    return resolved, missing, last_error


def _first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def missing_files_message(backbone_name, requirements, missing, looked_in, detail=""):
    roles = ", ".join(req.role for req in missing)
    lines = [f'Cannot find the {roles} file(s) of backbone "{backbone_name}". Looked in: {looked_in}.']
    if detail:
        lines.append(f"Last hub error: {detail}")
    lines.append("Put these files in one folder:")
    lines += [req.describe() for req in requirements]
    lines.append(
        f"and pass the folder (or the weights file) as MODEL.BACKBONE.PATH, or set "
        f"{env_var_name(backbone_name)}. Files are also found in the Hugging Face cache "
        f"(fill it once online; offline runs need HF_HUB_OFFLINE=1)."
    )
    return "\n".join(lines)


def read_state_dict(path):
    """A flat ``name -> tensor`` dict from .safetensors, a torch pickle or a TorchScript archive.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and a DataParallel ``module.`` prefix."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript_archive(path):  # OpenAI's original CLIP .pt files
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        return {"": obj}
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_torchscript_archive(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def load_weights(model, state_dict, source):
    """Strict ``load_state_dict`` that tolerates stale buffers and names the source on failure."""
    expected = model.state_dict()
    state_dict = {k: v for k, v in state_dict.items()
                  if k in expected or not k.endswith(_STALE_BUFFER_SUFFIXES)}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state_dict)
                       if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or misshaped:
        parts = [f"{label} {len(keys)} (e.g. {', '.join(keys[:4])})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("wrong shape", misshaped)) if keys]
        raise BackboneWeightsMismatch(
            f"The weights in {source} do not fit this architecture: {'; '.join(parts)}. "
            f"Check that the file belongs to this backbone."
        )
    model.load_state_dict(state_dict, strict=True)
