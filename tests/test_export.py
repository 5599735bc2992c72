"""`export`: the small CNN and a timm model as ONNX with a dynamic batch axis, equal to PyTorch in ONNX Runtime
on real test images; int8 static quantization runs and is scored."""

import json

import numpy as np
import pytest
import torch

from image_classifier.__main__ import main
from image_classifier.config import parse_config
from image_classifier.evaluation import load_saved_run
from image_classifier.export import INT8_FILE, ONNX_FILE, onnx_session
from image_classifier.runner import run
from test_engine import tiny_args
from test_timm import timm_args


@pytest.fixture(scope="module", params=["small_cnn", "timm"])
def trained(request, tmp_path_factory, tiny_image_folder):
    out = tmp_path_factory.mktemp(f"export_{request.param}") / "model"
    flags = tiny_args if request.param == "small_cnn" else timm_args
    run(parse_config(flags(tiny_image_folder, out)))
    return out


def test_the_onnx_model_equals_pytorch_at_any_batch(trained, capsys):
    assert main(["export", "--model", str(trained)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement 100.00 %" in printed and "onnxruntime" in printed and "images/s" in printed
    session = onnx_session(trained / ONNX_FILE)
    (given,), (produced,) = session.get_inputs(), session.get_outputs()
    assert (given.name, produced.name) == ("pixel_values", "logits")
    assert isinstance(given.shape[0], str)              # the batch axis is symbolic, not 2
    saved = load_saved_run(str(trained))
    view = saved.data.eval_view("test")
    for count in (1, 3, len(view)):
        pixels = saved.normalize(view.images_at(range(count))).float().contiguous()
        with torch.inference_mode():
            ours = saved.model(pixel_values=pixels).logits.numpy()
        theirs = session.run(["logits"], {"pixel_values": pixels.numpy()})[0]
        assert theirs.shape == ours.shape
        np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)


def test_int8_is_written_and_scored(trained, capsys):
    if "timm" in trained.parent.name:
        pytest.skip("int8 once is enough (the small CNN); the timm export is checked above")
    assert main(["export", "--model", str(trained), "--int8", "--num_images", "10"]) == 0
    printed = capsys.readouterr().out
    assert (trained / INT8_FILE).stat().st_size > 0
    line = next(line for line in printed.splitlines() if line.startswith("onnxruntime int8"))
    accuracy = float(line.split("test accuracy ")[1].split(" %")[0])
    assert 0 <= accuracy <= 100
    assert json.loads((trained / "metrics.json").read_text())      # the folder is intact
