"""Helpers for tests: a throw-away image tree plus split file for any list of class names."""
import io
import os

from PIL import Image
from vmfcoop.engine.utils import write_json

from .layout import DatasetPaths


def tiny_png_bytes(label, size=4):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), ((37 * label) % 256, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_split_tree(image_dir, split_path, classnames, counts=(20, 8, 8)):
    """Write ``counts`` = (train, val, test) tiny PNGs per class and the matching split file."""
    split = {"train": [], "val": [], "test": []}
    for label, classname in enumerate(classnames):
        folder = classname.replace(" ", "_")
        os.makedirs(os.path.join(image_dir, folder), exist_ok=True)
        png = tiny_png_bytes(label)
        for split_name, count in zip(split, counts):
            for index in range(count):
                relpath = f"{folder}/{split_name}_{index:03d}.png"
                with open(os.path.join(image_dir, relpath), "wb") as f:
                    f.write(png)
                split[split_name].append([relpath, label, classname])
    write_json(split, split_path)
    return split


def write_fake_dataset(root, name, classnames, counts=(20, 8, 8)):
    """``<root>/<name>/<name>/...`` and ``<root>/<name>/split_<name>.json``; returns the DatasetPaths."""
    paths = DatasetPaths.under_root(root, name)
    write_split_tree(paths.image_dir, paths.split_path, classnames, counts)
    return paths
