"""Inference: load a trained model folder (or Hub id) once and classify any image.

`load_image` (from `images`, the decoder training uses too) turns whatever a user hands over (a path,
bytes, a file object, a PIL image, a NumPy array) into an RGB PIL image the way a person expects: EXIF
rotation applied, transparency composited on white, 16-bit images scaled rather than clipped, very
large photos shrunk early, decompression bombs and non-images refused with a readable `ImageError`.

`Predictor` holds the model and the image processor saved beside it (the same resize, rescale
and normalisation as training) and answers `predict` / `predict_batch` from any number of threads.
Requests that arrive while the model is busy are stacked into one forward pass (up to
`max_batch_size` images) by a single worker thread, which is also the only thread that touches
the model.

`model_info` reads what a model folder says about itself (dataset, classes, test accuracy and F1),
for the app's information panel; finding and reading the folder's files is `model_folder`'s.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from .files import looks_like_local_path
from .images import ImageLike, load_image
from .model_folder import (CONFIG, DATA_SUMMARY, METRICS, TRAINING_CONFIG, find_latest_model,
                           is_local_model, read_json)

__all__ = ["Predictor", "model_info", "add_model_arguments", "expand_image_paths",
           "open_predictor"]

# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------

class _Request:
    __slots__ = ("pixels", "future")

    def __init__(self, pixels, future: Future):
        self.pixels = pixels
        self.future = future


class Predictor:
    """A trained model and its image processor, loaded once, safe to call from many threads.

    >>> predictor = Predictor("outputs/cifar10")            # or a Hub id such as "user/cifar10-cnn"
    >>> predictor.predict("cat.png", top_k=3)
    [('cat', 0.91), ('dog', 0.05), ('frog', 0.01)]

    Images are decoded and preprocessed in the calling thread; one worker thread runs the model,
    taking every request waiting in its queue into a single forward pass of at most
    `max_batch_size` images. So concurrent callers share batches without waiting for a timer.
    """

    def __init__(self, model_id_or_path: str | os.PathLike, device: Optional[str] = None, max_batch_size: int = 32,
                 revision: Optional[str] = None, token: Optional[str] = None, trust_remote_code: bool = True):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model_id = os.fspath(model_id_or_path)
        self.max_batch_size = int(max_batch_size)
        self.device = torch.device(device or _default_device())
        if not is_local_model(self.model_id) and looks_like_local_path(self.model_id):
            raise FileNotFoundError(f"no model folder at {self.model_id} (and it is not a Hugging Face Hub id)")
        kwargs = {"revision": revision, "token": token}
        model = AutoModelForImageClassification.from_pretrained(self.model_id, trust_remote_code=trust_remote_code,
                                                                **kwargs)
        self.processor = AutoImageProcessor.from_pretrained(self.model_id, **kwargs)
        self.model = model.to(self.device).eval()
        id2label = self.model.config.id2label or {}
        self.labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(self.num_labels)]
        self._stats = {"batches": 0, "images": 0, "largest_batch": 0}
        self._queue: "queue.SimpleQueue[Optional[_Request]]" = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._worker = threading.Thread(target=Predictor._serve, args=(weakref.ref(self), self._queue, self.max_batch_size),
                                        name=f"Predictor({Path(self.model_id).name})", daemon=True)
        self._worker.start()

    # -- public API ---------------------------------------------------------------------------

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    @property
    def stats(self) -> dict[str, int]:
        """Forward passes run so far: `batches`, `images` and `largest_batch` (images in one pass)."""
        return dict(self._stats)

    def predict(self, image: ImageLike, top_k: Optional[int] = 5) -> list[tuple[str, float]]:
        """Top-k `(label, probability)` pairs for one image, most probable first."""
        return self.predict_batch([image], top_k=top_k)[0]

    def predict_batch(self, images: Sequence[ImageLike], top_k: Optional[int] = 5) -> list[list[tuple[str, float]]]:
        """Top-k `(label, probability)` pairs for each image, in input order.

        Raises `ImageError` if any input is not a readable image (use `load_image` first to
        handle bad files one by one).
        """
        probs = self.predict_proba([load_image(im) for im in images])
        return [self.top_k(row, top_k) for row in probs]

    def predict_proba(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Class probabilities, shape (len(images), num_labels), float32."""
        pixels = self.preprocess([load_image(im) for im in images])
        return self.forward(pixels)

    def preprocess(self, images: Sequence[Image.Image]):
        """The saved image processor applied to RGB images: a float tensor (N, C, H, W) on the CPU."""
        if len(images) == 0:
            import torch

            return torch.empty(0)
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]

    def forward(self, pixels) -> np.ndarray:
        """Softmax probabilities for preprocessed pixels, computed by the worker thread in shared batches."""
        if len(pixels) == 0:
            return np.zeros((0, self.num_labels), np.float32)
        futures = []
        for start in range(0, len(pixels), self.max_batch_size):
            future: Future = Future()
            self._submit(_Request(pixels[start:start + self.max_batch_size], future))
            futures.append(future)
        return np.concatenate([f.result() for f in futures], axis=0)

    def close(self) -> None:
        """Stop the worker thread (pending requests are still answered). Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._worker.join(timeout=30)

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if not self._closed:
                self._queue.put(None)
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"Predictor({self.model_id!r}, device={str(self.device)!r}, labels={self.num_labels}, "
                f"max_batch_size={self.max_batch_size})")

    # -- internals ----------------------------------------------------------------------------

    def top_k(self, row: np.ndarray, top_k: Optional[int]) -> list[tuple[str, float]]:
        """The `top_k` (label, probability) pairs of one row of probabilities (K,), most probable first (all for None)."""
        k = self.num_labels if top_k is None else max(0, min(int(top_k), self.num_labels))
        order = np.argsort(-row, kind="stable")[:k]
        return [(self.labels[i], float(row[i])) for i in order]

    def _submit(self, request: _Request) -> None:
        with self._close_lock:
            if self._closed:
                raise RuntimeError("this Predictor was closed")
            self._queue.put(request)

    @staticmethod
    def _serve(ref: "weakref.ref[Predictor]", requests: "queue.SimpleQueue[Optional[_Request]]",
               max_batch_size: int) -> None:
        """The worker loop: take the first waiting request, add every other one already waiting (up to
        `max_batch_size` images), run them as one forward pass; stop at the None sentinel.

        It holds the Predictor only while running a batch, so a Predictor nobody uses any more can be
        garbage-collected; its `__del__` then sends the sentinel.
        """
        def run(batch: list[_Request]) -> None:
            predictor = ref()
            if predictor is None:
                for r in batch:
                    if r.future.set_running_or_notify_cancel():
                        r.future.set_exception(RuntimeError("this Predictor was garbage-collected"))
                return
            predictor._run(batch)

        carry: Optional[_Request] = None
        while True:
            first = carry if carry is not None else requests.get()
            carry = None
            if first is None:
                return
            batch, size, stop = [first], len(first.pixels), False
            while size < max_batch_size:
                try:
                    nxt = requests.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if size + len(nxt.pixels) > max_batch_size:
                    carry = nxt                     # first in line for the next batch
                    break
                batch.append(nxt)
                size += len(nxt.pixels)
            run(batch)
            if stop:
                if carry is not None:
                    run([carry])
                while True:                         # answer anything queued behind the stop
                    try:
                        rest = requests.get_nowait()
                    except queue.Empty:
                        return
                    if rest is not None:
                        run([rest])

    def _run(self, batch: list[_Request]) -> None:
        import torch

        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            pixels = torch.cat([r.pixels for r in live]).to(self.device, dtype=self.model.dtype)
            with torch.inference_mode():
                logits = self.model(pixel_values=pixels).logits
                probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        except BaseException as e:                  # every caller in the batch sees the error
            for r in live:
                r.future.set_exception(e)
            return
        self._stats["batches"] += 1
        self._stats["images"] += len(probs)
        self._stats["largest_batch"] = max(self._stats["largest_batch"], len(probs))
        start = 0
        for r in live:
            r.future.set_result(probs[start:start + len(r.pixels)])
            start += len(r.pixels)


def _default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


# --------------------------------------------------------------------------------------------
# What a model says about itself
# --------------------------------------------------------------------------------------------

def model_info(model_dir_or_id: str | os.PathLike, revision: Optional[str] = None,
               token: Optional[str] = None) -> dict[str, Any]:
    """What a model folder (or Hub repo) says about itself; any field it does not say is omitted.

    Keys: source, dataset, class_names, num_classes, test_accuracy, test_f1, test_loss,
    test_num_samples, image_size, num_channels, model_type, architecture (timm models: 'timm/NAME'),
    num_parameters, hardware, train_seconds, epochs_trained, temperature, test_ece, test_ece_uncalibrated
    (a calibrated model), mean_corruption_accuracy and worst_corruption (--robustness_report), hub_model_id (a local run that names its Hub repo). Read from metrics.json,
    data_summary.json, config.json and training_config.json; never raises.
    """
    hub_kwargs = {"revision": revision, "token": token}
    source = os.fspath(model_dir_or_id)
    info: dict[str, Any] = {"source": source}
    metrics = read_json(source, METRICS, **hub_kwargs) or {}
    summary = read_json(source, DATA_SUMMARY, **hub_kwargs) or {}
    config = read_json(source, CONFIG, **hub_kwargs) or {}
    metrics = metrics if isinstance(metrics, dict) else {}
    summary = summary if isinstance(summary, dict) else {}
    config = config if isinstance(config, dict) else {}

    dataset = summary.get("dataset") or summary.get("dataset_name")
    if dataset:
        info["dataset"] = str(dataset)
    classes = summary.get("class_names")
    if not classes and isinstance(config.get("id2label"), dict):
        id2label = config["id2label"]
        try:
            classes = [id2label[k] for k in sorted(id2label, key=lambda k: int(k))]
        except (TypeError, ValueError):
            classes = list(id2label.values())
    if not classes and isinstance(config.get("label_names"), list):      # timm models (TimmWrapper)
        classes = config["label_names"]
    if classes:
        info["class_names"] = [str(c) for c in classes]
        info["num_classes"] = len(classes)
    for key in ("test_accuracy", "test_f1", "test_loss", "test_num_samples", "num_parameters", "hardware",
                "train_seconds", "epochs_trained", "temperature", "test_ece", "test_ece_uncalibrated",
                "mean_corruption_accuracy", "worst_corruption"):
        value = metrics.get(key)
        if value is not None:
            info[key] = value
    timm_cfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    timm_input = timm_cfg.get("input_size")                                # timm models: [3, H, W]
    image_size = summary.get("image_size") or config.get("image_size") or (timm_input[-1] if timm_input else None)
    if image_size:
        info["image_size"] = image_size
    channels = summary.get("num_channels") or config.get("num_channels")
    if channels:
        info["num_channels"] = channels
    splits = summary.get("splits")
    if isinstance(splits, dict):
        rows = {name: s.get("rows") for name, s in splits.items() if isinstance(s, dict) and s.get("rows") is not None}
        if rows:
            info["split_rows"] = rows
    if config.get("model_type"):
        info["model_type"] = str(config["model_type"])
    if config.get("model_type") == "timm_wrapper" and config.get("architecture"):
        info["architecture"] = f"timm/{config['architecture']}"
    training = read_json(source, TRAINING_CONFIG) if is_local_model(source) else None
    if isinstance(training, dict) and training.get("hub_model_id"):     # where a local run was pushed
        info["hub_model_id"] = str(training["hub_model_id"])
    return info


# --------------------------------------------------------------------------------------------
# Command line: what `predict` (batch_inference) and `explain` (interpretation) share
# --------------------------------------------------------------------------------------------

def add_model_arguments(parser, nargs: str = "+") -> None:
    """IMAGE... (files, folders, glob patterns), --model and --device: what `predict` and `explain` share."""
    parser.add_argument("images", nargs=nargs, metavar="IMAGE",
                        help="image files, folders (searched recursively) or quoted glob patterns such as 'photos/*.jpg'")
    parser.add_argument("--model", default=None,
                        help="model folder or Hub id; default: the MODEL_ID environment variable, else the newest "
                             "finished run under outputs/")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def expand_image_paths(items: Sequence[str]) -> list[str]:
    """Each argument as image paths: a folder gives its image files (recursively, sorted), a glob pattern its
    matches, anything else itself (a missing file is then reported where it is read). Raises FileNotFoundError
    for a folder without images or a pattern that matches nothing."""
    import glob

    from .images import IMAGE_SUFFIXES

    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no image files in the folder {item} (looked for "
                                        f"{', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif glob.has_magic(item) and not os.path.exists(item):
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                raise FileNotFoundError(f"no file matches {item}")
            paths += found
        else:
            paths.append(item)
    return paths


def open_predictor(args) -> Optional[Predictor]:
    """The Predictor for `--model` (else MODEL_ID, else the newest run under outputs/), or None after printing why
    there is none on stderr."""
    import sys

    model = args.model or os.environ.get("MODEL_ID") or find_latest_model("outputs")
    if not model:
        print("error: no model: pass --model FOLDER_OR_HUB_ID, set MODEL_ID, or train one into outputs/ "
              "(`make train`)", file=sys.stderr)
        return None
    try:
        return Predictor(model, device=args.device)
    except Exception as e:  # noqa: BLE001 - one readable line rather than a traceback
        print(f"error: could not load the model {model}: " + " ".join(f"{type(e).__name__}: {e}".split()),
              file=sys.stderr)
        return None
