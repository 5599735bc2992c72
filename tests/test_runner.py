"""A finished run is never lost: bad input with --overwrite_output_dir, odd image modes in the examples, an
output folder that cannot be written, a full disk while saving, and what a killed save leaves behind.

The full-disk and read-only cases run on a real small tmpfs (mounting needs root, as CI runs); elsewhere they
skip and say so."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import make_image
from image_classifier import engine, model_folder, plots, runner
from image_classifier.config import ConfigError, parse_config
from image_classifier.data import DataError
from image_classifier.images import read_image
from image_classifier.files import DiskFullError
from image_classifier.runner import run
from test_engine import MODEL_FILES, PLOTS, tiny_args

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_image_folder):
    """A finished two-epoch run on the tiny folder, and its files."""
    out = tmp_path_factory.mktemp("finished") / "model"
    run(parse_config(tiny_args(tiny_image_folder, out)))
    return out


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs folder of `size` (e.g. "8m"), read-only with ro=True; unmounted afterwards."""
    mounted = []

    def mount(size: str = "8m", ro: bool = False, name: str = "disk") -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size}" + (",ro" if ro else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (mounting needs root): {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill_disk(folder: Path, leave: int = 4096) -> Path:
    """Write a filler file until the disk holding `folder` has only `leave` bytes free."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.parametrize("bad, error, message", [
    (["--dataset", "EMPTY"], DataError, "holds no dataset"),
    (["--label_column", "no_such_column"], DataError, "no_such_column"),
    (["--model", "no-such-net", "--optimizer", "sgd"], ConfigError, "no-such-net"),
])
def test_overwrite_with_bad_input_leaves_the_finished_folder_byte_identical(finished, tiny_image_folder, tmp_path,
                                                                            bad, error, message):
    out = tmp_path / "model"
    shutil.copytree(finished, out)
    before = snapshot(out)
    if bad[1] == "EMPTY":
        (tmp_path / "empty").mkdir()
        bad = ["--dataset", str(tmp_path / "empty")]
    args = tiny_args(tiny_image_folder, out, "--overwrite_output_dir", *bad)
    with pytest.raises(error, match=message):
        run(parse_config(args))
    assert snapshot(out) == before


def test_a_mixed_mode_folder_with_cmyk_finishes_with_every_output_file(mixed_image_folder, tmp_path):
    out = tmp_path / "mixed"
    with pytest.warns(UserWarning):      # square/broken.png is skipped with a warning
        run(parse_config(tiny_args(mixed_image_folder, out)))
    for name in MODEL_FILES:
        assert (out / name).is_file(), name
    for name in PLOTS:
        assert (out / "plots" / name).stat().st_size > 1000, name
    examples = sorted((out / "examples").glob("*.png"))
    assert len(examples) == 4
    for path in examples:
        with Image.open(path) as image:
            assert image.mode in ("RGB", "L"), path.name
    # A CMYK JPEG is saved as the RGB the model sees, and reading the PNG back gives those pixels.
    cmyk = make_image("CMYK")
    saved = tmp_path / "cmyk.png"
    read_image(cmyk, 3)[0].save(saved)
    with Image.open(saved) as back:
        assert np.array_equal(np.asarray(back), np.asarray(cmyk.convert("RGB")))


def test_a_failing_optional_artefact_is_a_warning_and_the_run_finishes(tiny_image_folder, tmp_path, monkeypatch,
                                                                      capsys):
    def broken(*args, **kwargs):
        raise OSError("the plotting backend fell over")

    monkeypatch.setattr(plots, "plot_confusion_matrix", broken)
    out = tmp_path / "run"
    run(parse_config(tiny_args(tiny_image_folder, out)))
    captured = capsys.readouterr()
    err = captured.err
    # the recipe and every value it led to, at the start of the run
    assert "Recipe airbench on cpu (cnn-fast): --optimizer muon, --per_device_train_batch_size 16, " in captured.out
    assert f"warning: could not write {out / 'plots' / 'confusion_matrix.png'}" in err
    assert "the plotting backend fell over" in err
    for name in ("metrics.json", "model.safetensors", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "plots" / "learning_curves.png").is_file() and (out / "examples").is_dir()


def test_an_output_dir_under_a_file_is_refused_before_the_data_is_read(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "run"
    args = ["--dataset", str(tmp_path / "never_read"), "--output_dir", str(out)]
    with pytest.raises(ConfigError, match=r"--output_dir: .*a_file/run cannot be written: .*a_file is a file, "
                                          r"not a folder\. Choose a folder"):
        run(parse_config(args))


def test_a_read_only_output_folder_is_one_paragraph_and_nothing_in_it_changes(finished, tiny_image_folder, tmpfs,
                                                                           tmp_path):
    disk = tmpfs("8m")
    shutil.copytree(finished, disk / "model")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    before = snapshot(disk / "model")
    for out in (disk / "model", disk / "new"):
        done = subprocess.run([sys.executable, str(REPO / "train.py"),
                               *tiny_args(tiny_image_folder, out, "--overwrite_output_dir")],
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert lines[-1] == (f"error: --output_dir: {out} cannot be written: Read-only file system. Choose a "
                             "folder you can write to with --output_dir (a new one is created)."), done.stderr
        assert "Traceback" not in done.stderr and "Generating" not in done.stderr   # refused before the data
    assert snapshot(disk / "model") == before


def test_resume_latest_without_a_checkpoint_is_refused_before_the_data_is_read(tmp_path):
    args = ["--dataset", str(tmp_path / "never_read"), "--output_dir", str(tmp_path / "run"),
            "--resume_from_checkpoint", "latest"]
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        run(parse_config(args))


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_resumes_to_the_same_weights(
        finished, tiny_image_folder, tmpfs, monkeypatch):
    disk = tmpfs("8m")
    out = disk / "run"
    real_save = engine.save_checkpoint
    calls = []

    def save_on_a_filling_disk(accelerator, output_dir, state, keep):
        calls.append(state.global_step)
        if len(calls) == 2:
            first = sorted((out / "checkpoints").glob("step_*"))[0]
            calls.append(snapshot(first))
            fill_disk(disk)
        return real_save(accelerator, output_dir, state, keep)

    monkeypatch.setattr(engine, "save_checkpoint", save_on_a_filling_disk)
    with pytest.raises(DiskFullError) as raised:
        run(parse_config(tiny_args(tiny_image_folder, out)))
    message = str(raised.value)
    first = sorted((out / "checkpoints").glob("step_*"))
    assert [p.name for p in first] == [f"step_{calls[0]:08d}"]
    assert message.startswith(f"the disk is full: writing checkpoint step_{calls[1]:08d} under {out / 'checkpoints'} "
                              "failed")
    assert f"The previous checkpoint, {first[0].name}, and the files already in" in message
    assert "--resume_from_checkpoint latest" in message
    assert snapshot(first[0]) == calls[2]
    assert not list((out / "checkpoints").glob(".tmp_step_*"))     # the half-written one gave its space back
    assert not (out / "metrics.json").exists()

    (disk / "filler").unlink()
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    run(parse_config(tiny_args(tiny_image_folder, out, "--resume_from_checkpoint", "latest")))
    assert_same_weights(finished, out)


def test_a_full_disk_while_saving_the_weights_keeps_the_checkpoints_and_the_resume_finishes(
        finished, tiny_image_folder, tmpfs, monkeypatch):
    disk = tmpfs("8m")
    out = disk / "run"
    real_save = runner.save_model_folder

    def save_on_a_full_disk(*args, **kwargs):
        fill_disk(disk)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(runner, "save_model_folder", save_on_a_full_disk)
    with pytest.raises(DiskFullError) as raised:
        run(parse_config(tiny_args(tiny_image_folder, out)))
    message = str(raised.value)
    assert message.startswith(f"the disk is full: writing the model files under {out} failed")
    assert "the newest checkpoint in" in message and "--resume_from_checkpoint latest" in message
    assert len(list((out / "checkpoints").glob("step_*"))) == 2     # one per epoch, both intact
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()
    assert not list(out.glob(".save-*"))

    (disk / "filler").unlink()
    monkeypatch.setattr(runner, "save_model_folder", real_save)
    run(parse_config(tiny_args(tiny_image_folder, out, "--resume_from_checkpoint", "latest")))
    assert_same_weights(finished, out)


def assert_same_weights(expected_dir: Path, got_dir: Path) -> None:
    expected, got = load_file(expected_dir / "model.safetensors"), load_file(got_dir / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_a_save_cut_short_is_cleaned_up_by_the_next_run(finished, tiny_image_folder, tmp_path, capsys):
    out = tmp_path / "model"
    shutil.copytree(finished, out)
    (out / ".save-abc123").mkdir()
    (out / ".save-abc123" / "model.safetensors").write_bytes(b"half")
    (out / ".metrics.json.xyz.tmp").write_text("{")
    model_folder.clean_leftovers(out)
    assert not (out / ".save-abc123").exists() and not (out / ".metrics.json.xyz.tmp").exists()
    assert "Removed .save-abc123" in capsys.readouterr().out
    assert snapshot(out) == snapshot(finished)


def test_a_single_class_image_folder_says_so(tmp_path):
    for i in range(4):
        (tmp_path / "data" / "cats").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "data" / "cats" / f"{i}.png")
    with pytest.raises(DataError, match=r"holds one class \(cats/\); classification needs at least two classes"):
        run(parse_config(["--dataset", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]))


def fine_tune_args(dataset, out, model, *extra) -> list[str]:
    """tiny_args() with --model MODEL (a trained folder), without the preset's --widths."""
    args = tiny_args(dataset, out, "--model", str(model), *extra)
    at = args.index("--widths")
    return args[:at] + args[at + 3:]


