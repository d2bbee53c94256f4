"""SyntheticMed: a tiny, deterministic, medical-flavoured dataset that writes itself on first use.

For tests, smoke runs and examples without downloads. Each class has its own colour, texture and
blob position plus pixel noise, so a linear probe (or a prompt learner) separates it easily. It goes
through the same base as the real datasets (split file, few-shot cache, base/new).
"""
import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from vmfcoop.engine.build import DATASET_REGISTRY
from vmfcoop.engine.utils import write_json

from .base import SplitDataset
from .download import move_into_place

IMAGE_SIZE = 32
SPLIT_SIZES = {"train": 8, "val": 4, "test": 6}  # images per class
GENERATOR_SEED = 20240607

# classname -> (RGB base colour, texture, blob centre as fractions of the image)
CLASS_LOOKS = {
    "benign lesion": ((200, 170, 150), "smooth", (0.3, 0.3)),
    "malignant tumor": ((120, 40, 60), "stripes", (0.7, 0.3)),
    "normal tissue": ((230, 200, 210), "checker", (0.5, 0.5)),
    "inflammatory cyst": ((90, 140, 200), "rings", (0.3, 0.7)),
}


def texture(kind, size):
    y, x = np.mgrid[0:size, 0:size]
    if kind == "stripes":
        return ((x // 4) % 2).astype(np.float64)
    if kind == "checker":
        return (((x // 4) + (y // 4)) % 2).astype(np.float64)
    if kind == "rings":
        return ((np.hypot(x - size / 2, y - size / 2) // 3) % 2).astype(np.float64)
    return np.zeros((size, size))


def render_image(classname, rng, size=IMAGE_SIZE):
    """One RGB uint8 image: class colour * (texture + blob) + per-image jitter and noise."""
    colour, kind, (cx, cy) = CLASS_LOOKS[classname]
    y, x = np.mgrid[0:size, 0:size]
    centre = (np.array([cx, cy]) + rng.uniform(-0.08, 0.08, 2)) * size
    blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * (size / 6) ** 2))
    intensity = 0.55 + 0.25 * texture(kind, size) + 0.35 * blob
    rgb = np.asarray(colour, dtype=np.float64)[None, None, :] * intensity[..., None]
    rgb += rng.normal(0.0, 12.0, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def generate_tree(image_dir, seed=GENERATOR_SEED):
    """Write the PNGs under ``image_dir`` and return the split object with relative paths."""
    rng = np.random.default_rng(seed)
    split = {name: [] for name in SPLIT_SIZES}
    for label, classname in enumerate(CLASS_LOOKS):
        folder = classname.replace(" ", "_")
        os.makedirs(os.path.join(image_dir, folder), exist_ok=True)
        for split_name, count in SPLIT_SIZES.items():
            for index in range(count):
                relpath = f"{folder}/{split_name}_{index:03d}.png"
                Image.fromarray(render_image(classname, rng)).save(os.path.join(image_dir, relpath))
                split[split_name].append([relpath, label, classname])
    return split


def synthetic_prompt_bank():
    """50 distinct templated descriptions per class (not LLM-written; enough to exercise the vMF fits)."""
    views = ["a close-up", "a low-magnification view", "a high-resolution scan", "a cropped patch",
             "a cross-sectional image", "a screening image", "a follow-up image", "a diagnostic image",
             "a teaching-file image", "a routine image"]
    findings = {
        "benign lesion": ["a smooth, well-circumscribed beige nodule", "a uniform tan region with regular borders",
                          "a small homogeneous lesion without texture", "a soft pale mass with sharp margins",
                          "a round benign-looking spot near the upper left"],
        "malignant tumor": ["a dark crimson mass with striped texture", "an irregular maroon lesion with streaks",
                            "a heterogeneous red-brown tumor with banding", "a dense dark mass with linear striations",
                            "an aggressive-looking burgundy lesion near the upper right"],
        "normal tissue": ["pale pink tissue with a regular checkered pattern", "uniform light tissue in a grid-like texture",
                          "healthy-looking pink parenchyma with even tiling", "a bright, orderly checkerboard texture",
                          "unremarkable pale tissue centred in the field"],
        "inflammatory cyst": ["a blue fluid-filled cyst with concentric rings", "a round bluish cavity with ring-like layers",
                              "a cool-toned cyst showing target-like rings", "a layered blue lesion with concentric walls",
                              "an inflamed cystic structure near the lower left"],
    }
    return {classname: [f"{view} showing {finding}, typical of {classname}."
                        for finding in findings[classname] for view in views]
            for classname in CLASS_LOOKS}


@DATASET_REGISTRY.register()
class SyntheticMed(SplitDataset):
    MODALITY = "synthetic microscopy"
    CLASSNAMES = tuple(CLASS_LOOKS)

    def ensure_available(self, cfg):
        if self.paths.is_complete():
            return
        parent = os.path.dirname(self.paths.dataset_dir)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".SyntheticMed.generate-", dir=parent)
        try:
            image_root = os.path.join(staging, "images")
            split_file = os.path.join(staging, "split.json")
            write_json(generate_tree(image_root), split_file)
            try:
                move_into_place(self.paths, staging, image_root, split_file)
            except OSError:
                if not self.paths.is_complete():  # a concurrent process may have won the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
