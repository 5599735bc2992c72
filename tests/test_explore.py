"""explore.py: data_summary.json, the three exploration figures and the printed summary."""

import json

import torch

from image_classifier.data import load_data
from image_classifier.explore import explore
from test_data import args_for


def test_explore_writes_the_summary_and_three_figures(tiny_image_folder, tmp_path, capsys):
    args = args_for(tiny_image_folder, tmp_path / "cache", rotation_degrees=10)
    data = load_data(args, seed=0)
    state = torch.random.get_rng_state()
    summary = explore(data, args, tmp_path / "out")
    assert torch.equal(torch.random.get_rng_state(), state), "the preview must not consume training randomness"
    written = json.loads((tmp_path / "out" / "data_summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    for key in ("dataset", "dataset_resolved", "image_column", "label_column", "class_names", "splits",
                "image_sizes", "image_modes", "imbalance_ratio", "skipped_images", "num_channels", "image_size",
                "mean", "std", "augmentation"):
        assert key in written, key
    assert written["class_names"] == ["blue", "green", "red"]
    assert any("rotation" in item for item in written["augmentation"])
    for name in ("samples.png", "class_distribution.png", "augmentation.png"):
        assert (tmp_path / "out" / "plots" / name).stat().st_size > 1000, name
    printed = capsys.readouterr().out
    assert "3 classes: blue, green, red" in printed
