"""Evaluation-time image preprocessing facts and the torchvision transform built from them."""
from dataclasses import dataclass

from PIL import Image
from torchvision import transforms as T

_INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class ImageSpec:
    size: int
    mean: tuple
    std: tuple
    interpolation: str = "bicubic"
    grayscale: bool = False  # MedCLIP reads images as one channel, repeated to three
    pad_to_square: bool = False  # MedCLIP pads before resizing instead of cropping the long side

    @classmethod
    def from_config(cls, preprocess_cfg):
        cfg = dict(preprocess_cfg)
        return cls(size=int(cfg.pop("size")), mean=tuple(cfg.pop("mean")), std=tuple(cfg.pop("std")), **cfg)


class ToRGB:
    """PIL image -> RGB (a class, not a lambda, so DataLoader workers can pickle it)."""

    def __call__(self, image):
        return image.convert("RGB")


class ToGrayscaleRGB:
    """PIL image -> luminance repeated over three channels."""

    def __call__(self, image):
        return image.convert("L").convert("RGB")


class PadToSquare:
    """Centres the image on a black square whose side is the longer edge."""

    def __call__(self, image):
        side = max(image.size)
        if image.size == (side, side):
            return image
        canvas = Image.new(image.mode, (side, side))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        return canvas


def build_eval_transform(spec):
    """Resize the shorter edge, centre-crop, convert, to tensor, normalise."""
    if spec.interpolation not in _INTERPOLATIONS:
        raise ValueError(f'Unknown interpolation "{spec.interpolation}"; use one of {sorted(_INTERPOLATIONS)}')
    steps = [ToGrayscaleRGB() if spec.grayscale else ToRGB()]
    if spec.pad_to_square:
        steps.append(PadToSquare())
    steps += [
        T.Resize(spec.size, interpolation=_INTERPOLATIONS[spec.interpolation]),
        T.CenterCrop(spec.size),
        T.ToTensor(),
        T.Normalize(spec.mean, spec.std),
    ]
    return T.Compose(steps)
