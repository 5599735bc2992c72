"""Batch augmentation: shapes, per-image randomness of every transform, MixUp/CutMix targets, switches."""

import pytest
import torch
import torch.nn.functional as F

from image_classifier.augment import AlternatingFlip, BatchAugment, Normalize, build_batch_mix, describe_augmentation, flip_enabled
from image_classifier.config import DataArguments

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
NAMES = ["cat", "dog", "frog"]
# Everything off; each test switches on what it checks.
OFF = dict(random_crop_padding=0, horizontal_flip=False)


def pattern(batch: int = 64, channels: int = 3, size: int = 16) -> torch.Tensor:
    """`batch` copies of one asymmetric uint8 image (no two pixels of a row or column alike)."""
    h = torch.arange(size).view(size, 1)
    w = torch.arange(size).view(1, size)
    image = torch.stack([(w * 15 + h * 3 + 40 * c) % 256 for c in range(channels)]).to(torch.uint8)
    return image.unsqueeze(0).repeat(batch, 1, 1, 1)


def distinct(batch: torch.Tensor) -> int:
    return len({tuple(image.flatten().tolist()) for image in batch})


def augmenter(**flags) -> BatchAugment:
    return BatchAugment(DataArguments(**{**OFF, **flags}), NAMES, MEAN, STD)


def test_output_is_normalized_float32_of_the_same_shape():
    x = pattern(8)
    augment = BatchAugment(DataArguments(), NAMES, MEAN, STD)        # defaults: shift 4 px + flip
    out = augment(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    augment.eval()
    torch.testing.assert_close(augment(x), Normalize(MEAN, STD)(x))


def test_normalize_uses_the_train_statistics():
    x = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    out = Normalize(MEAN, STD)(x)
    expected = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)])
    torch.testing.assert_close(out[0, :, 0, 0], expected)
    gray = Normalize([0.3] * 3, [0.2] * 3)(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
    assert gray.shape == (1, 1, 2, 2) and torch.allclose(gray, torch.tensor(-1.5))
    assert torch.equal(Normalize(MEAN, STD)(x.float() / 255), out)     # float input is taken as [0, 1]


def test_flip_is_drawn_per_image():
    x = pattern()
    torch.manual_seed(0)
    out = augmenter(horizontal_flip=True).augment(x)
    original, mirrored = x[0].float() / 255, x[0].flip(-1).float() / 255
    flipped = [torch.equal(image, mirrored) for image in out]
    assert all(f or torch.equal(image, original) for f, image in zip(flipped, out))
    assert 10 < sum(flipped) < 54


def test_alternating_flip_mirrors_each_image_the_other_way_every_epoch():
    n = 200
    images = torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 1, 4)        # every row asymmetric
    index = torch.randperm(n)
    schedule = AlternatingFlip(n, seed=5)
    mirrored = [(schedule(images[index], index, epoch) != images[index]).any(-1).flatten() for epoch in range(3)]
    assert 60 < int(mirrored[0].sum()) < 140                                # a random half in the first epoch
    assert torch.equal(mirrored[1], ~mirrored[0]) and torch.equal(mirrored[2], mirrored[0])
    assert torch.equal(AlternatingFlip(n, seed=5).first, schedule.first)    # seeded: a resumed run agrees
    assert not torch.equal(AlternatingFlip(n, seed=6).first, schedule.first)


def test_under_the_alternating_schedule_the_batch_augment_leaves_flips_to_the_loader():
    x = pattern()
    alternate = augmenter(horizontal_flip=True, flip_schedule="alternate")
    assert torch.equal(alternate.augment(x), x.float() / 255)
    assert isinstance(alternate.alternating_flip(10, seed=0), AlternatingFlip)
    assert augmenter(horizontal_flip=True).alternating_flip(10, seed=0) is None          # random schedule
    assert augmenter(horizontal_flip=False, flip_schedule="alternate").alternating_flip(10, seed=0) is None
    assert "alternating" in describe_augmentation(DataArguments(flip_schedule="alternate"), NAMES)[0]


