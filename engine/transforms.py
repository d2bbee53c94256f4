"""Image transforms selected by ``INPUT.TRANSFORMS`` names, as in Dassl."""
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .errors import ConfigError

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
AVAILABLE_TRANSFORMS = (
    "random_resized_crop", "random_crop", "random_flip", "center_crop", "normalize",
    "colorjitter", "randomgrayscale", "gaussian_blur",
)


def build_transform(cfg, is_train=True, choices=None):
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    unknown = [c for c in choices if c not in AVAILABLE_TRANSFORMS]
    if unknown:
        raise ConfigError(f"Unknown INPUT.TRANSFORMS {unknown}; available: {list(AVAILABLE_TRANSFORMS)}")
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ConfigError(f"INPUT.INTERPOLATION must be one of {list(INTERPOLATION_MODES)}")
    size = tuple(cfg.INPUT.SIZE)
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    steps = _train_steps(cfg, choices, size, interp) if is_train else _test_steps(size, interp)
    steps.append(("to torch tensor of range [0, 1]", T.ToTensor()))
    if "normalize" in choices:
        mean, std = list(cfg.INPUT.PIXEL_MEAN), list(cfg.INPUT.PIXEL_STD)
        steps.append((f"normalization (mean={mean}, std={std})", T.Normalize(mean=mean, std=std)))
    if cfg.VERBOSE:
        print("Building transform_" + ("train" if is_train else "test"))
        for description, _ in steps:
            print("+ " + description)
    return T.Compose([step for _, step in steps])


def _train_steps(cfg, choices, size, interp):
    inp = cfg.INPUT
    steps = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        steps.append((f"resize to {size}", T.Resize(size, interpolation=interp)))
    if "random_crop" in choices:
        steps.append((f"random crop (padding = {inp.CROP_PADDING})", T.RandomCrop(size, padding=inp.CROP_PADDING)))
    if "random_resized_crop" in choices:
        scale = tuple(inp.RRCROP_SCALE)
        steps.append((f"random resized crop (size={size}, scale={scale})",
                      T.RandomResizedCrop(size, scale=scale, interpolation=interp)))
    if "random_flip" in choices:
        steps.append(("random flip", T.RandomHorizontalFlip()))
    if "colorjitter" in choices:
        steps.append(("color jitter", T.ColorJitter(inp.COLORJITTER_B, inp.COLORJITTER_C,
                                                     inp.COLORJITTER_S, inp.COLORJITTER_H)))
    if "randomgrayscale" in choices:
        steps.append(("random gray scale", T.RandomGrayscale(p=inp.RGS_P)))
    if "gaussian_blur" in choices:
        steps.append((f"gaussian blur (kernel={inp.GB_K})", T.RandomApply([T.GaussianBlur(inp.GB_K)], p=inp.GB_P)))
    return steps


def _test_steps(size, interp):
    return [
        (f"resize the smaller edge to {max(size)}", T.Resize(max(size), interpolation=interp)),
        (f"{size[0]}x{size[1]} center crop", T.CenterCrop(size)),
    ]
