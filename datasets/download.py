"""Download a dataset zip, extract it safely and install it atomically.

Order of archive sources: the Hugging Face dataset repo, then Google Drive (gdown). The split file comes
from the archive when it carries one, else from the BiomedCoOp GitHub repository. Everything happens in a
hidden staging folder beside the target and is verified against the split file before one rename puts it
in place, so an interrupted or failed download never leaves a half dataset.

Sources are plain callables ``source(spec, dest_dir) -> path`` (return None when the source does not
apply); ``ARCHIVE_SOURCES`` / ``SPLIT_SOURCES`` are the defaults and tests replace them.
"""
import os
import re
import shutil
import stat
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass

from tqdm import tqdm
from vmfcoop.engine.errors import VmfcoopError
from vmfcoop.engine.utils import atomic_write

from .layout import DatasetNotFoundError, DatasetPaths, check_images_present, read_split

HF_DATASET_REPO = "TahaKoleilat/BiomedCoOp"
BIOMEDCOOP_SPLIT_URL = "https://raw.githubusercontent.com/HealthX-Lab/BiomedCoOp/main/data/{name}/split_{name}.json"
SEARCH_DEPTH = 3  # how deep inside an archive to look for the image folder and the split file


class UnsafeArchiveError(VmfcoopError, ValueError):
    """An archive entry would escape the extraction folder (absolute path, '..', or a symlink)."""


@dataclass(frozen=True)
class DownloadSpec:
    name: str
    hf_repo: str = ""
    hf_filename: str = ""
    gdrive_id: str = ""
    split_url: str = ""


def biomedcoop_download(name, gdrive_id):
    return DownloadSpec(name=name, hf_repo=HF_DATASET_REPO, hf_filename=f"{name}.zip", gdrive_id=gdrive_id,
                        split_url=BIOMEDCOOP_SPLIT_URL.format(name=name))


# ---------------------------------------------------------------- sources

def from_hugging_face(spec, dest_dir):
    if not (spec.hf_repo and spec.hf_filename):
        return None
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=spec.hf_repo, repo_type="dataset", filename=spec.hf_filename, local_dir=dest_dir)


def from_google_drive(spec, dest_dir):
    if not spec.gdrive_id:
        return None
    import gdown

    path = gdown.download(id=spec.gdrive_id, output=os.path.join(dest_dir, f"{spec.name}.zip"), quiet=False)
    if not path:
        raise RuntimeError(f"gdown could not fetch Google Drive file {spec.gdrive_id}")
    return path


def from_split_url(spec, dest_dir):
    if not spec.split_url:
        return None
    return fetch_url(spec.split_url, os.path.join(dest_dir, f"split_{spec.name}.json"))


def fetch_url(url, path):
    """Stream ``url`` to ``path`` with a progress bar."""
    with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(path)) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
    return path


ARCHIVE_SOURCES = [from_hugging_face, from_google_drive]
SPLIT_SOURCES = [from_split_url]


# ---------------------------------------------------------------- safe extraction

def unsafe_reason(info):
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def safe_extract_zip(archive, dest_dir):
    """Extract ``archive`` into ``dest_dir``; refuse the whole archive if any entry is unsafe."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            reason = unsafe_reason(info)
            if reason:
                raise UnsafeArchiveError(f"Refusing to extract {archive}: entry {info.filename!r} is a {reason}.")
        for info in tqdm(members, desc=f"Extracting {os.path.basename(archive)}", unit="file"):
            zf.extract(info, dest_dir)


def walk_dirs(top, depth=SEARCH_DEPTH):
    """``top`` and its sub-folders down to ``depth`` levels, shallowest first, skipping macOS debris."""
    level = [top]
    for _ in range(depth + 1):
        yield from level
        level = [os.path.join(d, child) for d in level for child in sorted(os.listdir(d))
                 if child != "__MACOSX" and os.path.isdir(os.path.join(d, child))]


def find_split_file(top, name):
    for folder in walk_dirs(top):
        candidate = os.path.join(folder, f"split_{name}.json")
        if os.path.isfile(candidate):
            return candidate
    return None


def find_image_root(top, splits, probe=20):
    """The folder under which the split's relative paths exist (probed on the first entries)."""
    sample = [relpath for entries in splits.values() for relpath, _, _ in entries][:probe]
    for folder in walk_dirs(top):
        if all(os.path.isfile(os.path.join(folder, relpath)) for relpath in sample):
            return folder
    raise DatasetNotFoundError(f"The archive does not contain the images listed in the split file "
                               f"(looked for {sample[0]!r} under {top}).")


