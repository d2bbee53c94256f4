"""Downloader: local zips stand in for Hugging Face / Google Drive / GitHub (nothing touches the network)."""
import os
import shutil
import stat
import zipfile

import pytest
import vmfcoop.datasets.download as download
from vmfcoop.datasets.download import DownloadSpec, UnsafeArchiveError, download_dataset, safe_extract_zip
from vmfcoop.datasets.layout import DatasetNotFoundError, DatasetPaths
from vmfcoop.datasets.testing import write_split_tree
from vmfcoop.engine.build import build_dataset
from vmfcoop.engine.config import extend_cfg, get_cfg_default
from vmfcoop.tools import download_datasets

BUSI_CLASSES = ["benign tumor", "malignant tumor", "normal scan"]
SPEC = DownloadSpec(name="BUSI", hf_repo="x/y", hf_filename="BUSI.zip", gdrive_id="id", split_url="http://x")


def zip_tree(src_dir, zip_path, extra=()):
    """Zip ``src_dir`` (names relative to it) plus ``extra`` (ZipInfo, bytes) entries."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for dirpath, _, filenames in os.walk(src_dir):
            for filename in filenames:
                full = os.path.join(dirpath, filename)
                zf.write(full, os.path.relpath(full, src_dir))
        for info, data in extra:
            zf.writestr(info, data)
    return str(zip_path)


def official_zip(tmp_path, with_split=True, nested=True, extra=()):
    """BUSI.zip laid out as BUSI/BUSI/<class>/... (+ BUSI/split_BUSI.json), or flat class folders."""
    src = tmp_path / "zipsrc"
    image_dir = src / "BUSI" / "BUSI" if nested else src
    split_path = tmp_path / "split_BUSI.json"
    write_split_tree(str(image_dir), str(split_path), BUSI_CLASSES, (3, 2, 2))
    if with_split and nested:
        shutil.copy(split_path, src / "BUSI" / "split_BUSI.json")
    return zip_tree(src, tmp_path / "BUSI.zip", extra), str(split_path)


def local(path):
    def source(spec, dest_dir):
        return shutil.copy(path, os.path.join(dest_dir, os.path.basename(path)))
    return source


def failing(exc):
    def source(spec, dest_dir):
        with open(os.path.join(dest_dir, "BUSI.zip"), "wb") as f:
            f.write(b"PK\x03\x04 half a zip")  # a partial download on disk when it dies
        raise exc
    return source


def no_split_source(spec, dest_dir):
    raise AssertionError("the split file should have come from the archive")


def leftovers(root):
    return [p for p in os.listdir(root) if p.startswith(".")]


def make_cfg(root, name="BUSI"):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.VERBOSE = False
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    return cfg


def test_zip_with_split_installs_atomically(tmp_path):
    archive, _ = official_zip(tmp_path)
    root = tmp_path / "data"
    paths = download_dataset(SPEC, str(root), sources=[local(archive)], split_sources=[no_split_source])
    assert paths.is_complete()
    assert os.path.isfile(os.path.join(paths.image_dir, "benign_tumor", "train_000.png"))
    assert leftovers(root) == []


def test_split_fetched_separately_for_flat_zip(tmp_path):
    archive, split = official_zip(tmp_path, nested=False)
    root = tmp_path / "data"
    paths = download_dataset(SPEC, str(root), sources=[local(archive)], split_sources=[local(split)])
    assert paths.is_complete() and leftovers(root) == []


def test_first_use_downloads_through_the_default_sources(tmp_path, monkeypatch):
    archive, _ = official_zip(tmp_path)
    monkeypatch.setattr(download, "ARCHIVE_SOURCES", [failing(ConnectionError("offline")), local(archive)])
    dataset = build_dataset(make_cfg(tmp_path / "data"))
    assert dataset.classnames == BUSI_CLASSES and len(dataset.test) == 6


def test_corrupt_first_archive_falls_back_to_the_next_source(tmp_path):
    archive, _ = official_zip(tmp_path)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(open(archive, "rb").read()[:200])
    root = tmp_path / "data"
    paths = download_dataset(SPEC, str(root), sources=[local(str(truncated)), local(archive)])
    assert paths.is_complete() and leftovers(root) == []


@pytest.mark.parametrize("bad_name", ["../evil.txt", "BUSI/../../evil.txt", "/tmp/evil_abs.txt"])
def test_traversal_entries_are_refused(tmp_path, bad_name):
    archive, _ = official_zip(tmp_path, extra=[(zipfile.ZipInfo(bad_name), b"pwned")])
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="Refusing to extract.*evil"):
        download_dataset(SPEC, str(root), sources=[local(archive)])
    assert not os.path.exists(root / "BUSI") and leftovers(root) == []
    assert not os.path.exists(tmp_path / "evil.txt") and not os.path.exists("/tmp/evil_abs.txt")


def test_symlink_entry_is_refused(tmp_path):
    link = zipfile.ZipInfo("BUSI/BUSI/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive, _ = official_zip(tmp_path, extra=[(link, "/etc/passwd")])
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract_zip(archive, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_interrupted_download_leaves_nothing(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        download_dataset(SPEC, str(root), sources=[failing(KeyboardInterrupt())])
    assert os.listdir(root) == []


def test_interrupt_after_extraction_leaves_nothing(tmp_path, monkeypatch):
    archive, _ = official_zip(tmp_path)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "find_image_root", interrupted)
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        download_dataset(SPEC, str(root), sources=[local(archive)])
    assert os.listdir(root) == []


def test_all_sources_failing_is_one_clear_error(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as err:
        download_dataset(SPEC, str(root), sources=[failing(ConnectionError("no route to host"))])
    message = str(err.value)
    assert "no route to host" in message and os.path.join(str(root), "BUSI", "split_BUSI.json") in message
    assert os.listdir(root) == []


def test_archive_missing_listed_images_is_not_installed(tmp_path):
    archive, _ = official_zip(tmp_path)
    pruned = tmp_path / "pruned.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(pruned, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("normal_scan/test_001.png"):
                dst.writestr(info, src.read(info))
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="normal_scan/test_001.png"):
        download_dataset(SPEC, str(root), sources=[local(str(pruned))])
    assert os.listdir(root) == []


def test_existing_images_only_fetch_the_split(tmp_path):
    root = tmp_path / "data"
    paths = DatasetPaths.under_root(root, "BUSI")
    split = tmp_path / "split_BUSI.json"
    write_split_tree(paths.image_dir, str(split), BUSI_CLASSES, (1, 1, 1))
    download_dataset(SPEC, str(root), sources=[], split_sources=[local(str(split))])
    assert paths.is_complete() and leftovers(root) == []


def test_cli_downloads_by_config_name(tmp_path, monkeypatch, capsys):
    archive, _ = official_zip(tmp_path)
    monkeypatch.setattr(download, "ARCHIVE_SOURCES", [local(archive)])
    root = str(tmp_path / "data")
    assert download_datasets.main(["busi", "--root", root]) == 0
    assert download_datasets.main(["BUSI", "--root", root]) == 0
    assert "already present" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="cannot be downloaded automatically"):
        download_datasets.main(["cardiacmri", "--root", root])
    assert download_datasets.resolve_name("covid", download_datasets.downloadable()) == "COVID_19"
