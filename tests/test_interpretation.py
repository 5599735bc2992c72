"""Grad-CAM, feature maps, filters and the `explain` command: sanity checks that would catch a broken map.

A map is checked where the answer is known: a network trained on images whose class is decided by a patch in
one corner must look at that corner; on real CIFAR-10 test images, removing the pixels Grad-CAM ranks highest
must hurt the class score more than removing as many random pixels (ROAD, pytorch-grad-cam's metric).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_classifier.__main__ import main
from image_classifier.inference import Predictor, expand_image_paths
from image_classifier.interpretation import (Explainer, channel_grid, feature_maps, filter_grid, grad_cam,
                                             overlay_cam, stage_layers, top_losses, visible_box)
from image_classifier.models import create_model
from test_inference import CLASSES, example_image, make_model_folder

PATCH_COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)


def corner_patch_images(n: int, rng: np.random.Generator, side: int = 32, patch: int = 8):
    """Noise images whose class (0-3) is the colour of a patch in the top-left corner: (n, 3, side, side), (n,)."""
    labels = rng.integers(0, len(PATCH_COLOURS), n)
    images = rng.normal(0, 0.5, (n, 3, side, side)).astype(np.float32)
    images[:, :, :patch, :patch] = PATCH_COLOURS[labels][:, :, None, None] * 2 - 0.5
    return torch.from_numpy(images), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def corner_model():
    """The default network (cnn-fast, narrowed) trained until it reads the corner: 100 % on held-out images."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = create_model("cnn-fast", class_names=list("rgby"), num_channels=3, image_size=32,
                         overrides={"widths": [16, 32, 32]})
    images, labels = corner_patch_images(512, rng)
    model.init_whitening(images)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 3e-3)
    for _ in range(60):
        batch = torch.randint(0, len(images), (64,))
        loss = torch.nn.functional.cross_entropy(model(pixel_values=images[batch]).logits, labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), corner_patch_images(64, rng)


def test_grad_cam_puts_most_of_its_mass_on_the_corner_that_decides_the_class(corner_model):
    model, (images, labels) = corner_model
    maps, logits = grad_cam(model, images)
    assert maps.shape == (64, 32, 32) and logits.shape == (64, 4)
    assert (logits.argmax(axis=1) == labels.numpy()).mean() == 1.0
    assert maps.min() >= 0 and maps.max() <= 1
    corner = maps[:, :16, :16].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))        # the quadrant holding the patch
    assert corner.mean() > 0.6, corner.mean()
    for method in ("gradcam++", "scorecam"):                   # the library's other methods, through the same call
        other_maps, _ = grad_cam(model, images[:16], method=method)
        assert (other_maps[:, :16, :16].sum(axis=(1, 2)) / other_maps.sum(axis=(1, 2))).mean() > 0.6, method
    # Asking for another class than the predicted one gives another map.
    others, _ = grad_cam(model, images[:4], targets=[(int(t) + 1) % 4 for t in labels[:4]])
    assert not np.allclose(others, maps[:4])


def test_stages_feature_maps_and_filters_of_the_small_cnn_and_a_timm_model(corner_model):
    model, (images, _) = corner_model
    assert [name for name, _ in stage_layers(model)] == ["stem", "blocks.0", "blocks.1", "blocks.2"]
    stages = feature_maps(model, images[:1])
    assert [(name, maps.shape) for name, maps in stages] == [
        ("stem", (24, 31, 31)), ("blocks.0", (16, 15, 15)), ("blocks.1", (32, 7, 7)), ("blocks.2", (32, 3, 3))]
    grid = channel_grid(stages[-1][1])
    assert grid.dtype == np.uint8 and grid.shape[2] == 3 and grid.shape[1] > grid.shape[0]   # 4 rows of 8 tiles
    assert filter_grid(model).shape[2] == 3

    timm = create_model("timm/resnet18.a1_in1k", class_names=list("ab"), num_channels=3, image_size=64)
    assert [name for name, _ in stage_layers(timm)] == [f"timm_model.{m}" for m in
                                                       ("act1", "layer1", "layer2", "layer3", "layer4")]
    maps, logits = grad_cam(timm.eval(), torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, 64, 64) and logits.shape == (2, 2)
    assert [m.shape[0] for _, m in feature_maps(timm, torch.randn(1, 3, 64, 64))] == [64, 64, 128, 256, 512]


