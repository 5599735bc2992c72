"""`evaluate`: a saved model scored on its run's test split gives back the run's metrics.json, key for key; classes
are matched by name; a dataset with other classes is refused with both lists."""

import json
import shutil

import numpy as np
import pytest

from image_classifier.__main__ import main
from image_classifier.config import parse_config
from image_classifier.data import DataError
from image_classifier.evaluation import compare_with_run, evaluate_saved, load_saved_run, match_classes
from image_classifier.runner import run
from test_engine import tiny_args


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_image_folder):
    """A finished, calibrated two-epoch run on the tiny folder (tta flip_translate: the classes are colours)."""
    out = tmp_path_factory.mktemp("evaluate") / "model"
    run(parse_config(tiny_args(tiny_image_folder, out)))
    return out


def test_the_run_s_tta_reproduces_every_test_metric_exactly(finished):
    saved = json.loads((finished / "metrics.json").read_text())
    assert saved["tta"] == "flip_translate" and "temperature" in saved
    results, logits, labels = evaluate_saved(load_saved_run(str(finished)), "test", saved["tta"])
    shared = [k for k in results if k.startswith("test_") and k in saved]
    assert len(shared) >= 10
    for key in shared:
        if key not in ("test_ece", "test_nll", "test_brier"):     # the run's are one view per image
            assert results[key] == saved[key], key
    assert compare_with_run(results, saved) == [f"({len(shared) - 3} metrics compared)"]
    assert logits.shape == (saved["test_num_samples"], 3) and len(labels) == saved["test_num_samples"]


def test_one_view_reproduces_the_accuracy_without_tta_and_the_calibration_exactly(finished, capsys, tmp_path):
    saved = json.loads((finished / "metrics.json").read_text())
    assert main(["evaluate", "--model", str(finished), "--output_dir", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "the same as the run's metrics.json (4 metrics compared)" in printed, printed
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["test_accuracy"] == saved["test_accuracy_without_tta"]
    assert written["test_ece"] == saved["test_ece"] and written["test_nll"] == saved["test_nll"]
    assert {"test_f1", "test_precision", "test_recall", "test_loss", "test_confusion_matrix", "test_per_class",
            "images_per_second"} <= set(written)
    assert written["split"] == "test" and written["tta"] == "none"
    for plot in ("confusion_matrix.png", "top_losses.png"):
        assert (tmp_path / "eval" / "plots" / plot).stat().st_size > 1000, plot


def test_the_validation_split_uses_the_run_s_eval_prefix(finished):
    results, _, _ = evaluate_saved(load_saved_run(str(finished)), "validation")
    assert "eval_accuracy" in results and "eval_f1" in results and not any(k.startswith("test_") for k in results)


def test_classes_are_matched_by_name_and_other_classes_are_refused_with_both_lists():
    np.testing.assert_array_equal(match_classes(["cat", "dog", "bird"], ["bird", "cat", "dog"]), [2, 0, 1])
    with pytest.raises(DataError, match=r"the dataset has \['cat', 'horse'\].*not in the model: \['horse'\]"):
        match_classes(["cat", "dog"], ["cat", "horse"])


def test_another_dataset_with_other_classes_is_one_line_naming_them(finished, tiny_image_folder, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_image_folder, other)
    (other / "red").rename(other / "crimson")
    assert main(["evaluate", "--model", str(finished), "--dataset", str(other)]) == 1
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "crimson" in error[0] and "'red'" in error[0] and "fine-tune" in error[0], error
    error = error[0]
    assert "crimson" in error and "red" in error and "fine-tune" in error, error


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path)]) == 1
    assert "has no training_config.json" in capsys.readouterr().err
