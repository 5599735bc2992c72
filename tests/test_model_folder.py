"""model_folder.py: the one module that names a model folder's files and writes, finds and reads them."""

import json
import os
import time

import pytest

from image_classifier import model_folder as folder


def test_write_model_folder_moves_the_weights_in_then_writes_the_marker_then_the_optional_files(tmp_path, capsys):
    order = []

    def save_weights(tmp):
        assert os.path.basename(tmp).startswith(".save-") and not (tmp_path / folder.METRICS).exists()
        (tmp_path / tmp / folder.WEIGHTS).write_bytes(b"weights")
        order.append("weights")

    def plot(path):
        assert json.loads((tmp_path / folder.METRICS).read_text()) == {"test_accuracy": 0.5}
        order.append(path.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")

    def broken(path):
        raise RuntimeError("no fonts")

    folder.write_model_folder(tmp_path, save_weights, {"test_accuracy": 0.5}, [{"epoch": 1}],
                              [(str(folder.plot_file(".", "learning_curves")), plot), (folder.CARD, broken)])
    assert order == ["weights", "learning_curves.png"]
    assert (tmp_path / folder.WEIGHTS).read_bytes() == b"weights" and folder.is_finished(tmp_path)
    assert json.loads((tmp_path / folder.HISTORY).read_text()) == [{"epoch": 1}]
    assert not list(tmp_path.glob(".save-*"))
    assert f"warning: could not write {tmp_path / folder.CARD} (RuntimeError: no fonts)" in capsys.readouterr().err


def test_a_failed_weight_save_leaves_no_marker_and_no_temporary_folder(tmp_path):
    def save_weights(tmp):
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        folder.write_model_folder(tmp_path, save_weights, {}, [])
    assert not folder.is_finished(tmp_path) and not list(tmp_path.glob(".save-*"))


def test_read_json_never_raises_and_find_latest_model_takes_the_newest_finished_run(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    assert folder.read_json(tmp_path, "bad.json", {}) == {} and folder.read_json(tmp_path, "missing.json") is None
    assert folder.read_json(tmp_path / "not-there" / "x", folder.CONFIG, []) == []
    for i, name in enumerate(["old", "new"]):
        run = tmp_path / "outputs" / name
        (run / folder.CHECKPOINTS / "step_1").mkdir(parents=True)
        (run / folder.CONFIG).write_text("{}")
        (run / folder.METRICS).write_text("{}")
        os.utime(run / folder.METRICS, (time.time() + i, time.time() + i))
    assert folder.find_latest_model(tmp_path / "outputs") == tmp_path / "outputs" / "new"
    with pytest.raises(ValueError, match="unknown plot"):
        folder.plot_file(tmp_path, "histogram")
