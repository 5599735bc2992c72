"""The photo transforms: aspect ratio kept, evaluation equal to the saved image processor, random training views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from image_classifier.augment import Normalize
from image_classifier.images import image_tensor, read_image
from image_classifier.transforms import (build_eval_transform, build_photo_processor, build_train_transform,
                                         describe_photo_transforms, eval_resize_size)


def striped(width: int, height: int) -> Image.Image:
    """Vertical stripes 40 px wide plus a gradient: a squash changes their width, a crop of the centre does not."""
    x = np.arange(width)[None, :, None]
    y = np.arange(height)[:, None, None]
    pixels = np.concatenate([((x // 40) % 2) * 200 + 20 + 0 * y, np.broadcast_to(y * 255 // height, (height, width, 1)),
                             np.full((height, width, 1), 90)], axis=2)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def test_eval_resize_follows_timm_crop_pct():
    assert eval_resize_size(224, 0.875) == 256 and eval_resize_size(160, 0.95) == 168
    assert eval_resize_size(32, 1.0) == 32


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (160, 160)])
def test_eval_transform_keeps_the_aspect_ratio_and_takes_the_centre(size):
    image = striped(*size)
    out = build_eval_transform(64, 0.8)(image_tensor(image))
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
    # Equivalent by hand: shorter side to 80 with PIL-free torchvision resize, then the centre 64x64.
    w, h = size
    scale = 80 / min(w, h)
    from torchvision.transforms.v2 import functional as F

    resized = F.resize(image_tensor(image), [int(h * scale) if h > w else 80, int(w * scale) if w > h else 80],
                       antialias=True)
    top, left = (resized.shape[1] - 64) // 2, (resized.shape[2] - 64) // 2      # transformers' rounding
    assert (out.int() - resized[:, top:top + 64, left:left + 64].int()).abs().max() <= 1
    # The stripes keep their width (40 px x 80 / shorter side): a squash to 64x64 would narrow them on 4:3.
    row = out[0, 32].numpy() > 110
    runs = np.diff(np.flatnonzero(np.diff(row.astype(int)) != 0))
    assert abs(np.median(runs) - 40 * scale) <= 1


def test_the_saved_photo_processor_gives_the_evaluation_pixels():
    processor = build_photo_processor(48, 0.875, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    for size in ((120, 90), (90, 120), (333, 250)):
        image = striped(*size)
        ours = Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])(build_eval_transform(48, 0.875)(
            image_tensor(read_image(image)[0])).unsqueeze(0))
        theirs = processor(images=[image], return_tensors="pt")["pixel_values"]
        assert theirs.shape == ours.shape == (1, 3, 48, 48)
        assert (theirs - ours).abs().max() < 1e-5, size


def test_the_photo_processor_loads_back_through_auto_image_processor(tmp_path):
    from transformers import AutoImageProcessor

    build_photo_processor(40, 0.9, [0.5] * 3, [0.25] * 3).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "BitImageProcessor"
    assert loaded(images=[striped(100, 75)], return_tensors="pt")["pixel_values"].shape == (1, 3, 40, 40)


def test_train_transform_draws_a_new_crop_and_flip_per_call():
    transform = build_train_transform(32, (0.08, 1.0), flip=True, auto_augment="trivialaugment")
    image = image_tensor(striped(200, 150))
    torch.manual_seed(0)
    views = torch.stack([transform(image) for _ in range(8)])
    assert views.shape == (8, 3, 32, 32) and views.dtype == torch.uint8
    assert len({v.numpy().tobytes() for v in views}) == 8


def test_photo_transforms_are_described_in_words():
    items = describe_photo_transforms(160, 0.875, (0.08, 1.0), True)
    assert items[0].startswith("random-resized crop to 160x160 (area 0.08-1")
    assert "random horizontal flip (p=0.5), per image" in items
    assert items[-1] == ("evaluation: shorter side to 182 px, centre crop 160x160 (crop_pct 0.875), aspect ratio "
                         "kept")