def test_the_overlay_covers_what_the_photo_processor_keeps_and_dims_the_rest():
    from transformers import ViTImageProcessor

    from image_classifier.transforms import build_photo_processor

    processor = build_photo_processor(64, 0.875, [0.5] * 3, [0.25] * 3)
    box = visible_box(processor, 500, 375)
    # shorter side 375 -> 73 (64 / 0.875), so 97x73; the centre 64x64 of that is 16..80 x 4..68, x 375/73 in the original:
    assert box == (82, 21, 411, 349)
    # What the processor hands the model spans that box: a photo whose red is x and green is y, read back.
    y, x = np.mgrid[0:375, 0:500]
    photo = Image.fromarray(np.stack([x * 255 / 499, y * 255 / 374, np.zeros_like(x)], -1).round().astype(np.uint8))
    pixels = processor(images=photo, return_tensors="np")["pixel_values"][0] * 0.25 + 0.5     # back to [0, 1]
    seen = (pixels[0].min() * 499, pixels[1].min() * 374, pixels[0].max() * 499, pixels[1].max() * 374)
    assert np.allclose(seen, box, atol=4), seen           # within a pixel or two of 8-bit rounding and the resize
    rng = np.random.default_rng(0)
    overlay = overlay_cam(photo, rng.random((64, 64)).astype(np.float32), box)
    assert overlay.shape == (375, 500, 3)
    assert overlay[:, :box[0]].max() <= 0.35 * 255 + 1                                  # outside: dimmed
    squash = ViTImageProcessor(size={"height": 32, "width": 32})         # the resident path's: all of the image
    assert visible_box(squash, 500, 375) == (0, 0, 500, 375)


def test_an_empty_map_is_called_empty_not_drawn_as_evidence():
    from image_classifier.interpretation import Explanation

    picture = Image.new("RGB", (8, 8))
    found = Explanation(picture, [("cat", 0.9), ("dog", 0.1)], "cat", 0.9, np.eye(4, dtype=np.float32), None, [])
    empty = Explanation(picture, [("cat", 0.9), ("dog", 0.1)], "dog", 0.1, np.zeros((4, 4), np.float32), None, [])
    assert found.describe() == "Where the network sees **cat** (p = 0.90); red: most"
    assert empty.describe().startswith("Nothing in this image raises the score of **dog** (p = 0.10)")


def test_top_losses_are_the_mistakes_ranked_by_loss():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.01, 0.99]])
    labels = np.array([0, 0, 0, 1])
    assert top_losses(labels, probs).tolist() == [1, 2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("explain") / "cifar10-cnn-fast")


def test_explainer_answers_for_the_top_class_or_a_chosen_one_at_the_image_size(model_dir):
    photo = example_image(1, 0, size=96).resize((120, 80))
    with Predictor(model_dir, device="cpu") as predictor:
        explainer = Explainer(predictor)
        top = explainer.explain(photo)
        expected = predictor.predict(photo, top_k=1)[0]
        assert top.top[0][0] == expected[0] and top.top[0][1] == pytest.approx(expected[1], abs=1e-6)
        assert top.target == top.top[0][0] and len(top.top) == 4
        assert top.overlay.shape == (80, 120, 3) and top.cam.shape == (32, 32)
        other = next(c for c in CLASSES if c != top.target)
        chosen = explainer.explain(photo, target=other)
        assert chosen.target == other and chosen.top == top.top
        assert [caption.split(":")[0] for _, caption in chosen.feature_map_images()] == ["stem", "blocks.0", "blocks.1"]
        with pytest.raises(ValueError, match="no class 'zebra'.*airplane, cat, dog, ship"):
            explainer.explain(photo, target="zebra")
        # Its own copy of the network: the Predictor's is untouched (no hooks left, still answers the same).
        assert not any(m._forward_hooks for m in predictor.model.modules())
        assert predictor.predict(photo, top_k=1)[0] == expected