def test_a_trained_model_folder_is_fine_tuned_on_other_classes_and_other_images(finished, gray_dataset_dir, tmp_path):
    """`--model FOLDER`: the tiny run's RGB 16 px colour model fine-tuned on 12 px grayscale digits (classes 0-2):
    images go in as the model takes them, the whitening stem and backbone start from the folder, the head is new."""
    from image_classifier.models import load_trained_model

    out = tmp_path / "tuned"
    config = parse_config(fine_tune_args(gray_dataset_dir, out, finished))
    assert config.model.saved and config.model.architecture == "cnn-fast" and config.train.recipe == "airbench"
    results = run(config)
    assert results["test_num_samples"] > 0
    tuned = json.loads((out / "config.json").read_text())
    assert tuned["id2label"] == {"0": "0", "1": "1", "2": "2"} and tuned["num_channels"] == 3
    assert tuned["image_size"] == 16 and tuned["calibration"]["fitted_on"] == "validation"
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["image_size"] == 16 and summary["num_channels"] == 3
    assert json.loads((out / "training_config.json").read_text())["model"] == str(finished)
    source, after = load_file(finished / "model.safetensors"), load_file(out / "model.safetensors")
    torch.testing.assert_close(after["stem.conv.weight"], source["stem.conv.weight"], rtol=0, atol=0)
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == json.loads((finished / "preprocessor_config.json").read_text())["image_mean"]
    # The same classes: the head is kept, with the folded temperature taken out again.
    kept = load_trained_model(str(finished), ["blue", "green", "red"])
    temperature = json.loads((finished / "config.json").read_text())["calibration"]["temperature"]
    torch.testing.assert_close(kept.classifier.weight, source["classifier.weight"] * temperature)
    assert not getattr(kept.config, "calibration", None)
    fresh = load_trained_model(str(finished), ["red", "green", "blue"])      # another order: another head
    assert not torch.equal(fresh.classifier.weight, kept.classifier.weight)
    assert fresh.config.id2label == {0: "red", 1: "green", 2: "blue"}


@pytest.mark.parametrize("flag, value", [("image_size", "24"), ("num_channels", "1"), ("widths", "8")])
def test_a_trained_model_s_fixed_shape_is_not_changed_by_flags(finished, tiny_image_folder, tmp_path, flag, value):
    config = parse_config(fine_tune_args(tiny_image_folder, tmp_path / "out", finished, f"--{flag}", value))
    with pytest.raises(ConfigError, match=f"--{flag}"):
        runner.follow_the_data(config)


def test_a_model_path_that_holds_no_trained_model_says_so(tmp_path):
    from image_classifier.models import prepare_model_config

    for name, why in ((str(tmp_path / "nope"), "(no such folder)"), (str(tmp_path), "holds no model this project")):
        config = parse_config(["--model", name, "--output_dir", str(tmp_path / "out")])
        assert not config.model.saved
        with pytest.raises(ConfigError, match=r"unknown model .*" + why.replace("(", r"\(").replace(")", r"\)")):
            prepare_model_config(config)