def test_shift_is_a_per_image_crop_of_the_reflect_padded_image():
    x = pattern()
    torch.manual_seed(0)
    out = augmenter(random_crop_padding=3).augment(x)
    padded = F.pad(x[:1].float() / 255, (3, 3, 3, 3), mode="reflect")[0]
    offsets = set()
    for image in out:
        matches = [(dy, dx) for dy in range(7) for dx in range(7)
                   if torch.equal(image, padded[:, dy:dy + 16, dx:dx + 16])]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 20                                          # 49 possible offsets, 64 draws


def test_shift_larger_than_the_image_pads_with_zeros():
    out = augmenter(random_crop_padding=20).augment(pattern(4))
    assert out.shape == (4, 3, 16, 16)


@pytest.mark.parametrize("flags", [dict(rotation_degrees=30), dict(zoom=0.2), dict(color_jitter=0.4),
                                   dict(random_erasing=1.0), dict(auto_augment="randaugment"),
                                   dict(auto_augment="trivialaugment")])
def test_every_transform_draws_per_image(flags):
    torch.manual_seed(0)
    out = augmenter(**flags).augment(pattern())
    assert out.shape == (64, 3, 16, 16) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert distinct(out) > 32, f"{flags}: one random draw shared by the batch?"


@pytest.mark.parametrize("flags", [dict(rotation_degrees=30, zoom=0.2), dict(color_jitter=0.4),
                                   dict(auto_augment="randaugment"), dict(random_erasing=1.0)])
def test_grayscale_batches_work(flags):
    out = augmenter(**flags)(pattern(8, channels=1))
    assert out.shape == (8, 1, 16, 16)


def test_rotation_and_zoom_at_zero_strength_are_identity():
    x = pattern(4)
    out = augmenter(rotation_degrees=1e-9, zoom=0.0).augment(x)
    torch.testing.assert_close(out, x.float() / 255, atol=1e-5, rtol=0)


def test_zoom_keeps_the_centre():
    x = pattern(16)
    out = augmenter(zoom=0.3).augment(x)
    # An even-sized image's centre lies between pixels: the 2x2 centre block barely moves.
    torch.testing.assert_close(out[:, :, 7:9, 7:9].mean(dim=(2, 3)), (x[:, :, 7:9, 7:9].float() / 255).mean(dim=(2, 3)),
                               atol=0.06, rtol=0)


def test_random_erasing_fills_one_box_per_image_with_the_mean_colour():
    torch.manual_seed(0)
    x = pattern()
    out = augmenter(random_erasing=1.0)(x)                          # normalized: the mean colour is 0
    erased = (out == 0).all(dim=1)                                   # (B, H, W)
    assert erased.flatten(1).any(dim=1).all()
    areas = erased.flatten(1).sum(dim=1).float() / 256
    assert 0.0 < areas.min() and areas.max() <= 0.5
    assert len({tuple(e.nonzero()[0].tolist()) for e in erased}) > 10  # boxes in different places
    none = augmenter(random_erasing=0.0)(x)
    assert not (none == 0).all(dim=1).any()


def test_same_seed_same_augmentation():
    augment = augmenter(random_crop_padding=4, horizontal_flip=True, rotation_degrees=10, color_jitter=0.2,
                        random_erasing=0.5, auto_augment="trivialaugment")
    torch.manual_seed(3)
    first = augment(pattern(8))
    torch.manual_seed(3)
    assert torch.equal(augment(pattern(8)), first)


def test_augment_rejects_float_batches():
    with pytest.raises(ValueError, match="uint8"):
        augmenter().augment(torch.rand(2, 3, 8, 8))