def test_explain_command_writes_overlay_feature_maps_and_top5_per_image(model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "more").mkdir(parents=True)
    example_image(0, 1).save(images / "a.png")
    example_image(2, 1, size=48).save(images / "more" / "a.png")          # same name, another folder
    (images / "notes.png").write_text("not an image")
    out = tmp_path / "explained"
    status = main(["explain", str(images), "--model", str(model_dir), "--output_dir", str(out),
                   "--target_class", "dog"])
    printed = capsys.readouterr()
    assert status == 1 and "notes.png" in printed.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.feature_maps.png", "a.gradcam.png", "a.json", "a_2.feature_maps.png", "a_2.gradcam.png",
                     "a_2.json", "filters.png"]
    assert Image.open(out / "a_2.gradcam.png").size == (48, 48)
    record = json.loads((out / "a.json").read_text())
    assert record["target"] == "dog" and len(record["predictions"]) == 4
    assert "gradcam of dog" in printed.out
    assert main(["explain", str(images / "a.png"), "--model", str(model_dir), "--output_dir", str(out),
                 "--target_class", "zebra"]) == 2
    assert "no class 'zebra'" in capsys.readouterr().err


def test_predict_and_explain_take_folders_and_glob_patterns(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.jpg", "sub/c.PNG", "readme.txt"):
        (tmp_path / name).write_bytes(b"")
    assert expand_image_paths([str(tmp_path)]) == [str(tmp_path / n) for n in ("a.jpg", "b.png", "sub/c.PNG")]
    assert expand_image_paths([str(tmp_path / "*.png"), "missing.png"]) == [str(tmp_path / "b.png"), "missing.png"]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_image_paths([str(tmp_path / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files in the folder"):
        expand_image_paths([str(tmp_path / "empty")])


@pytest.mark.slow
def test_on_real_cifar10_removing_the_top_grad_cam_pixels_costs_more_than_removing_random_blobs(shared_datasets,
                                                                                                tmp_path):
    """ROAD (Rong et al., 2022; pytorch-grad-cam's metric): the top-20 % pixels of each map are removed (filled in
    by noisy linear imputation) and the drop of the predicted class's probability is measured, over 100 test
    images. The random baseline is a random map at Grad-CAM's own resolution (3x3 for cnn-fast at 32x32),
    upsampled the same way: it removes blobs of the same size, which hurts far more than scattered pixels."""
    import cv2
    import datasets
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from image_classifier.config import parse_config
    from image_classifier.images import load_image
    from image_classifier.interpretation import _Logits
    from image_classifier.runner import run

    out = tmp_path / "cifar10"
    results = run(parse_config([
        "--dataset", str(shared_datasets / "cifar10"), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
        "--max_train_samples", "10000", "--max_eval_samples", "500", "--num_train_epochs", "3", "--tta", "none",
        "--progressive_resize_epochs", "0"]))
    assert results["test_accuracy"] > 0.6, results["test_accuracy"]
    assert results["test_most_confused"][0]["count"] >= results["test_most_confused"][-1]["count"] > 0
    card = (out / "README.md").read_text()
    assert "## What the network looks at" in card and "plots/top_losses.png" in card and "plots/gradcam.png" in card

    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    test = datasets.load_dataset(str(shared_datasets / "cifar10"), split="test").select(range(100))
    pixels = processor(images=[load_image(row["img"]) for row in test], return_tensors="pt")["pixel_values"]
    maps, logits = grad_cam(model, pixels)
    targets = [ClassifierOutputSoftmaxTarget(int(p)) for p in logits.argmax(axis=1)]
    rng = np.random.default_rng(0)
    coarse = rng.random((len(maps), 3, 3)).astype(np.float32)
    blobs = np.stack([cv2.resize(c, (32, 32), interpolation=cv2.INTER_LINEAR) for c in coarse])
    road = ROADMostRelevantFirst(percentile=80)                 # remove what lies above the 80th percentile
    torch.manual_seed(0)
    cam_drop, random_drop = road(pixels, maps, targets, _Logits(model)).mean(), \
        road(pixels, blobs, targets, _Logits(model)).mean()
    print(f"ROAD top-20 %: Grad-CAM {cam_drop:.3f}, random blobs {random_drop:.3f}, "
          f"ratio {cam_drop / random_drop:.2f}")
    assert cam_drop < 0 and cam_drop <= 1.5 * random_drop, (cam_drop, random_drop)
