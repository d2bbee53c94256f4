"""Download datasets ahead of time.

    python -m vmfcoop.tools.download_datasets btmri covid --root data
    python -m vmfcoop.tools.download_datasets --all --root data

Names are the registry names (BTMRI, COVID_19, ...) or the config file names (btmri, covid, ...),
in any case. Each dataset lands in ``<root>/<NAME>/`` (images in ``<NAME>/``, ``split_<NAME>.json``).
"""
import argparse
import glob
import os
import sys

import vmfcoop.datasets  # noqa: F401  (registers the datasets)
import yaml
from vmfcoop.datasets.download import download_dataset
from vmfcoop.datasets.layout import DatasetNotFoundError, DatasetPaths
from vmfcoop.engine.build import DATASET_REGISTRY

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "datasets")


def downloadable():
    """Registry name -> DownloadSpec for every dataset that can be fetched automatically."""
    return {name: DATASET_REGISTRY.get(name).DOWNLOAD for name in DATASET_REGISTRY.registered_names()
            if getattr(DATASET_REGISTRY.get(name), "DOWNLOAD", None) is not None}


def config_aliases():
    """Lower-case config file stem (``covid``) -> registry name (``COVID_19``)."""
    aliases = {}
    for path in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")):
        with open(path) as f:
            name = (yaml.safe_load(f) or {}).get("DATASET", {}).get("NAME")
        if name:
            aliases[os.path.splitext(os.path.basename(path))[0].lower()] = name
    return aliases


def resolve_name(name, specs):
    lookup = {n.lower(): n for n in DATASET_REGISTRY.registered_names()}
    lookup.update(config_aliases())
    resolved = lookup.get(name.lower())
    if resolved is None:
        raise SystemExit(f"Unknown dataset {name!r}. Downloadable: {', '.join(sorted(specs))}")
    if resolved not in specs:
        raise SystemExit(f"{resolved} cannot be downloaded automatically (restricted or user-supplied data).")
    return resolved


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="datasets to download (e.g. btmri COVID_19)")
    parser.add_argument("--all", action="store_true", help="every downloadable dataset")
    parser.add_argument("--root", required=True, help="data root (DATASET.ROOT)")
    args = parser.parse_args(argv)
    if bool(args.names) == args.all:
        parser.error("give dataset names or --all (not both)")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    specs = downloadable()
    names = sorted(specs) if args.all else [resolve_name(n, specs) for n in args.names]
    failed = []
    for name in names:
        paths = DatasetPaths.under_root(args.root, name)
        if paths.is_complete():
            print(f"{name}: already present in {paths.dataset_dir}")
            continue
        print(f"{name}: downloading into {paths.dataset_dir}")
        try:
            download_dataset(specs[name], args.root)
        except DatasetNotFoundError as err:
            print(f"{name}: FAILED\n{err}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: done")
    if failed:
        print(f"Failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
