"""``vmfcoop-train`` / ``python train.py``: Dassl's train.py flags, one clear line on bad input."""
import argparse
import fcntl
import os
import sys
import traceback

import torch

from .build import build_trainer
from .config import extend_cfg, get_cfg_default, merge_from_file, merge_from_list
from .errors import VmfcoopError
from .logger import setup_logger
from .utils import set_random_seed


def build_parser():
    parser = argparse.ArgumentParser(prog="vmfcoop-train", description=__doc__)
    parser.add_argument("--root", type=str, default="", help="path to the datasets root")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from")
    parser.add_argument("--seed", type=int, default=None, help="random seed (0 is a valid seed)")
    parser.add_argument("--trainer", type=str, default="", help="trainer name, e.g. VMFCoOp")
    parser.add_argument("--backbone", type=str, default="", help="backbone name, e.g. BiomedCLIP")
    parser.add_argument("--config-file", type=str, default="", help="trainer config yaml")
    parser.add_argument("--dataset-config-file", type=str, default="", help="dataset config yaml")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load the model from this directory for eval-only")
    parser.add_argument("--load-epoch", type=int, default=None, help="load the weights saved at this epoch")
    parser.add_argument("--no-train", action="store_true", help="build everything but do not train")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser


def import_plugins():
    """Register every trainer and dataset shipped with the project."""
    import vmfcoop.datasets  # noqa: F401
    import vmfcoop.trainers  # noqa: F401


def setup_cfg(args):
    """Merge order: defaults < dataset yaml < trainer yaml < CLI flags < trailing opts."""
    import_plugins()
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file, "Dataset config file")
    if args.config_file:
        merge_from_file(cfg, args.config_file, "Trainer config file")
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        cfg.SEED = args.seed
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    merge_from_list(cfg, args.opts or [])
    cfg.freeze()
    return cfg


def run(args):
    cfg = setup_cfg(args)
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    lock = lock_output_dir(cfg.OUTPUT_DIR)
    log = setup_logger(cfg.OUTPUT_DIR)
    try:
        if torch.cuda.is_available() and cfg.USE_CUDA:
            torch.backends.cudnn.benchmark = True
        print("** Config **")
        print(cfg)
        trainer = build_trainer(cfg)
        if args.eval_only:
            trainer.eval_only = True
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
            return trainer
        if not args.no_train:
            trainer.train()
        return trainer
    finally:
        if log is not None:
            log.close()
        lock.close()


def lock_output_dir(output_dir):
    """Hold an exclusive lock on the run directory so two runs never write into the same one."""
    os.makedirs(output_dir, exist_ok=True)
    handle = open(os.path.join(output_dir, ".lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise VmfcoopError(
            f"Another run is writing to {output_dir}; wait for it to finish or choose another --output-dir."
        ) from None
    return handle


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (VmfcoopError, FileNotFoundError, KeyboardInterrupt) as err:
        if os.environ.get("VMFCOOP_DEBUG"):
            traceback.print_exc()
        message = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err).strip("'\"")
        print(f"error: {message}", file=sys.stderr)
        return 130 if isinstance(err, KeyboardInterrupt) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
