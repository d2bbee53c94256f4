"""Small I/O, seeding and image helpers shared by the whole project."""
import contextlib
import json
import os
import random
import tempfile
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import VmfcoopError


def mkdir_if_missing(dirname):
    os.makedirs(dirname, exist_ok=True)


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    Readers never see a half-written file, and an interrupted writer leaves nothing behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    mkdir_if_missing(directory)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(obj, path):
    with atomic_write(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=4)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"JSON file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise DataFileError(f"Malformed JSON in {path}: {err}. Delete or repair the file.") from None


class DataFileError(VmfcoopError, ValueError):
    """A data file (split, cache, prompt bank) that cannot be parsed; names the file."""


def listdir_nohidden(path, sort=False):
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


def check_isfile(fpath):
    isfile = os.path.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"')
    return isfile


class ImageReadError(VmfcoopError, OSError):
    """A dataset image that cannot be decoded; names the file."""


def read_image(path):
    """Open an image as 8-bit RGB.

    Medical images often come as grayscale, RGBA, palette or 16-bit ("I;16", "I") files; they are
    converted (16-bit/32-bit data rescaled to 0..255 by its own range) instead of failing.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise ImageReadError(f"Image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(
            f"Cannot read image {path} ({err}). The file is corrupt or not an image: "
            "replace it or remove it from the split file."
        ) from None


def to_rgb(img):
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def tolist_if_not(x):
    return x if isinstance(x, list) else [x]