# ---------------------------------------------------------------- orchestration

def try_sources(sources, spec, dest_dir, what):
    """Return the first path a source delivers, or raise naming every failure."""
    failures = []
    for source in sources:
        try:
            path = source(spec, dest_dir)
        except Exception as err:  # noqa: BLE001 - any failure means "try the next source"
            failures.append(f"{getattr(source, '__name__', source)}: {type(err).__name__}: {err}")
            continue
        if path:
            return path
    raise DatasetNotFoundError(f"Could not download the {what} of {spec.name}:\n  " + "\n  ".join(failures or ["no source"]))


def install_from_archive(spec, paths, staging, archive, split_sources):
    """Extract ``archive``, find/fetch the split, verify, and return (image folder, split file) in staging."""
    extracted = os.path.join(staging, "extracted")
    safe_extract_zip(archive, extracted)
    os.remove(archive)  # free the disk space before the rename
    split_file = find_split_file(extracted, spec.name)
    if split_file is None and os.path.isfile(paths.split_path):
        split_file = paths.split_path
    if split_file is None:
        split_file = try_sources(split_sources, spec, staging, "split file")
    splits = read_split(split_file)
    image_root = find_image_root(extracted, splits)
    check_images_present(splits, image_root, split_file)
    return image_root, split_file


def manual_download_hint(spec):
    urls = []
    if spec.hf_repo and spec.hf_filename:
        urls.append(f"https://huggingface.co/datasets/{spec.hf_repo}/resolve/main/{spec.hf_filename}")
    if spec.gdrive_id:
        urls.append(f"https://drive.google.com/file/d/{spec.gdrive_id}/view")
    where = " or ".join(urls) if urls else "its original source"
    return f"Download it by hand from {where}, unzip it and place it as shown above."


def download_dataset(spec, root, sources=None, split_sources=None):
    """Make ``<root>/<NAME>/`` complete (images + split file), downloading what is missing."""
    sources = ARCHIVE_SOURCES if sources is None else sources
    split_sources = SPLIT_SOURCES if split_sources is None else split_sources
    paths = DatasetPaths.under_root(root, spec.name)
    if paths.is_complete():
        return paths
    os.makedirs(os.path.dirname(paths.dataset_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{spec.name}.download-", dir=os.path.dirname(paths.dataset_dir))
    try:
        if os.path.isdir(paths.image_dir):
            try:
                split_file = try_sources(split_sources, spec, staging, "split file")
            except DatasetNotFoundError as err:
                raise DatasetNotFoundError(f"{err}\n{paths.layout_help()}\nPlace the split file there "
                                           f"(official copy: {spec.split_url or 'none'}).") from None
            check_images_present(read_split(split_file), paths.image_dir, split_file)
            os.replace(split_file, paths.split_path)
            return paths
        failures = []
        for source in sources:
            try:
                archive = source(spec, staging)
                if not archive:
                    continue  # this source does not serve this dataset
                image_root, split_file = install_from_archive(spec, paths, staging, archive, split_sources)
                break
            except Exception as err:  # noqa: BLE001 - any failure means "try the next source"
                failures.append(f"{getattr(source, '__name__', source)}: {type(err).__name__}: {err}")
                shutil.rmtree(os.path.join(staging, "extracted"), ignore_errors=True)
        else:
            raise DatasetNotFoundError(
                f"Could not download {spec.name}:\n  " + "\n  ".join(failures or ["no download source"])
                + f"\n{paths.layout_help()}\n{manual_download_hint(spec)}"
            )
        move_into_place(paths, staging, image_root, split_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def move_into_place(paths, staging, image_root, split_file):
    if not os.path.isdir(paths.dataset_dir):
        # Assemble <NAME>/{<NAME>/, split_<NAME>.json} in staging, then one atomic rename.
        assembled = os.path.join(staging, "assembled")
        os.makedirs(assembled)
        os.rename(image_root, os.path.join(assembled, paths.name))
        shutil.copyfile(split_file, os.path.join(assembled, os.path.basename(paths.split_path)))
        os.rename(assembled, paths.dataset_dir)
        return
    # The folder exists (e.g. a split file or few-shot caches only): images first, the split file last,
    # so the split file's presence always means "complete".
    os.rename(image_root, paths.image_dir)
    if not os.path.isfile(paths.split_path):
        with atomic_write(paths.split_path) as tmp:
            shutil.copyfile(split_file, tmp)
