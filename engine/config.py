"""Default config with Dassl's key names (the subset prompt learners use) and the merge order."""
import os

from yacs.config import CfgNode as CN

from .errors import ConfigError

_C = CN()
_C.VERSION = 1
_C.OUTPUT_DIR = "./output"
_C.RESUME = ""
_C.SEED = -1
_C.USE_CUDA = True
_C.VERBOSE = True

_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
_C.INPUT.INTERPOLATION = "bicubic"
_C.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
_C.INPUT.NO_TRANSFORM = False
# CLIP's statistics: every supported backbone was trained with them.
_C.INPUT.PIXEL_MEAN = [0.48145466, 0.4578275, 0.40821073]
_C.INPUT.PIXEL_STD = [0.26862954, 0.26130258, 0.27577711]
_C.INPUT.CROP_PADDING = 4
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
_C.INPUT.RGS_P = 0.2
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

_C.DATASET = CN()
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
_C.DATASET.NUM_SHOTS = -1
_C.DATASET.SUBSAMPLE_CLASSES = "all"
_C.DATASET.DOWNLOAD = True

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.BATCH_SIZE = 100

_C.MODEL = CN()
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "BiomedCLIP"
# Local directory or weights file; empty = the hub id, downloaded and cached on first use.
_C.MODEL.BACKBONE.PATH = ""
# False: the real architecture with deterministic random weights, no files needed (dry runs, benchmarks).
_C.MODEL.BACKBONE.PRETRAINED = True

_C.OPTIM = CN()
_C.OPTIM.NAME = "sgd"
_C.OPTIM.LR = 0.002
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0.0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
_C.OPTIM.LR_SCHEDULER = "cosine"
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
_C.OPTIM.WARMUP_EPOCH = -1
_C.OPTIM.WARMUP_TYPE = "linear"
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
_C.OPTIM.WARMUP_RECOUNT = True

_C.TRAIN = CN()
_C.TRAIN.CHECKPOINT_FREQ = 0
_C.TRAIN.PRINT_FREQ = 10

_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
_C.TEST.NO_TEST = False
_C.TEST.SPLIT = "test"
_C.TEST.FINAL_MODEL = "last_step"

_C.CACHE = CN()
_C.CACHE.ENABLED = True  # reuse frozen features (test images, fixed texts, vocabulary) across runs
_C.CACHE.DIR = ""  # "" = $VMFCOOP_CACHE/features or ~/.cache/vmfcoop/features

_C.TRAINER = CN()
_C.TRAINER.NAME = ""
# Precision of trainable parts: fp32 everywhere by default (CPU-safe); "amp" autocasts on CUDA.
_C.TRAINER.PREC = "fp32"


def get_cfg_default():
    return _C.clone()


def extend_cfg(cfg):
    """Let every registered trainer (and dataset) add its own keys, so any yaml merges."""
    from .build import DATASET_REGISTRY, TRAINER_REGISTRY

    for registry in (TRAINER_REGISTRY, DATASET_REGISTRY):
        for name in registry.registered_names():
            hook = getattr(registry.get(name), "extend_cfg", None)
            if hook is not None:
                hook(cfg)


def add_node(cfg, dotted, values):
    """Add ``values`` under ``cfg.<dotted>`` unless already present (several classes may share a node)."""
    node = cfg
    for part in dotted.split("."):
        if part not in node:
            node[part] = CN()
        node = node[part]
    for key, value in values.items():
        if key not in node:
            node[key] = value
    return node


def merge_from_file(cfg, path, what):
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {path}")
    try:
        cfg.merge_from_file(path)
    except KeyError as err:
        raise ConfigError(f"{path}: {err.args[0]}. Check the key's spelling, or that its trainer is installed.") from None
    except (ValueError, AssertionError, TypeError) as err:
        raise ConfigError(f"{path}: {err}") from None
    except Exception as err:  # yaml syntax errors have many types
        raise ConfigError(f"{path} is not a valid config file: {err}") from None


def merge_from_list(cfg, opts):
    if len(opts) % 2 and not any(o.startswith("--") for o in opts):
        raise ConfigError(f"Options must come in KEY VALUE pairs; got an odd number: {' '.join(opts)}")
    flags = [o for o in opts[0::2] if o.startswith("--")]
    if flags:
        raise ConfigError(f"Flag {flags[0]} appears after the KEY VALUE options; put flags first.")
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except AssertionError as err:
            raise ConfigError(f"Unknown option {key}: {err}") from None
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"Bad value {value!r} for option {key}: {err}") from None
