"""Installs the top-level code folders under one namespace, ``vmfcoop.*``.

``engine/`` becomes ``vmfcoop.engine``, ``datasets/`` becomes ``vmfcoop.datasets`` and so on, so the
project never shadows the Hugging Face ``datasets`` package on ``sys.path``.
"""
import os

from setuptools import setup

CODE_FOLDERS = ["engine", "clip_backbones", "datasets", "trainers", "tools"]


def _packages():
    mapping = {}
    for folder in CODE_FOLDERS:
        for dirpath, _dirnames, filenames in os.walk(folder):
            if "__init__.py" in filenames:
                mapping["vmfcoop." + dirpath.replace(os.sep, ".")] = dirpath
    return mapping


PACKAGE_DIR = _packages()

setup(
    name="vmfcoop",
    version="0.1.0",
    description="Few-shot prompt learning for biomedical CLIP models: vMFCoOp and the baselines",
    python_requires=">=3.10",
    packages=sorted(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    package_data={
        "vmfcoop.datasets": ["prompts/*/*.json"],
        "vmfcoop.clip_backbones": ["model_configs/*.json"],
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.1,<3",
        "torchvision>=0.16",
        "open_clip_torch>=3.0,<4",
        "transformers>=4.40",
        "timm>=1.0",
        "yacs>=0.1.8",
        "tabulate>=0.9",
        "gdown>=5.0",
        "huggingface_hub>=0.20",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scipy>=1.10",
        "numpy>=1.24",
        "Pillow>=9.0",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "vmfcoop-train=vmfcoop.engine.cli:main",
            "vmfcoop-compare=vmfcoop.tools.compare:main",
            "vmfcoop-aggregate=vmfcoop.tools.aggregate:main",
            "vmfcoop-download-datasets=vmfcoop.tools.download_datasets:main",
            "vmfcoop-generate-prompts=vmfcoop.tools.generate_prompts:main",
        ]
    },
)
