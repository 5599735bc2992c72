"""Inference: load a trained model folder (or Hub id) once and classify any image.

`load_image` turns whatever a user hands over (a path, bytes, a file object, a PIL image, a NumPy
array) into an RGB PIL image the way a person expects: EXIF rotation applied, transparency
composited on white, 16-bit images scaled rather than clipped, very large photos shrunk early,
decompression bombs and non-images refused with a readable `ImageError`.

`Predictor` holds the model and the image processor saved beside it (the same resize, rescale
and normalisation as training) and answers `predict` / `predict_batch` from any number of threads.
Requests that arrive while the model is busy are stacked into one forward pass (up to
`max_batch_size` images) by a single worker thread, which is also the only thread that touches
the model.

`find_latest_model` and `model_info` find a finished run and read what it says about itself
(dataset, classes, test accuracy and F1), for the app's information panel.
"""

from __future__ import annotations

import io
import json
import os
import queue
import threading
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, BinaryIO, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageError",
    "load_image",
    "Predictor",
    "find_latest_model",
    "model_info",
    "find_examples",
    "is_local_model",
    "looks_like_local_path",
    "MAX_SIDE",
    "add_predict_command",
    "predict_command",
]

# Longest side an image is shrunk to as soon as it is read. The models look at 32-224 pixel
# squares; 1024 keeps enough detail for any of them and bounds memory and resize time.
MAX_SIDE = 1024

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

# Files a finished run writes that describe it; metrics.json is written last.
_INFO_FILES = ("metrics.json", "data_summary.json", "config.json")


class ImageError(ValueError):
    """The input is not an image this project can read (or is one it refuses to decode)."""


# --------------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------------

def load_image(image: ImageLike, max_side: Optional[int] = MAX_SIDE, max_pixels: Optional[int] = None) -> Image.Image:
    """Return `image` as an RGB PIL image ready for the image processor.

    - EXIF orientation is applied (a phone photo taken upright comes out upright).
    - Transparency (RGBA, LA, PA, palette or RGB/L with a transparent colour) is composited on white.
    - Palette, 1-bit, grayscale, CMYK, YCbCr, LAB and HSV become RGB.
    - 16-bit (I;16*) and 32-bit integer images are scaled to 8 bits over their full range, not clipped;
      float images in [0, 1] are scaled by 255, other float ranges are stretched min..max.
    - Images whose longest side exceeds `max_side` are shrunk (JPEGs already while decoding,
      through `Image.draft`); `max_side=None` keeps the full size.
    - Images with more than `max_pixels` pixels (default: PIL's `Image.MAX_IMAGE_PIXELS`, about
      89 megapixels) are refused before decoding, as decompression bombs.

    Raises `ImageError` (a `ValueError`) with a readable message for anything else.
    """
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    opened_here = False
    if isinstance(image, Image.Image):
        img = image
        _check_pixels(img, limit)
    elif isinstance(image, np.ndarray):
        img = _array_to_image(image)
        _check_pixels(img, limit)
    else:
        img = _open(image, limit)
        opened_here = True
    try:
        if opened_here and max_side and img.format == "JPEG" and max(img.size) > max_side:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below max_side (same mode).
            img.draft(None, _draft_size(img.size, max_side))
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored rather than refuse
            pass
        img = _to_rgb(img)
        if max_side and max(img.size) > max_side:
            img = img.copy() if img is image else img
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(_bomb_message(str(e))) from e
    except (OSError, ValueError, SyntaxError, TypeError, EOFError) as e:
        raise ImageError(f"could not decode the image ({_describe(image)}): {e}") from e
    if img.width < 1 or img.height < 1:
        raise ImageError(f"the image is empty ({img.width}x{img.height} pixels)")
    return img


def _open(source: Any, limit: int) -> Image.Image:
    name = _describe(source)
    if isinstance(source, dict) and "path" in source:      # gradio FileData-like dicts
        source = source["path"]
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("the file is empty, not an image")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no such image file: {path}")
        if path.stat().st_size == 0:
            raise ImageError(f"{path.name} is empty, not an image")
    elif not hasattr(source, "read"):
        raise ImageError(f"cannot read an image from a {type(source).__name__}; pass a path, bytes, "
                         "a file object, a PIL image or a NumPy array")
    try:
        img = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:   # the warning when raised as error
        raise ImageError(_bomb_message(str(e))) from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name} is not an image that can be read; use a PNG, JPEG, WebP, BMP, GIF or TIFF "
                         "file (or another format Pillow reads)") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"could not read {name} as an image: {e}") from e
    _check_pixels(img, limit)
    return img


