"""Calibration: ECE against a hand-computed case, temperature fitting, and the temperature folded into the weights
surviving save_pretrained and pipeline()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from image_classifier.calibration import (calibration_metrics, fit_temperature, fold_temperature, reliability_bins)
from image_classifier.models import create_model

# Two classes; confidence (top probability), predicted class and label of four images:
#   A 1.0  pred 0, label 1 (wrong)      B 0.95 pred 0, label 0 (right)   -> both in the last bin (14/15, 1]
#   C 0.62 pred 1, label 1 (right)      -> bin (9/15, 10/15]
#   D 0.70 pred 0, label 0 (right)      -> bin (10/15, 11/15]
HAND_LOGITS = np.array([[100.0, 0.0], [math.log(19), 0.0], [0.0, math.log(0.62 / 0.38)], [math.log(0.7 / 0.3), 0.0]])
HAND_LABELS = np.array([1, 0, 1, 0])
# Last bin: accuracy 1/2, confidence (1 + 0.95)/2 = 0.975, 2 of 4 images: 0.5 x 0.475; C: 0.25 x 0.38; D: 0.25 x 0.3
HAND_ECE = 0.5 * 0.475 + 0.25 * 0.38 + 0.25 * 0.30


def test_ece_nll_and_brier_match_a_hand_computed_case():
    got = calibration_metrics(HAND_LOGITS, HAND_LABELS)
    assert got["ece"] == pytest.approx(HAND_ECE, abs=1e-6)                  # torchmetrics computes in float32
    assert got["nll"] == pytest.approx((100 - math.log(0.95) - math.log(0.62) - math.log(0.7)) / 4, abs=1e-6)
    assert got["brier"] == pytest.approx((2 + 2 * 0.05 ** 2 + 2 * 0.38 ** 2 + 2 * 0.3 ** 2) / 4, abs=1e-9)
    # torchmetrics alone would put A's confidence of exactly 1.0 in a bin of its own: 0.25 x 1 + 0.25 x 0.05 + ...
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = torch.softmax(torch.tensor(HAND_LOGITS), dim=1)
    raw = multiclass_calibration_error(probs, torch.tensor(HAND_LABELS), num_classes=2, n_bins=15)
    assert float(raw) == pytest.approx(0.25 * 1 + 0.25 * 0.05 + 0.25 * 0.38 + 0.25 * 0.3, abs=1e-6)
    # The reliability diagram's bins are the same bins
    bins = reliability_bins(HAND_LOGITS, HAND_LABELS)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(1, 1.0), (1, 1.0), (2, 0.5)]
    assert sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / 4 == pytest.approx(HAND_ECE)


def test_fit_temperature_recovers_the_temperature_of_overconfident_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (20000, 10))
    probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
    labels = np.array([rng.choice(10, p=p) for p in probs])          # labels drawn from these very probabilities
    temperature = fit_temperature(2.5 * logits, labels)             # the same logits, 2.5x too sharp
    assert temperature == pytest.approx(2.5, rel=0.05)
    before, after = calibration_metrics(2.5 * logits, labels), calibration_metrics(2.5 * logits / temperature, labels)
    assert after["ece"] < 0.02 < before["ece"] and after["nll"] < before["nll"]


@pytest.mark.parametrize("name", ["cnn-fast", "timm/resnet18.a1_in1k"])
def test_a_folded_temperature_divides_the_logits_and_travels_with_save_pretrained_into_pipeline(name, tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    from image_classifier.models import save_pretrained
    from image_classifier.transforms import build_photo_processor

    torch.manual_seed(0)
    model = create_model(name, class_names=["a", "b", "c"], num_channels=3, image_size=32).eval()
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
        fold_temperature(model, 1.7)
        after = model(pixel_values=pixels).logits
    torch.testing.assert_close(after, before / 1.7, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="already calibrated"):
        fold_temperature(model, 1.7)

    save_pretrained(model, tmp_path)
    if "timm" not in name:
        build_photo_processor(32, 1.0, [0.5] * 3, [0.25] * 3).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["calibration"] == {"temperature": 1.7, "folded_into_classifier": True, "fitted_on": "validation"}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    classify = pipeline("image-classification", model=str(tmp_path), trust_remote_code=True, device="cpu")
    scores = {r["label"]: r["score"] for r in classify(image, top_k=3)}
    inputs = AutoImageProcessor.from_pretrained(tmp_path)(images=image, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**inputs).logits, dim=-1)[0]
    assert [scores[c] for c in ("a", "b", "c")] == pytest.approx(expected.tolist(), abs=1e-5)
