"""Training-time augmentation on whole uint8 batches, on whatever device the batch is on.

torchvision v2 transforms given a batch tensor draw ONE set of random parameters for the whole
batch. Here every image gets its own draw: the cheap transforms are batched with per-sample
random tensors (flip mask, per-sample crop offsets, per-sample affine matrices, per-sample colour
factors and erasing boxes); the policies (RandAugment, TrivialAugment) run image by image.
MixUp/CutMix mix the batch with itself and are batch transforms by design (torchvision v2).

All pixel work happens in [0, 1] floats; normalization with the train split's mean/std comes last,
so random erasing fills with the mean colour, which is 0 after normalization.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .config import DataArguments

__all__ = ["AlternatingFlip", "BatchAugment", "Normalize", "build_batch_mix", "describe_augmentation", "flip_enabled"]

# ITU-R 601 luminance, as PIL's convert("L").
LUMA = (0.299, 0.587, 0.114)
ERASE_AREA = (0.02, 0.33)           # fraction of the image, as torchvision's RandomErasing
ERASE_RATIO = (0.3, 3.3)            # box aspect ratio range


def flip_enabled(args: DataArguments, class_names: Sequence[str]) -> bool:
    """--horizontal_flip, or by default on unless every class name is a digit (digits are not mirror-symmetric)."""
    if args.horizontal_flip is not None:
        return bool(args.horizontal_flip)
    return not all(str(name).strip().isdigit() for name in class_names)


class Normalize(torch.nn.Module):
    """uint8 (B, C, H, W) -> float32 (x / 255 - mean) / std; float input is taken as already in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(m) for m in mean], dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std], dtype=torch.float32), persistent=False)

    @classmethod
    def from_processor(cls, processor) -> "Normalize":
        """The normalization a saved image processor applies: its image_mean/image_std, or a timm processor's data
        config."""
        timm_data = getattr(processor, "data_config", None) or {}
        return cls(getattr(processor, "image_mean", None) or timm_data["mean"],
                   getattr(processor, "image_std", None) or timm_data["std"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        channels = x.shape[-3]
        # 3 stored values; a 1-channel model's are 3 equal gray values, so take the first.
        mean = self.mean[:channels].to(x.device).view(-1, 1, 1)
        std = self.std[:channels].to(x.device).view(-1, 1, 1)
        return (x - mean) / std


class BatchAugment(torch.nn.Module):
    """Per-image random augmentation of a uint8 batch, then normalization.

    forward(uint8 (B, C, H, W)) -> float32 (B, C, H, W) normalized; in training while `train_size` S is set
    (--progressive_resize_epochs), (B, C, S, S). In eval mode, or with --augment false, it only normalizes
    (and downscales). `augment` returns the augmented batch in [0, 1] before normalization (the exploration
    preview uses it).
    """

    def __init__(self, args: DataArguments, class_names: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 per_sample: bool = False):
        super().__init__()
        self.enabled = bool(args.augment)
        # The streaming path's loader already cropped, flipped and applied the policy per image (transforms.py).
        self.per_sample = per_sample
        self.padding = int(args.random_crop_padding)
        self.flip = flip_enabled(args, class_names)         # training mirrors images (so TTA may too)
        # Under "alternate" the loader mirrors (AlternatingFlip); None (no resolved Config) means random.
        self.flip_schedule = args.flip_schedule or "random"
        self.rotation = float(args.rotation_degrees)
        self.zoom = float(args.zoom)
        self.jitter = float(args.color_jitter)
        self.erasing = float(args.random_erasing)
        self.normalize = Normalize(mean, std)
        self.train_size: Optional[int] = None     # side in pixels training batches are downscaled to; None: as given
        self.policy: Optional[torch.nn.Module] = None
        if args.auto_augment != "none":
            from torchvision.transforms import v2

            self.policy = v2.RandAugment() if args.auto_augment == "randaugment" else v2.TrivialAugmentWide()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.normalize(x)
        x = self.augment(x)                      # [0, 1] floats (only converted with --augment false)
        if self.train_size is not None and self.train_size != x.shape[-1]:
            # Progressive resizing (set per epoch by the training loop): the whole image, at a lower resolution.
            x = F.interpolate(x, size=(self.train_size, self.train_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.normalize(x)

    @torch.no_grad()
    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> augmented float32 (B, C, H, W) in [0, 1], one random draw per image."""
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"BatchAugment expects a uint8 batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if not self.enabled:
            return x.float() / 255.0
        if self.policy is not None and not self.per_sample:   # policies pick ops per call: loop over images
            x = torch.stack([self.policy(image) for image in x])
        x = x.float() / 255.0
        if self.jitter > 0:
            x = self._color_jitter(x)
        if self.flip and self.flip_schedule == "random" and not self.per_sample:
            x = self._flip(x)
        if self.padding > 0 and not self.per_sample:
            x = self._shift(x)
        if self.rotation > 0 or self.zoom > 0:
            x = self._rotate_zoom(x)
        if self.erasing > 0:
            x = self._erase(x)
        return x

    def alternating_flip(self, num_images: int, seed: int) -> Optional["AlternatingFlip"]:
        """The loader's flip schedule for a split of `num_images` under --flip_schedule alternate, else None."""
        if self.enabled and self.flip and self.flip_schedule == "alternate":
            return AlternatingFlip(num_images, seed)
        return None

    # Each helper takes and returns float (B, C, H, W) in [0, 1]; randomness is drawn on x.device.

    @staticmethod
    def _uniform(low: float, high: float, n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(n, device=like.device, dtype=like.dtype).uniform_(low, high)

    def _flip(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.rand(x.shape[0], device=x.device) < 0.5
        return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        """Pad by `padding` (reflect; zeros when the image is too small to reflect), crop back at a per-image offset."""
        b, c, h, w = x.shape
        p = self.padding
        mode = "reflect" if p < min(h, w) else "constant"
        padded = F.pad(x, (p, p, p, p), mode=mode)
        dy = torch.randint(0, 2 * p + 1, (b,), device=x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), device=x.device)
        rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * p)
        padded = padded.gather(2, rows)                                   # (B, C, H, W + 2p)
        cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
        return padded.gather(3, cols)                                     # (B, C, H, W)

    def _rotate_zoom(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image rotation (±rotation degrees) and zoom (scale 1±zoom), bilinear, black outside."""
        b = x.shape[0]
        angle = self._uniform(-self.rotation, self.rotation, b, x) * (math.pi / 180.0)
        scale = self._uniform(1.0 - self.zoom, 1.0 + self.zoom, b, x)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale     # sampling grid shrinks to zoom in
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _color_jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image brightness, contrast and (colour images) saturation factors in [1 - s, 1 + s]."""
        b, c = x.shape[:2]
        s = self.jitter
        x = (x * self._uniform(1 - s, 1 + s, b, x).view(b, 1, 1, 1)).clamp(0, 1)
        gray = self._gray(x)
        factor = self._uniform(1 - s, 1 + s, b, x).view(b, 1, 1, 1)
        x = ((x - gray.mean(dim=(1, 2, 3), keepdim=True)) * factor + gray.mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
        if c == 3:
            factor = self._uniform(1 - s, 1 + s, b, x).view(b, 1, 1, 1)
            gray = self._gray(x)
            x = (gray + (x - gray) * factor).clamp(0, 1)
        return x

    @staticmethod
    def _gray(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x
        weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """With probability `erasing` per image, fill one random box (2-33% of the area) with the mean colour."""
        b, c, h, w = x.shape
        area = self._uniform(*ERASE_AREA, b, x) * (h * w)
        ratio = torch.exp(self._uniform(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), b, x))
        box_h = torch.sqrt(area * ratio).round().clamp(1, h)
        box_w = torch.sqrt(area / ratio).round().clamp(1, w)
        top = (torch.rand(b, device=x.device) * (h - box_h + 1)).floor()
        left = (torch.rand(b, device=x.device) * (w - box_w + 1)).floor()
        ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
        inside = ((ys >= top.view(b, 1, 1)) & (ys < (top + box_h).view(b, 1, 1))
                  & (xs >= left.view(b, 1, 1)) & (xs < (left + box_w).view(b, 1, 1)))
        apply = (torch.rand(b, device=x.device) < self.erasing).view(b, 1, 1)
        mask = (inside & apply).unsqueeze(1)                              # (B, 1, H, W)
        fill = self.normalize.mean[:c].to(x.device, x.dtype).view(1, c, 1, 1)
        return torch.where(mask, fill, x)


class AlternatingFlip:
    """airbench's derandomised flip: image i is mirrored in epoch e iff first[i] XOR (e is odd).

    `first` is a seeded fair coin per image, so epoch 1 mirrors a random half, and each image then
    alternates: over any two epochs it is seen once each way, where random flips repeat one
    orientation half the time. It needs each image's index, so the resident loader applies it.
    """

    def __init__(self, num_images: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.first = torch.rand(num_images, generator=generator) < 0.5     # (N,) bool

    def __call__(self, images: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """uint8 (B, C, H, W) images of split positions `index` (B,) -> the same, mirrored per the schedule."""
        self.first = self.first.to(index.device)
        mirror = self.first[index] ^ bool(epoch % 2)
        return torch.where(mirror.view(-1, 1, 1, 1), images.flip(-1), images)


class BatchMix:
    """MixUp and/or CutMix on a normalized float batch: (x, int64 labels) -> (x, soft targets (B, K)).

    One of them per batch, chosen at random when both are on (torchvision v2, one lambda per batch).
    """

    def __init__(self, transform: Callable, description: str):
        self.transform = transform
        self.description = description

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(x, y)

    def __repr__(self) -> str:
        return f"BatchMix({self.description})"


def build_batch_mix(args: DataArguments, num_classes: int) -> Optional[BatchMix]:
    """MixUp/CutMix per --mixup_alpha/--cutmix_alpha; None when both are 0 (or --augment false)."""
    from torchvision.transforms import v2

    if not args.augment:
        return None
    transforms, names = [], []
    if args.mixup_alpha > 0:
        transforms.append(v2.MixUp(alpha=args.mixup_alpha, num_classes=num_classes))
        names.append(f"MixUp alpha {args.mixup_alpha:g}")
    if args.cutmix_alpha > 0:
        transforms.append(v2.CutMix(alpha=args.cutmix_alpha, num_classes=num_classes))
        names.append(f"CutMix alpha {args.cutmix_alpha:g}")
    if not transforms:
        return None
    transform = transforms[0] if len(transforms) == 1 else v2.RandomChoice(transforms)
    return BatchMix(transform, " or ".join(names))


def describe_augmentation(args: DataArguments, class_names: Sequence[str],
                          photos: Optional[tuple[int, float]] = None) -> list[str]:
    """What training augmentation is on, in words, for the model card and the data summary. `photos`: the
    streaming path's (image_size, crop_pct), whose loader crops, flips and applies the policy per image."""
    if not args.augment:
        return ["none (--augment false)"]
    if photos is not None:
        from .transforms import describe_photo_transforms

        items = describe_photo_transforms(photos[0], photos[1], args.crop_scale, flip_enabled(args, class_names),
                                          args.auto_augment)
        return items + _batch_items(args, class_names)
    items = []
    if args.auto_augment == "randaugment":
        items.append("RandAugment (2 ops, magnitude 9), per image")
    elif args.auto_augment == "trivialaugment":
        items.append("TrivialAugment (wide), per image")
    if flip_enabled(args, class_names):
        items.append("horizontal flip, alternating: a random half in epoch 1, then each image the other way "
                     "every epoch" if args.flip_schedule == "alternate" else "random horizontal flip (p=0.5)")
    if args.random_crop_padding > 0:
        items.append(f"random shift: reflect-pad {args.random_crop_padding} px and crop back")
    return items + _batch_items(args, class_names) or ["none"]


def _batch_items(args: DataArguments, class_names: Sequence[str]) -> list[str]:
    """The batch operations (on the device, either path), in words."""
    items = []
    if args.color_jitter > 0:
        items.append(f"colour jitter: brightness/contrast/saturation x[{1 - args.color_jitter:g}, "
                     f"{1 + args.color_jitter:g}]")
    if args.rotation_degrees > 0:
        items.append(f"random rotation ±{args.rotation_degrees:g}°")
    if args.zoom > 0:
        items.append(f"random zoom: scale {1 - args.zoom:g}-{1 + args.zoom:g}")
    if args.random_erasing > 0:
        items.append(f"random erasing (p={args.random_erasing:g}, 2-33% of the area, mean colour)")
    mix = build_batch_mix(args, max(2, len(class_names)))
    if mix is not None:
        items.append(f"{mix.description} per batch (soft targets)")
    return items