def _check_pixels(img: Image.Image, limit: Optional[int]) -> None:
    if limit and img.width * img.height > limit:
        raise ImageError(_bomb_message(f"{img.width}x{img.height} = {img.width * img.height:,} pixels, "
                                       f"more than the limit of {limit:,}"))


def _bomb_message(detail: str) -> str:
    return (f"refusing to decode this image: it is too large to be a normal photo and may be a "
            f"decompression bomb ({detail}). Shrink it below {Image.MAX_IMAGE_PIXELS // 1_000_000} "
            f"megapixels and try again.")


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    if isinstance(source, dict) and "path" in source:
        return Path(source["path"]).name
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return Path(name).name
    return "the input"


def _draft_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    scale = max_side / max(w, h)
    return max(1, int(w * scale)), max(1, int(h * scale))


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")


def _to_uint8(array: np.ndarray, mode: str = "") -> np.ndarray:
    """Scale a single-channel or colour array of any numeric type to uint8 without clipping."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if mode.startswith("I;16") or a.dtype == np.uint16:
        return np.round(a.astype(np.float64) / 257.0).astype(np.uint8)    # 65535 -> 255
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    if np.issubdtype(array.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0                                               # floats in [0, 1]
    elif lo >= 0 and hi <= 255:
        scaled = a                                                       # 8-bit values in a wider type
    elif lo >= 0 and hi <= 65535:
        scaled = a / 257.0                                               # 16-bit values (PNG "I")
    else:
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _array_to_image(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)                                        # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {tuple(array.shape)}")
    if a.size == 0:
        raise ImageError(f"the image array is empty (shape {tuple(array.shape)})")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ImageError(f"an image array must hold numbers, not {a.dtype}")
    a = _to_uint8(a)
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[-1] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(a), mode=mode)


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
        return [self._top_k(row, top_k) for row in probs]

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

    def _top_k(self, row: np.ndarray, top_k: Optional[int]) -> list[tuple[str, float]]:
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
# Finding models and reading what they say about themselves
# --------------------------------------------------------------------------------------------

def is_local_model(model_dir_or_id: str | os.PathLike) -> bool:
    """True when the argument names an existing folder (otherwise it is taken as a Hub id)."""
    return Path(model_dir_or_id).expanduser().is_dir()


def looks_like_local_path(name: str | os.PathLike) -> bool:
    """True when `name` cannot be a Hub id ("name" or "owner/name") or names a path under an existing folder.

    So a mistyped local folder fails at once instead of after the Hub client's network retries.
    """
    text = os.fspath(name)
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or os.path.isabs(text):
        return True
    first = text.split("/", 1)[0]
    return "/" in text and Path(first).is_dir()


def find_latest_model(root: str | os.PathLike = "outputs", max_depth: int = 3) -> Optional[Path]:
    """The most recently finished model folder under `root`: one holding metrics.json and config.json.

    "Most recent" is the modification time of metrics.json (written last by a run). Hidden
    folders and checkpoint folders are skipped. Returns None when there is none.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    best: Optional[tuple[float, Path]] = None
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("checkpoints", "plots", "examples")]
        if len(here.parts) - base_depth >= max_depth:
            dirs[:] = []
        if "metrics.json" in files and "config.json" in files:
            mtime = (here / "metrics.json").stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, here)
    return best[1] if best else None


def _read_json_file(model_dir_or_id: str | os.PathLike, filename: str, **hub_kwargs) -> Optional[Any]:
    """A JSON file of a local model folder or a Hub repo; None when missing or unreadable."""
    try:
        if is_local_model(model_dir_or_id):
            path = Path(model_dir_or_id).expanduser() / filename
            if not path.is_file():
                return None
        elif looks_like_local_path(model_dir_or_id):
            return None
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(os.fspath(model_dir_or_id), filename, **hub_kwargs)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except Exception:       # missing file, no network, bad JSON: the field is simply left out
        return None


