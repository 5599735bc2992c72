"""Corruptions (CIFAR-10-C style): each changes the image, more at higher severity, seeded; the report through a
real run (--robustness_report) and the `robustness` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_flags
from image_classifier.__main__ import main
from image_classifier.config import parse_config
from image_classifier.robustness import CORRUPTIONS, corrupt, summarize
from image_classifier.runner import run


def _images(n: int = 8, channels: int = 3, side: int = 32) -> torch.Tensor:
    """Smooth pictures with an edge (blur and pixelation must have something to change), not flat noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, (x + y) / 2][:channels])[None] * rng.uniform(0.3, 1, (n, channels, 1, 1))
    base[..., side // 3:side // 2, :] = 0.9
    return torch.from_numpy((base * 255).round().astype(np.uint8))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_changes_the_image_more_at_higher_severity_and_is_seeded(name):
    images = _images()
    mild, strong = corrupt(images, name, 1), corrupt(images, name, 5)
    assert mild.dtype == torch.uint8 and mild.shape == images.shape
    change = [float((c.float() - images.float()).abs().mean()) for c in (mild, strong)]
    # saturate's severities run from washed out (x0.3, x0.1) to oversaturated (x1.5...x2.5): not one direction
    assert 0 < change[0] and 0 < change[1] if name == "saturate" else 0 < change[0] < change[1], change
    torch.testing.assert_close(corrupt(images, name, 3, seed=7), corrupt(images, name, 3, seed=7))
    # 64 px photos and grayscale digits go through too (spatial constants scale with the side)
    assert corrupt(_images(2, side=64), name, 3).shape == (2, 3, 64, 64)
    assert corrupt(_images(2, channels=1), name, 3).shape == (2, 1, 32, 32)


def test_random_corruptions_draw_anew_with_another_seed():
    images = _images()
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog"):
        assert not torch.equal(corrupt(images, name, 3, seed=0), corrupt(images, name, 3, seed=1)), name


def test_summary_finds_the_mean_and_the_worst_corruption():
    report = {"accuracy": {"a": [0.9, 0.8, 0.7, 0.6, 0.5], "b": [0.5, 0.4, 0.3, 0.2, 0.1]}}
    summary = summarize(report)
    assert summary["mean_corruption_accuracy"] == pytest.approx(0.5)
    assert summary["worst_corruption"] == {"name": "b", "mean_accuracy": pytest.approx(0.3)}
    assert summary["mean_accuracy_per_severity"] == pytest.approx([0.7, 0.6, 0.5, 0.4, 0.3])


def test_a_run_with_robustness_report_writes_it_and_the_command_repeats_it(tiny_image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    results = run(parse_config(["--dataset", str(tiny_image_folder), "--output_dir", str(out),
                                *tiny_flags(tmp_path / "cache", "--robustness_report", "--robustness_samples", "10")]))
    report = json.loads((out / "robustness.json").read_text())
    assert report["num_images"] == 10 and list(report["accuracy"]) == list(CORRUPTIONS)
    assert results["mean_corruption_accuracy"] == pytest.approx(report["mean_corruption_accuracy"])
    assert report["clean_accuracy"] == pytest.approx(results["test_accuracy"], abs=0.5)     # 10 of the test images
    assert (out / "plots" / "robustness.png").stat().st_size > 5000
    card = (out / "README.md").read_text()
    assert "### Robustness to corrupted images" in card and report["worst_corruption"]["name"].replace("_", " ") in card

    assert main(["robustness", "--model", str(out), "--num_images", "10", "--output_dir", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "robustness.json").read_text())
    # seeded: the same corrupted images; the reloaded weights may flip a near-tie of this 2-epoch model
    assert again["clean_accuracy"] == report["clean_accuracy"]
    assert again["mean_corruption_accuracy"] == pytest.approx(report["mean_corruption_accuracy"], abs=0.02)
    assert "robustness on 10 test images" in printed and "gaussian_noise" in printed
