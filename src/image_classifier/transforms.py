"""Per-image transforms of the streaming (photo) path, timm's conventions in torchvision transforms v2.

Photos keep their aspect ratio:

- training: `RandomResizedCrop(S, scale=--crop_scale, ratio 3/4-4/3)` (bilinear, antialiased), a random
  horizontal flip (where flips are on), then TrivialAugment/RandAugment (--auto_augment) per image;
  colour jitter, rotation, random erasing and MixUp/CutMix stay batch operations on the device (augment.py).
- evaluation: the shorter side resized to floor(S / --crop_pct), then the centre S x S crop: timm's eval
  transform, and exactly what the saved image processor (`build_photo_processor`) and pipeline() do.

Both take the uint8 (C, H, W) tensor of `images.read_image` (the one decoder) and return uint8 (C, S, S).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

__all__ = ["DEFAULT_CROP_PCT", "DEFAULT_CROP_SCALE", "eval_resize_size", "build_eval_transform",
           "build_train_transform", "build_photo_processor", "describe_photo_transforms"]

DEFAULT_CROP_PCT = 0.875        # evaluation crop as a fraction of the resized shorter side (timm, 224/256)
DEFAULT_CROP_SCALE = (0.08, 1.0)   # RandomResizedCrop's area range, as a fraction of the image (timm, Inception)
RATIO = (3 / 4, 4 / 3)          # RandomResizedCrop's aspect-ratio range


def eval_resize_size(image_size: int, crop_pct: float) -> int:
    """Pixels the shorter side is resized to before the centre crop (timm: floor(size / crop_pct))."""
    return int(math.floor(image_size / crop_pct))


class EvalTransform:
    """uint8 (C, H, W) of any size -> uint8 (C, S, S): shorter side to floor(S / crop_pct) (bilinear, antialiased),
    then the centre S x S, its offset rounded down as transformers' `center_crop` does (torchvision's CenterCrop,
    and so timm's, rounds half a pixel the other way)."""

    def __init__(self, image_size: int, crop_pct: float):
        self.image_size, self.resize_size = int(image_size), eval_resize_size(image_size, crop_pct)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        image = F.resize(image, self.resize_size, interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        h, w = image.shape[-2:]              # both >= S: crop_pct <= 1
        top, left = (h - self.image_size) // 2, (w - self.image_size) // 2
        return image[..., top:top + self.image_size, left:left + self.image_size]


def build_eval_transform(image_size: int, crop_pct: float) -> EvalTransform:
    """The evaluation transform of the streaming path (`EvalTransform`): what the saved image processor does."""
    return EvalTransform(image_size, crop_pct)


def build_train_transform(image_size: int, crop_scale: Iterable[float], flip: bool, auto_augment: str = "none"):
    """uint8 (C, H, W) of any size -> a random uint8 (C, S, S) view: random-resized crop, flip, policy."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=RATIO,
                                  interpolation=v2.InterpolationMode.BILINEAR, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if auto_augment == "randaugment":
        steps.append(v2.RandAugment())
    elif auto_augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    return v2.Compose(steps)


def build_photo_processor(image_size: int, crop_pct: float, mean: Iterable[float], std: Iterable[float]):
    """The transformers image processor saved with a small CNN trained on photos: RGB -> shorter side to
    floor(S / crop_pct) (bilinear, antialiased) -> centre crop S -> /255 -> normalize.

    A `BitImageProcessor` (torchvision backend), which `AutoImageProcessor` and pipeline() load: its
    `pixel_values` equal `Normalize(mean, std)(build_eval_transform(S, crop_pct)(decoded image))`.
    """
    from transformers import BitImageProcessor

    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return BitImageProcessor(
        do_resize=True, size={"shortest_edge": eval_resize_size(image_size, crop_pct)}, resample=2,   # BILINEAR
        do_center_crop=True, crop_size={"height": int(image_size), "width": int(image_size)},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=mean, image_std=std,
        do_convert_rgb=True,
    )


def describe_photo_transforms(image_size: int, crop_pct: float, crop_scale: Iterable[float], flip: bool,
                              auto_augment: str = "none") -> list[str]:
    """The streaming path's per-image transforms in words (the data summary and the model card)."""
    low, high = crop_scale
    items = [f"random-resized crop to {image_size}x{image_size} (area {low:g}-{high:g} of the photo, "
             f"aspect 3/4-4/3), per image"]
    if flip:
        items.append("random horizontal flip (p=0.5), per image")
    if auto_augment != "none":
        items.append({"randaugment": "RandAugment (2 ops, magnitude 9)",
                      "trivialaugment": "TrivialAugment (wide)"}[auto_augment] + ", per image")
    items.append(f"evaluation: shorter side to {eval_resize_size(image_size, crop_pct)} px, centre crop "
                 f"{image_size}x{image_size} (crop_pct {crop_pct:g}), aspect ratio kept")
    return items
