"""inference.py: reading any image, the Predictor (vs a plain forward, under threads), finding models.

The model folder is built the way a training run writes it: `models.create_model` +
`save_pretrained`, the saved ViT-style image processor, metrics.json, data_summary.json and
examples/ (a tiny untrained network; its classifier weights are scaled up so the classes are
well separated and orderings are stable).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hub_fixtures import USER, WRITE_TOKEN, hub, hub_env  # noqa: F401  (fixtures: a local Hub stand-in)
from image_classifier.images import ImageError, load_image
from image_classifier.inference import Predictor, model_info
from image_classifier.model_folder import find_examples, find_latest_model

CLASSES = ["airplane", "cat", "dog", "ship"]
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


# --------------------------------------------------------------------------------------------
# A realistic model folder (shared with test_app.py)
# --------------------------------------------------------------------------------------------

def example_image(class_index: int, i: int, size: int = 32) -> Image.Image:
    """A deterministic RGB test picture: a colour gradient plus noise, different per class."""
    rng = np.random.default_rng(100 * class_index + i)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1)[..., np.roll(np.arange(3), class_index)]
    pixels = np.clip(255 * (0.7 * base + 0.3 * rng.random((size, size, 3))), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def make_model_folder(path: Path, num_channels: int = 3, *, metrics: bool = True, summary: bool = True,
                      examples: int = 2, seed: int = 0) -> Path:
    """Write a finished-run model folder like the runner's into `path` and return it."""
    from transformers import ViTImageProcessor

    from image_classifier.models import create_model

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = create_model("cnn-fast", class_names=CLASSES, num_channels=num_channels, image_size=32,
                         overrides={"widths": [8, 16]})
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)      # untrained but decisive: well-separated probabilities
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD).save_pretrained(path)
    if summary:
        (path / "data_summary.json").write_text(json.dumps({
            "dataset": "../shared/datasets/cifar10", "class_names": CLASSES, "image_size": 32,
            "num_channels": num_channels,
            "splits": {s: {"rows": n, "class_counts": {c: n // 4 for c in CLASSES}}
                       for s, n in (("train", 400), ("validation", 40), ("test", 80))}}))
    if metrics:
        (path / "metrics.json").write_text(json.dumps({
            "test_accuracy": 0.8125, "test_f1": 0.8034, "test_loss": 0.61, "test_num_samples": 80,
            "test_per_class": {c: {"precision": 0.8, "recall": 0.8, "f1": 0.8} for c in CLASSES},
            "hardware": "1x CPU (2 threads, x86_64)", "train_seconds": 12.5,
            "num_parameters": sum(p.numel() for p in model.parameters())}))
    if examples:
        (path / "examples").mkdir(exist_ok=True)
        for c, name in enumerate(CLASSES):
            for i in range(examples):
                example_image(c, i).save(path / "examples" / f"{name}_{i}.png")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("run") / "cifar10-cnn-fast")


@pytest.fixture(scope="module")
def predictor(model_dir):
    with Predictor(model_dir, device="cpu", max_batch_size=8) as p:
        yield p


def reference_probs(model_dir: Path, images) -> np.ndarray:
    """A plain forward pass: stock AutoImageProcessor + AutoModelForImageClassification, softmax."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    pixels = processor(images=[load_image(im) for im in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return torch.softmax(model(pixel_values=pixels).logits, dim=-1).numpy()


# --------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------

def test_predictor_top_k_sorted_and_bounded(predictor, model_dir):
    result = predictor.predict(model_dir / "examples" / "cat_0.png", top_k=3)
    assert len(result) == 3
    labels, probs = zip(*result)
    assert set(labels) <= set(CLASSES) and len(set(labels)) == 3
    assert list(probs) == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-6
    everything = predictor.predict(model_dir / "examples" / "cat_0.png", top_k=None)
    assert len(everything) == len(CLASSES) and sum(p for _, p in everything) == pytest.approx(1.0, abs=1e-5)
    assert len(predictor.predict(example_image(0, 0), top_k=50)) == len(CLASSES)       # clipped
    assert predictor.labels == CLASSES
    assert predictor.predict_batch([], top_k=3) == []


def _gradient(size=(24, 16)) -> Image.Image:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 10, y * 15, (x + y) * 5], -1).astype(np.uint8), "RGB")


@pytest.mark.parametrize("num_channels", [3, 1])
def test_predictor_matches_a_plain_forward_pass(tmp_path, model_dir, predictor, num_channels):
    folder = model_dir if num_channels == 3 else make_model_folder(tmp_path / "gray", num_channels=1, examples=0)
    pred = predictor if num_channels == 3 else Predictor(folder, device="cpu")
    try:
        images = [example_image(c, 5) for c in range(4)] + [_gradient((50, 20)), Image.new("L", (1, 1), 99)]
        expected = reference_probs(folder, images)
        got = pred.predict_proba(images)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        for image, row in zip(images, expected):
            top = pred.predict(image, top_k=2)
            assert top[0][0] == CLASSES[int(row.argmax())]
            assert top[0][1] == pytest.approx(float(row.max()), abs=1e-5)
        assert type(pred.processor).__name__ == "ViTImageProcessor"
        assert list(pred.processor.image_mean) == MEAN and pred.processor.size["height"] == 32
    finally:
        if pred is not predictor:
            pred.close()


def test_predictor_is_thread_safe_and_batches_concurrent_requests(predictor):
    images = [example_image(i % 4, i) for i in range(16)]
    serial = [predictor.predict(im, top_k=None) for im in images]
    before = predictor.stats
    start = threading.Barrier(16)

    def call(i):
        start.wait()
        if i % 4 == 3:                                       # mix single and batch calls
            return predictor.predict_batch([images[i]], top_k=None)[0]
        return predictor.predict(images[i], top_k=None)

    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(call, range(16)))
    for a, b in zip(serial, concurrent):
        assert [label for label, _ in a] == [label for label, _ in b]
        np.testing.assert_allclose([p for _, p in a], [p for _, p in b], atol=1e-5)
    after = predictor.stats
    assert after["images"] - before["images"] == 16
    assert after["largest_batch"] <= predictor.max_batch_size


def test_predictor_puts_waiting_requests_into_one_batch(predictor):
    """While the model is busy, new requests queue up and then run together, max_batch_size at a time."""
    gate, entered = threading.Event(), threading.Event()
    model = predictor.model
    original = model.forward

    def slow_forward(*args, **kwargs):
        entered.set()
        gate.wait(10)
        return original(*args, **kwargs)

    model.forward = slow_forward
    try:
        with ThreadPoolExecutor(12) as pool:
            first = pool.submit(predictor.predict, example_image(0, 0))
            assert entered.wait(10)
            before = predictor.stats
            rest = [pool.submit(predictor.predict, example_image(i % 4, i)) for i in range(10)]
            deadline = time.time() + 10
            while predictor._queue.qsize() < 10 and time.time() < deadline:
                time.sleep(0.01)
            gate.set()
            results = [f.result(timeout=30) for f in [first] + rest]
    finally:
        del model.forward                                   # back to the class's method
    assert len(results) == 11
    after = predictor.stats
    # the 10 waiting requests ran in ceil(10 / 8) = 2 passes, not 10
    assert after["batches"] - before["batches"] == 1 + 2
    assert after["largest_batch"] == predictor.max_batch_size == 8


def test_predictor_splits_big_batches_and_survives_bad_input(predictor, model_dir):
    images = [example_image(i % 4, i) for i in range(20)]
    results = predictor.predict_batch(images, top_k=1)
    assert len(results) == 20 and predictor.stats["largest_batch"] <= 8
    with pytest.raises(ImageError):
        predictor.predict(b"definitely not an image")
    assert predictor.predict(model_dir / "examples" / "dog_1.png", top_k=1)[0][0] in CLASSES


def test_predictor_refuses_a_missing_folder_at_once(tmp_path):
    start = time.time()
    with pytest.raises(FileNotFoundError, match="no model folder at"):
        Predictor(tmp_path / "not-trained-yet")
    assert time.time() - start < 5             # no Hub lookup, no network retries


def test_an_unused_predictor_is_garbage_collected_with_its_worker(model_dir):
    import gc
    import weakref

    p = Predictor(model_dir, device="cpu")
    p.predict(example_image(0, 0))
    worker, ref = p._worker, weakref.ref(p)
    del p
    gc.collect()
    assert ref() is None
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_predictor_close(model_dir):
    p = Predictor(model_dir, device="cpu")
    assert "Predictor(" in repr(p)
    p.close()
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.predict(example_image(0, 0))


# --------------------------------------------------------------------------------------------
# find_latest_model, model_info, find_examples
# --------------------------------------------------------------------------------------------

def _fake_run(path: Path, mtime: float, finished: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if finished:
        (path / "metrics.json").write_text("{}")
        os.utime(path / "metrics.json", (mtime, mtime))
    return path


def test_find_latest_model(tmp_path):
    assert find_latest_model(tmp_path / "nowhere") is None
    root = tmp_path / "outputs"
    root.mkdir()
    assert find_latest_model(root) is None
    now = time.time()
    _fake_run(root / "old", now - 300)
    newest = _fake_run(root / "group" / "new", now - 100)
    _fake_run(root / "unfinished", now, finished=False)          # no metrics.json: still training
    _fake_run(root / "new2" / "checkpoints" / "x", now)          # checkpoints are not models
    _fake_run(root / ".hidden", now)
    assert find_latest_model(root) == newest
    assert find_latest_model(str(root)) == newest


def test_model_info_from_a_full_folder(model_dir):
    info = model_info(model_dir)
    assert info["source"] == str(model_dir)
    assert info["dataset"] == "../shared/datasets/cifar10"
    assert info["class_names"] == CLASSES and info["num_classes"] == 4
    assert info["test_accuracy"] == 0.8125 and info["test_f1"] == 0.8034
    assert info["image_size"] == 32 and info["split_rows"] == {"train": 400, "validation": 40, "test": 80}
    assert info["hardware"].startswith("1x CPU")


def test_model_info_omits_what_is_missing(tmp_path):
    folder = make_model_folder(tmp_path / "bare", metrics=False, summary=False, examples=0)
    info = model_info(folder)
    assert info["class_names"] == CLASSES                   # from config.json's id2label
    assert "test_accuracy" not in info and "dataset" not in info
    (folder / "metrics.json").write_text("{ not json")
    assert "test_accuracy" not in model_info(folder)
    assert model_info(tmp_path / "empty-dir-that-does-not-exist") == {
        "source": str(tmp_path / "empty-dir-that-does-not-exist")}
    assert find_examples(folder) == []


def test_model_info_for_an_unreachable_hub_id():
    """A Hub id with no network: every field is omitted, nothing raises."""
    code = ("from image_classifier.inference import model_info; "
            "from image_classifier.model_folder import find_examples; "
            "print(model_info('someone/not-a-model'), find_examples('someone/not-a-model'))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'source': 'someone/not-a-model'} []"


def test_find_examples_interleaves_classes(model_dir):
    examples = find_examples(model_dir)
    assert len(examples) == 8
    assert [p.name for p in examples[:4]] == [f"{c}_0.png" for c in sorted(CLASSES)]
    assert len(find_examples(model_dir, limit=3)) == 3


# --------------------------------------------------------------------------------------------
# The same from a Hub id (a local stand-in of the Hub API)
# --------------------------------------------------------------------------------------------

def push_model_folder(hub_url: str, folder: Path, repo_id: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_url, token=WRITE_TOKEN)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    return repo_id


def test_predictor_model_info_and_examples_from_a_hub_id(hub, hub_env, model_dir):
    repo_id = push_model_folder(hub.url, model_dir, f"{USER}/cifar10-cnn-fast")
    assert not Path(repo_id).exists()
    with Predictor(repo_id, device="cpu") as remote:
        images = [example_image(c, 3) for c in range(4)]
        np.testing.assert_allclose(remote.predict_proba(images), reference_probs(model_dir, images), atol=1e-5)
        assert remote.labels == CLASSES
    assert model_info(repo_id) == {**model_info(model_dir), "source": repo_id}
    remote_examples = find_examples(repo_id)
    assert [p.name for p in remote_examples] == [p.name for p in find_examples(model_dir)]
    assert all(p.read_bytes() == (model_dir / "examples" / p.name).read_bytes() for p in remote_examples)
    # a repo without the evidence files: fields are left out, nothing raises
    bare = push_model_folder(hub.url, make_model_folder(model_dir.parent / "bare", metrics=False, summary=False,
                                                        examples=0), f"{USER}/bare")
    info = model_info(bare)
    assert info["class_names"] == CLASSES and "test_accuracy" not in info and "dataset" not in info
    assert find_examples(bare) == []


# --------------------------------------------------------------------------------------------
# A real (tiny) training run, served
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_real_training_run_is_found_described_and_served_like_pipeline(tmp_path, tiny_image_folder):
    from image_classifier import runner
    from transformers import pipeline

    from image_classifier.config import parse_config

    out = tmp_path / "outputs" / "tiny"
    runner.run(parse_config([
        "--dataset", str(tiny_image_folder), "--output_dir", str(out), "--widths", "8", "16",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32",
        "--validation_split_fraction", "0.2", "--test_split_fraction", "0.2", "--cache_dir", str(tmp_path / "cache")]))
    assert find_latest_model(tmp_path / "outputs") == out
    info = model_info(out)
    assert info["dataset"] == str(tiny_image_folder)
    assert sorted(info["class_names"]) == ["blue", "green", "red"]
    assert 0.0 <= info["test_accuracy"] <= 1.0 and 0.0 <= info["test_f1"] <= 1.0
    examples = find_examples(out)
    assert len(examples) >= 3 and {p.stem.rsplit("_", 1)[0] for p in examples} == {"blue", "green", "red"}
    classifier = pipeline("image-classification", model=str(out), trust_remote_code=True)
    with Predictor(out, device="cpu") as predictor:
        for path in examples:
            ours = predictor.predict(path, top_k=3)
            theirs = classifier(str(path), top_k=3)
            assert [label for label, _ in ours] == [r["label"] for r in theirs]
            np.testing.assert_allclose([p for _, p in ours], [r["score"] for r in theirs], atol=1e-5)


def test_predict_command(model_dir, tmp_path, capsys, monkeypatch):
    import argparse

    from image_classifier.batch_inference import add_predict_command

    parser = argparse.ArgumentParser()
    add_predict_command(parser.add_subparsers(dest="command", required=True))
    cat, bad = model_dir / "examples" / "cat_0.png", tmp_path / "bad.jpg"
    bad.write_text("no")
    args = parser.parse_args(["predict", str(cat), str(bad), "--model", str(model_dir), "--top_k", "2", "--json"])
    assert args.run(args) == 1
    out, err = capsys.readouterr()
    line, failed = map(json.loads, out.strip().splitlines())
    assert failed["file"] == str(bad) and failed["predictions"] == [] and "not an image" in failed["error"]
    expected = Predictor(model_dir, device="cpu").predict(cat, top_k=2)
    assert line["file"] == str(cat) and [p["label"] for p in line["predictions"]] == [e[0] for e in expected]
    assert f"error: {bad}: bad.jpg is not an image" in err
    args = parser.parse_args(["predict", str(cat), "--model", str(model_dir)])
    assert args.run(args) == 0
    assert capsys.readouterr().out.startswith(f"{cat}\t{expected[0][0]} ")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODEL_ID", raising=False)
    args = parser.parse_args(["predict", str(cat)])
    assert args.run(args) == 2 and "no model" in capsys.readouterr().err


def test_predict_to_csv_keeps_going_past_an_unreadable_file(model_dir, tmp_path, capsys):
    from image_classifier.__main__ import main

    examples = sorted((model_dir / "examples").glob("*.png"))
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    listing = tmp_path / "paths.txt"
    listing.write_text("# a comment\n" + "\n".join(map(str, [examples[0], bad, examples[1]])) + "\n\n")
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(listing), str(examples[2]), "--model", str(model_dir), "--top_k", "2",
                 "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"error: {bad}" in err and "3 images classified, 1 unreadable" in err and "images/s" in err
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "label_1", "probability_1", "label_2", "probability_2", "error"]
    assert [r[0] for r in rows[1:]] == [str(examples[0]), str(bad), str(examples[1]), str(examples[2])]
    expected = Predictor(model_dir, device="cpu").predict(examples[1], top_k=2)
    assert rows[3][1] == expected[0][0] and float(rows[3][2]) == pytest.approx(expected[0][1], abs=1e-6)
    assert rows[2][1:5] == ["", "", "", ""] and "not an image" in rows[2][5] and rows[1][5] == ""


def test_predict_a_dataset_split_to_json_lines_with_the_true_labels(model_dir, tiny_image_folder, tmp_path, capsys):
    from image_classifier.__main__ import main

    out = tmp_path / "test.jsonl"
    assert main(["predict", "--dataset", str(tiny_image_folder), "--split", "validation", "--model",
                 str(model_dir), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) >= 3 and lines[0]["file"] == "validation/0"
    assert {line["true_label"] for line in lines} <= {"red", "green", "blue"}
    assert all(len(line["predictions"]) == 3 for line in lines)
    assert main(["predict", "--dataset", str(tiny_image_folder), "--split", "nope", "--model", str(model_dir)]) == 1
    assert "has no 'nope' split" in capsys.readouterr().err
