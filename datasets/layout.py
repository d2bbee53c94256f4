"""Where a split dataset lives on disk (BiomedCoOp layout) and how to read and check its split file.

    <ROOT>/<NAME>/<NAME>/<relative image paths>         images
    <ROOT>/<NAME>/split_<NAME>.json                     {"train"|"val"|"test": [[relpath, label, classname], ...]}
    <ROOT>/<NAME>/split_fewshot/shot_<K>-seed_<S>.json  few-shot cache (written on first use)
"""
import os
from dataclasses import dataclass

from vmfcoop.engine.errors import VmfcoopError
from vmfcoop.engine.utils import read_json

SPLIT_NAMES = ("train", "val", "test")


class DatasetNotFoundError(VmfcoopError, FileNotFoundError):
    """The dataset's images or split file are not where they should be."""


class SplitFileError(VmfcoopError, ValueError):
    """A split file is malformed or disagrees with the dataset's declared classes."""


@dataclass(frozen=True)
class DatasetPaths:
    name: str
    dataset_dir: str
    image_dir: str
    split_path: str
    fewshot_dir: str

    @classmethod
    def under_root(cls, root, name):
        dataset_dir = os.path.join(os.path.abspath(os.path.expanduser(root)), name)
        return cls(
            name=name,
            dataset_dir=dataset_dir,
            image_dir=os.path.join(dataset_dir, name),
            split_path=os.path.join(dataset_dir, f"split_{name}.json"),
            fewshot_dir=os.path.join(dataset_dir, "split_fewshot"),
        )

    def fewshot_path(self, num_shots, seed):
        return os.path.join(self.fewshot_dir, f"shot_{num_shots}-seed_{seed}.json")

    def is_complete(self):
        return os.path.isdir(self.image_dir) and os.path.isfile(self.split_path)

    def layout_help(self):
        return (
            f"Expected layout for {self.name}:\n"
            f"  images:     {self.image_dir}/<paths listed in the split file>\n"
            f"  split file: {self.split_path}  "
            '({"train": [[relpath, label, classname], ...], "val": [...], "test": [...]})'
        )


def parse_split(raw, split_path):
    """Validate the JSON object of a split file; return ``{split: [(relpath, label, classname), ...]}``."""
    if not isinstance(raw, dict) or not all(name in raw for name in SPLIT_NAMES):
        raise SplitFileError(f"{split_path}: a split file must be an object with keys 'train', 'val' and 'test'.")
    splits = {}
    for name in SPLIT_NAMES:
        entries = []
        for index, entry in enumerate(raw[name]):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool) and isinstance(entry[2], str)):
                raise SplitFileError(
                    f"{split_path}: {name}[{index}] = {entry!r} is not a [relative_path, int_label, classname] triple."
                )
            entries.append((entry[0], entry[1], entry[2]))
        splits[name] = entries
    if not splits["train"]:
        raise SplitFileError(f"{split_path}: the 'train' list is empty.")
    return splits


def read_split(split_path):
    return parse_split(read_json(split_path), split_path)


def label_to_classname(splits, split_path):
    """One class name per label across all splits, ordered by label."""
    mapping = {}
    for name in SPLIT_NAMES:
        for relpath, label, classname in splits[name]:
            if mapping.setdefault(label, classname) != classname:
                raise SplitFileError(
                    f"{split_path}: label {label} is called both {mapping[label]!r} and {classname!r} ({relpath})."
                )
    return dict(sorted(mapping.items()))


def check_classnames(splits, declared, split_path, dataset_name):
    """Raise if the split's label -> classname mapping differs from the declared label order."""
    found = label_to_classname(splits, split_path)
    expected = dict(enumerate(declared))
    if found == expected:
        return
    problems = [
        f"label {label}: split has {found.get(label, '<absent>')!r}, {dataset_name} declares "
        f"{expected.get(label, '<nothing>')!r}"
        for label in sorted(set(found) | set(expected))
        if found.get(label) != expected.get(label)
    ]
    raise SplitFileError(
        f"{split_path} does not match the class names declared by {dataset_name} (in label order "
        f"{list(declared)}):\n  " + "\n  ".join(problems)
        + "\nUse the official split file, or fix the dataset's class names."
    )


def missing_images(splits, image_dir):
    return [relpath for name in SPLIT_NAMES for relpath, _, _ in splits[name]
            if not os.path.isfile(os.path.join(image_dir, relpath))]


def check_images_present(splits, image_dir, split_path):
    missing = missing_images(splits, image_dir)
    if missing:
        examples = "\n  ".join(os.path.join(image_dir, relpath) for relpath in missing[:5])
        raise DatasetNotFoundError(
            f"{split_path} references {len(missing)} image(s) that do not exist under {image_dir}, e.g.:\n  "
            f"{examples}\nRestore the images (or delete the dataset folder to download it again) "
            "or use a split file that matches them."
        )
