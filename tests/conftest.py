import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Feature caches and downloaded prompt sets go to a fresh folder per test session, never ~/.cache.
os.environ["VMFCOOP_CACHE"] = tempfile.mkdtemp(prefix="vmfcoop-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A data root shared by the session; SyntheticMed writes itself there on first use."""
    return str(tmp_path_factory.mktemp("data"))