def model_info(model_dir_or_id: str | os.PathLike, revision: Optional[str] = None,
               token: Optional[str] = None) -> dict[str, Any]:
    """What a model folder (or Hub repo) says about itself; any field it does not say is omitted.

    Keys: source, dataset, class_names, num_classes, test_accuracy, test_f1, test_loss,
    test_num_samples, image_size, num_channels, model_type, architecture (timm models: 'timm/NAME'),
    num_parameters, hardware, train_seconds, epochs_trained, hub_model_id (a local run that names its Hub
    repo). Read from metrics.json, data_summary.json, config.json and training_config.json; never raises.
    """
    hub_kwargs = {"revision": revision, "token": token}
    source = os.fspath(model_dir_or_id)
    info: dict[str, Any] = {"source": source}
    metrics = _read_json_file(source, "metrics.json", **hub_kwargs) or {}
    summary = _read_json_file(source, "data_summary.json", **hub_kwargs) or {}
    config = _read_json_file(source, "config.json", **hub_kwargs) or {}
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
                "train_seconds", "epochs_trained"):
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
    training = _read_json_file(source, "training_config.json") if is_local_model(source) else None
    if isinstance(training, dict) and training.get("hub_model_id"):     # where a local run was pushed
        info["hub_model_id"] = str(training["hub_model_id"])
    return info


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def find_examples(model_dir_or_id: str | os.PathLike, limit: Optional[int] = None,
                  revision: Optional[str] = None, token: Optional[str] = None) -> list[Path]:
    """Example images shipped with a model (its examples/ folder), one per class first; [] when none.

    Files are named `examples/<class>_<i>.png`; the list is interleaved so that the first
    entries cover different classes.
    """
    folder: Optional[Path] = None
    try:
        if is_local_model(model_dir_or_id):
            folder = Path(model_dir_or_id).expanduser() / "examples"
        elif looks_like_local_path(model_dir_or_id):
            return []
        else:
            from huggingface_hub import snapshot_download

            snap = snapshot_download(os.fspath(model_dir_or_id), allow_patterns=["examples/*"], revision=revision,
                                     token=token)
            folder = Path(snap) / "examples"
    except Exception:
        return []
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    by_class: dict[str, list[Path]] = {}
    for p in files:
        cls, sep, idx = p.stem.rpartition("_")
        by_class.setdefault(cls if sep and idx.isdigit() else p.stem, []).append(p)
    ordered: list[Path] = []
    for i in range(max((len(v) for v in by_class.values()), default=0)):
        ordered += [v[i] for v in by_class.values() if i < len(v)]
    return ordered[:limit] if limit else ordered


# --------------------------------------------------------------------------------------------
# Command line: `python -m image_classifier predict IMAGE... [--model M]`
# --------------------------------------------------------------------------------------------

def add_predict_command(subparsers) -> None:
    """Add the `predict` sub-command to an argparse sub-parsers object (see `image_classifier.__main__`)."""
    parser = subparsers.add_parser(
        "predict", help="classify image files with a trained model",
        description="Classify image files with a trained model folder or Hub id and print the top classes of each. "
                    "Files that are not readable images are reported on stderr; the exit status is then 1.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--model", default=None,
                        help="model folder or Hub id; default: the MODEL_ID environment variable, else the newest "
                             "finished run under outputs/")
    parser.add_argument("--top_k", type=int, default=3, help="classes to show per image (default 3)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object per image: {"file", "predictions": [{"label", "score"}]}')
    parser.set_defaults(run=predict_command)


def predict_command(args) -> int:
    """Run `predict` for parsed arguments; return the exit status (0 ok, 1 some file failed, 2 no model)."""
    import sys

    model = args.model or os.environ.get("MODEL_ID") or find_latest_model("outputs")
    if not model:
        print("error: no model: pass --model FOLDER_OR_HUB_ID, set MODEL_ID, or train one into outputs/ "
              "(`make train`)", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(model, device=args.device)
    except Exception as e:  # noqa: BLE001 - one readable line rather than a traceback
        print(f"error: could not load the model {model}: " + " ".join(f"{type(e).__name__}: {e}".split()),
              file=sys.stderr)
        return 2
    status = 0
    with predictor:
        for path in args.images:
            try:
                top = predictor.predict(path, top_k=args.top_k)
            except ImageError as e:
                print(f"error: {path}: {e}", file=sys.stderr)
                status = 1
                continue
            if args.json:
                print(json.dumps({"file": path, "predictions": [{"label": label, "score": round(p, 6)}
                                                                 for label, p in top]}))
            else:
                print(f"{path}\t" + "\t".join(f"{label} {p:.3f}" for label, p in top))
    return status
