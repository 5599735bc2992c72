"""Fixtures for tests that talk to the Hub: a local stand-in server and a realistic model folder.

Import the fixtures into a test module with `from hub_fixtures import hub, hub_env, model_folder`.

- `hub`: a running `HubStandIn` with a write token for user "tester" (`WRITE_TOKEN`) and a read-only one.
- `hub_env`: points this process (`huggingface_hub.constants.ENDPOINT`, which huggingface_hub read at import)
  and child processes (`HF_ENDPOINT`) at the stand-in, with HF_HOME in a temporary folder and no HF_TOKEN, so
  nothing cached from before is used. Returns the environment for subprocesses.
- `model_folder`: a finished run's OUTPUT_DIR, as the runner writes it (a real tiny small-CNN saved with
  `save_pretrained`, its image processor, the JSON records, plots, and checkpoints/ and runs/ that must never
  be pushed).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hub_server import HubStandIn

USER = "tester"
WRITE_TOKEN = "hf_standin_write_token_0123456789abcdef"
READ_TOKEN = "hf_standin_read_token_0123456789abcdef"
CLASS_NAMES = ["airplane", "cat", "dog", "frog", "horse", "ship"]
IMAGE_SIZE = 16


@pytest.fixture
def hub():
    with HubStandIn(tokens={WRITE_TOKEN: (USER, "write"), READ_TOKEN: (USER, "read")}) as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch) -> dict[str, str]:
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    # huggingface_hub read HF_ENDPOINT when imported: patch what holds it in this process.
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)  # the module-level client behind `create_repo` & co.
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))  # in-process downloads land in tmp too
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))  # no cached login from the machine
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    # ...and HF_HUB_OFFLINE too (a machine without network often sets it): the stand-in Hub is reachable.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return dict(os.environ)


def build_model_folder(out: Path, class_names=CLASS_NAMES, image_size: int = IMAGE_SIZE) -> Path:
    """Write a finished run's model folder into `out`, with the runner's file names and keys."""
    import numpy as np
    from PIL import Image
    from transformers import ViTImageProcessor

    from image_classifier.models import count_parameters, create_model, summarize_model

    out.mkdir(parents=True, exist_ok=True)
    model = create_model("cnn-basic", class_names=list(class_names), num_channels=3, image_size=image_size)
    model.save_pretrained(out)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=mean, image_std=std).save_pretrained(out)
    (out / "model_summary.txt").write_text(summarize_model(model, (3, image_size, image_size)) + "\n")

    n = len(class_names)
    rng = np.random.default_rng(0)
    per_split = {"train": 40, "validation": 10, "test": 10}
    origins = {"train": "train minus the carved validation and test", "validation": "carved from train (12.5%, "
               "stratified, seed 42)", "test": "carved from train (12.5%, stratified, seed 42)"}
    data_summary = {  # the keys data.py writes
        "dataset": "tiny-images", "dataset_resolved": str(out.parent / "tiny-images"), "dataset_config_name": None,
        "source": "imagefolder", "image_column": "image", "label_column": "label", "num_classes": n,
        "class_names": list(class_names),
        "splits": {s: {"rows": rows * n, "from": origins[s], "rows_before_limit": rows * n,
                       "class_counts": {c: rows for c in class_names}} for s, rows in per_split.items()},
        "imbalance_ratio": 1.0, "skipped_images": {"count": 0, "first": []},
        "image_size": image_size, "num_channels": 3, "mean": mean, "std": std,
        "augmentation": ["random shift: reflect-pad 4 px and crop back", "horizontal flip (p=0.5)"],
    }
    training_config = {
        "dataset": "tiny-images", "dataset_config_name": None, "image_column": None, "label_column": None,
        "validation_split_fraction": 0.1, "test_split_fraction": 0.1, "image_size": None, "augment": True,
        "random_crop_padding": 4, "horizontal_flip": None, "model": "cnn-basic", "widths": None,
        "output_dir": str(out), "seed": 42, "num_train_epochs": 2.0, "max_train_steps": None,
        "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32, "gradient_accumulation_steps": 1,
        "optimizer": "sgd", "learning_rate": 0.05, "weight_decay": 0.0005, "momentum": 0.9, "nesterov": True,
        "adam_beta1": 0.9, "adam_beta2": 0.999, "label_smoothing": 0.1, "max_grad_norm": 0.0,
        "lr_scheduler_type": "onecycle", "warmup_ratio": 0.2, "metric_for_best_model": "accuracy",
        "early_stopping_patience": None, "mixed_precision": None, "push_to_hub": False, "hub_model_id": None,
        "hub_private_repo": False,
    }
    matrix = (np.eye(n, dtype=int) * 7 + rng.integers(0, 2, size=(n, n)))
    metrics: dict = {}
    for prefix, m in (("eval", matrix), ("test", matrix.T)):
        support = m.sum(axis=1)
        precision = np.diag(m) / np.maximum(m.sum(axis=0), 1)
        recall = np.diag(m) / np.maximum(support, 1)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        w = support / support.sum()
        metrics.update({
            f"{prefix}_accuracy": float(np.trace(m) / m.sum()), f"{prefix}_precision": float(precision.mean()),
            f"{prefix}_recall": float(recall.mean()), f"{prefix}_f1": float(f1.mean()), f"{prefix}_loss": 1.2345,
            f"{prefix}_precision_weighted": float((precision * w).sum()),
            f"{prefix}_recall_weighted": float((recall * w).sum()), f"{prefix}_f1_weighted": float((f1 * w).sum()),
            f"{prefix}_top5_accuracy": 0.99,
            f"{prefix}_per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                                        "f1": float(f1[i]), "support": int(support[i])}
                                    for i, c in enumerate(class_names)},
            f"{prefix}_confusion_matrix": m.tolist(), f"{prefix}_num_samples": int(m.sum()),
        })
    metrics.update(train_seconds=83.4, num_parameters=count_parameters(model), epochs_trained=2, best_epoch=2,
                   global_steps=30, hardware="1x CPU (2 threads, x86_64)", num_processes=1, mixed_precision="no")
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 0.3 * e, "eval_loss": 1.9 / e,
                "eval_accuracy": 0.32 * e, "learning_rate": 0.05 / e, "seconds": 41.7} for e in (1, 2)]
    for name, value in (("training_config.json", training_config), ("history.json", history),
                        ("data_summary.json", data_summary), ("metrics.json", metrics)):
        (out / name).write_text(json.dumps(value, indent=2) + "\n")

    (out / "plots").mkdir(exist_ok=True)
    for i, name in enumerate(("learning_curves", "confusion_matrix", "reliability", "top_losses", "gradcam", "filters", "samples",
                              "class_distribution", "augmentation")):
        Image.fromarray(rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)).save(out / "plots" / f"{name}.png")
    # What must never be pushed: Accelerate states, TensorBoard logs, hidden and temporary files.
    (out / "checkpoints" / "epoch_1").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints" / "epoch_1" / "model.safetensors").write_bytes(b"checkpoint weights")
    (out / "checkpoints" / "epoch_1" / "trainer_state.json").write_text("{}")
    (out / "runs" / "run1").mkdir(parents=True, exist_ok=True)
    (out / "runs" / "run1" / "events.out.tfevents.1").write_bytes(b"tensorboard")
    (out / ".DS_Store").write_bytes(b"hidden")
    (out / "plots" / ".notes.swp").write_bytes(b"editor swap file")
    (out / ".metrics.json.x1.tmp").write_text("{}")
    return out


@pytest.fixture(scope="session")
def _model_folder_template(tmp_path_factory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("template") / "model")


@pytest.fixture
def model_folder(_model_folder_template, tmp_path) -> Path:
    """A fresh copy per test (tests may compare it byte for byte before and after a push)."""
    import shutil

    return Path(shutil.copytree(_model_folder_template, tmp_path / "run" / "model"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to compare a folder before and after."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def python(code: str, env: dict[str, str], cwd: Path, timeout: int = 240):
    """Run `code` in a fresh Python process (this venv) and return the CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