def test_flip_default_is_off_for_digit_datasets():
    digits = [str(d) for d in range(10)]
    assert flip_enabled(DataArguments(), NAMES)
    assert not flip_enabled(DataArguments(), digits)
    assert flip_enabled(DataArguments(horizontal_flip=True), digits)
    assert not flip_enabled(DataArguments(horizontal_flip=False), NAMES)
    assert not BatchAugment(DataArguments(), digits, MEAN, STD).flip
    assert not any("flip" in item for item in describe_augmentation(DataArguments(), digits))


def test_master_switch_turns_everything_off():
    args = DataArguments(augment=False, rotation_degrees=20, mixup_alpha=0.2)
    augment = BatchAugment(args, NAMES, MEAN, STD)
    x = pattern(4)
    torch.testing.assert_close(augment(x), Normalize(MEAN, STD)(x))
    assert build_batch_mix(args, 3) is None
    assert describe_augmentation(args, NAMES) == ["none (--augment false)"]


def test_describe_augmentation_lists_what_is_on():
    args = DataArguments(rotation_degrees=15, zoom=0.1, color_jitter=0.2, auto_augment="randaugment",
                         random_erasing=0.25, mixup_alpha=0.2, cutmix_alpha=1.0)
    items = describe_augmentation(args, NAMES)
    text = " | ".join(items)
    for word in ("RandAugment", "colour jitter", "flip", "shift: reflect-pad 2 px", "rotation ±15°",
                 "zoom: scale 0.9-1.1", "erasing (p=0.25", "MixUp alpha 0.2 or CutMix alpha 1"):
        assert word in text, word
    assert describe_augmentation(DataArguments(**OFF), NAMES) == ["none"]


def test_no_batch_mix_when_both_alphas_are_zero():
    assert build_batch_mix(DataArguments(), 10) is None


@pytest.mark.parametrize("flags", [dict(mixup_alpha=0.4), dict(cutmix_alpha=1.0),
                                   dict(mixup_alpha=0.4, cutmix_alpha=1.0)])
def test_batch_mix_gives_soft_targets(flags):
    mix = build_batch_mix(DataArguments(**flags), num_classes=5)
    x = torch.randn(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    for _ in range(5):
        mixed, soft = mix(x, y)
        assert mixed.shape == x.shape and mixed.dtype == torch.float32
        assert soft.shape == (8, 5) and soft.dtype == torch.float32
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(8))
        assert ((soft > 0).sum(dim=1) <= 2).all()
        own, partner = soft[torch.arange(8), y], soft[torch.arange(8), y.roll(1)]   # mixed with the rolled batch
        torch.testing.assert_close(own + partner, torch.ones(8))
        assert torch.allclose(own, own[0])                                           # one lambda per batch
    loss = F.cross_entropy(torch.randn(8, 5), soft, label_smoothing=0.1)
    assert torch.isfinite(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_augmentation_runs_on_the_gpu():
    augment = BatchAugment(DataArguments(rotation_degrees=10, zoom=0.1, color_jitter=0.2, random_erasing=0.5,
                                         auto_augment="randaugment"), NAMES, MEAN, STD).to("cuda")
    out = augment(pattern(32).to("cuda"))
    assert out.device.type == "cuda" and out.shape == (32, 3, 16, 16)
    assert distinct(out.cpu()) > 16
    mix = build_batch_mix(DataArguments(mixup_alpha=0.2, cutmix_alpha=1.0), 3)
    mixed, soft = mix(out, torch.randint(0, 3, (32,), device="cuda"))
    assert mixed.device.type == soft.device.type == "cuda"


def test_train_size_downscales_training_batches_only():
    x = pattern(4)                                              # 16x16
    augment = augmenter(augment=False)
    augment.train_size = 8                                      # what --progressive_resize_epochs sets per epoch
    expected = F.interpolate(x.float() / 255, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(augment(x), Normalize(MEAN, STD)(expected))
    augment.eval()                                              # evaluation always sees the full size
    torch.testing.assert_close(augment(x), Normalize(MEAN, STD)(x))
