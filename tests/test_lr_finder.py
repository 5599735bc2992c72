"""The learning-rate finder: its readings (steepest fall, fastai's valley), the sweep restoring what it touched, and
`lr-find` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_flags
from image_classifier.__main__ import main
from image_classifier.lr_finder import learning_rates, smooth, suggest, valley


def test_valley_picks_a_rate_halfway_down_the_longest_fall():
    rates = learning_rates(1e-5, 1.0, 100)
    assert rates[0] == pytest.approx(1e-5) and rates[-1] == pytest.approx(1.0)
    # flat, then falling from step 30 to step 70, then blowing up; a spike early on does not fool it
    losses = np.concatenate([np.full(30, 2.3), np.linspace(2.3, 0.8, 41)[1:], np.linspace(0.8, 9, 30)])
    losses[5] = 0.5
    index = int(np.argmin(np.abs(rates - valley(rates, losses))))
    assert 45 <= index <= 55, index
    assert smooth([3.0, 1.0])[0] == pytest.approx(3.0)            # debiased: the first value is the first loss


def test_the_suggestion_is_the_steepest_fall_of_the_smoothed_loss_past_a_slow_early_drift():
    # what a from-scratch CNN shows: a slow drift down from the start, a steep fall late, then divergence; valley
    # starts in the drift and lands far below the fall, the suggestion sits on the fall (steps 60-70)
    rates = learning_rates(1e-7, 10.0, 100)
    losses = np.concatenate([np.linspace(2.33, 2.25, 60), np.linspace(2.25, 1.9, 11)[1:], np.linspace(1.9, 9, 30)])
    readings = suggest(rates, smooth(losses, beta=0.5))
    index = int(np.argmin(np.abs(rates - readings["steepest"])))
    assert 59 <= index <= 71, index
    assert readings["valley"] < rates[50] < readings["steepest"]


def test_lr_find_sweeps_writes_its_plot_and_json_and_prints_the_command(tiny_image_folder, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)                                     # nothing may land in ./outputs
    flags = ["--dataset", str(tiny_image_folder), *tiny_flags(tmp_path / "cache", "--optimizer", "adam")]
    status = main(["lr-find", "--lr_find_steps", "30", "--lr_find_start", "1e-5", "--lr_find_end", "10",
                   "--lr_find_dir", str(tmp_path / "found"), *flags])
    assert status == 0
    result = json.loads((tmp_path / "found" / "lr_find.json").read_text())
    assert 2 <= len(result["losses"]) <= 30 and result["optimizer"] == "adam"
    assert 1e-5 <= result["suggestion"] <= 10 and 1e-5 <= result["valley"] <= 10
    assert result["rule"] == "steepest fall"
    assert (tmp_path / "found" / "lr_find.png").stat().st_size > 5000
    printed = capsys.readouterr().out
    assert f"suggested --learning_rate {result['suggestion']:.3g}" in printed
    assert "python train.py --dataset" in printed and printed.count("--learning_rate") == 2   # the old one dropped
    assert not (tmp_path / "outputs").exists()


def test_the_sweep_leaves_the_weights_and_the_optimizer_as_they_were():
    from accelerate import Accelerator
    from types import SimpleNamespace

    from image_classifier.lr_finder import sweep
    from image_classifier.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn-basic", class_names=list("ab"), num_channels=3, image_size=16,
                         overrides={"widths": [4, 8]})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    model(pixel_values=images).logits.sum().backward()
    optimizer.step()                                                # some optimizer state to keep
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    args = SimpleNamespace(learning_rate=1e-3, label_smoothing=0.0)
    losses = sweep(model, optimizer, [(images, labels)], lambda x: x, args, Accelerator(cpu=True),
                   learning_rates(1e-4, 1e4, 50))
    assert 2 <= len(losses) < 50                                    # a rate of 1e4 diverges before the end
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    torch.testing.assert_close(optimizer.state_dict()["state"][0]["exp_avg"], state, rtol=0, atol=0)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3]
