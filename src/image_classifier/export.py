"""Export: a trained model folder as ONNX, checked against PyTorch and timed, optionally quantized to int8.

    python -m image_classifier export --model outputs/cifar10 --format onnx [--int8] [--num_images 2000]

`DIR/model.onnx` takes what the saved processor produces (`pixel_values`, float32 (B, C, S, S), normalised) and
gives `logits` (B, K); the batch axis is dynamic. It is written with torch's dynamo exporter from an example batch
of 2 (a batch of 1 could be specialised into the graph, as timm's `utils/onnx.py` warns), then run in ONNX Runtime
on the run's own test images: the largest logit difference from PyTorch and the top-1 agreement are printed, with
both runtimes' speed on this CPU. `--int8` adds `DIR/model.int8.onnx`: ONNX Runtime's static quantization (QDQ,
per-channel weights with `reduce_range`, activations calibrated on training images), with its test accuracy
against float32's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["ONNX_FILE", "INT8_FILE", "export_onnx", "quantize_int8", "onnx_session", "parity", "throughput",
           "export_and_check", "add_export_command", "export_command"]

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TIMED_BATCH = 64            # images per call when timing throughput
CALIBRATION_IMAGES = 512    # training images that set the int8 activation ranges


class _Logits(nn.Module):
    """model(pixel_values).logits as a plain tensor: the graph ONNX holds."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def export_onnx(model: nn.Module, path: Path, num_channels: int, image_size: int) -> None:
    """Write `model` (eval mode, float32, on the CPU) as ONNX at `path` (atomically): input `pixel_values`
    (batch, C, S, S) with a dynamic batch axis, output `logits` (batch, K)."""
    from .files import atomic_path

    example = torch.zeros(2, num_channels, image_size, image_size)     # 2, not 1: keep the batch axis symbolic
    batch = torch.export.Dim("batch", min=1, max=65536)
    with atomic_path(path) as tmp:
        program = torch.onnx.export(_Logits(model).eval(), (example,), dynamo=True, input_names=["pixel_values"],
                                    output_names=["logits"], dynamic_shapes={"pixel_values": {0: batch}},
                                    verbose=False)
        program.save(str(tmp))


def onnx_session(path: Path, threads: Optional[int] = None):
    """An ONNX Runtime CPU session for `path` (`threads`: intra-op threads, default torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_session(session) -> Callable[[np.ndarray], np.ndarray]:
    return lambda pixels: session.run(["logits"], {"pixel_values": pixels})[0]


def _run_torch(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(pixel_values=torch.from_numpy(pixels)).logits.numpy()
    return run


def _batched(run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch: int = TIMED_BATCH) -> np.ndarray:
    return np.concatenate([run(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def parity(model: nn.Module, session, pixels: np.ndarray) -> dict[str, float]:
    """PyTorch against ONNX Runtime on `pixels` (N, C, S, S): the largest absolute logit difference and the
    fraction of images whose top class agrees."""
    ours, theirs = _batched(_run_torch(model), pixels), _batched(_run_session(session), pixels)
    return {"max_abs_logit_difference": float(np.abs(ours - theirs).max()),
            "top1_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean())}


def throughput(run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, seconds: float = 3.0) -> dict[str, float]:
    """Images/s at batch TIMED_BATCH and milliseconds per single image, each the best of repeated calls for about
    `seconds` after one warm-up call."""
    out = {}
    for name, batch in (("images_per_second", pixels[:TIMED_BATCH]), ("ms_per_image_at_batch_1", pixels[:1])):
        run(batch)
        best, deadline = float("inf"), time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            run(batch)
            best = min(best, time.perf_counter() - started)
        out[name] = round(len(batch) / best, 1) if name == "images_per_second" else round(1000 * best, 3)
    return out


@dataclass
class _Calibration:
    """onnxruntime.quantization's CalibrationDataReader over normalised training images, in batches of 32."""

    pixels: np.ndarray
    at: int = 0

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self.at >= len(self.pixels):
            return None
        self.at += 32
        return {"pixel_values": self.pixels[self.at - 32:self.at]}

    def rewind(self) -> None:
        self.at = 0


def quantize_int8(source: Path, path: Path, calibration: np.ndarray) -> None:
    """Static int8 quantization of the ONNX model `source` into `path` (atomically): QDQ format, weights per
    output channel with `reduce_range` (7-bit: plain per-channel int8 lost 5 accuracy points on this CPU, whose
    AVX2/AVX-512 int8 products can saturate), activation ranges from `calibration` (N, C, S, S)."""
    from .files import atomic_path

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)        # a warning per BatchNorm scale, which is quantized per tensor instead
    try:
        with atomic_path(path) as tmp:
            _quantize(source, tmp, calibration)
    finally:
        root.setLevel(level)


def _quantize(source: Path, tmp: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(tmp), skip_symbolic_shape=True)    # folded constants, ONNX shapes
    quantize_static(str(tmp), str(tmp), _Calibration(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def add_export_command(subparsers) -> None:
    """Add the `export` sub-command (see `image_classifier.__main__`)."""
    parser = subparsers.add_parser(
        "export", help="export a trained model to ONNX, check it against PyTorch and time it",
        description="Write MODEL/model.onnx (dynamic batch axis; input: the saved processor's pixel_values), check "
                    "it against PyTorch on the run's test images (largest logit difference, top-1 agreement) and "
                    "time ONNX Runtime against PyTorch on this CPU. --int8 also writes MODEL/model.int8.onnx "
                    "(static quantization) and prints its accuracy cost on the test split.")
    parser.add_argument("--model", required=True, help="a model folder a training run wrote")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    parser.add_argument("--int8", action="store_true", help="also quantize to int8 and measure what it costs")
    parser.add_argument("--num_images", type=int, default=None,
                        help="test images for the parity check and the accuracies (default: all)")
    parser.set_defaults(run=export_command)


def _test_pixels(run, num_images: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """The run's test split as the exported graph takes it: normalised float32 (N, C, S, S), and the labels."""
    from .data import decoded_images

    images, labels = decoded_images(run.data.eval_view("test"), num_images)
    return run.normalize(images).float().contiguous().numpy(), labels


def export_and_check(folder: Path, num_images: Optional[int] = None, int8: bool = False) -> dict[str, Any]:
    """Export the model folder `folder` to ONNX (and int8), check it against PyTorch on the run's test images and
    time both runtimes; print each figure and return them all."""
    import copy

    from .evaluation import load_saved_run, match_classes

    run = load_saved_run(str(folder))
    pixels, labels = _test_pixels(run, num_images)
    labels = match_classes(run.class_names, run.data.class_names)[labels]
    exported = copy.deepcopy(run.model).to(memory_format=torch.contiguous_format)    # plain strides in the graph
    started = time.perf_counter()
    export_onnx(exported, folder / ONNX_FILE, pixels.shape[1], pixels.shape[-1])
    report: dict[str, Any] = {"export_seconds": round(time.perf_counter() - started, 1), "num_images": len(pixels),
                              "megabytes": round((folder / ONNX_FILE).stat().st_size / 2**20, 2)}
    print(f"wrote {folder / ONNX_FILE} in {report['export_seconds']} s ({report['megabytes']} MiB)")
    session = onnx_session(folder / ONNX_FILE)
    report["parity"] = parity(run.model, session, pixels)
    print(f"parity on {len(pixels):,} test images: max |logit difference| "
          f"{report['parity']['max_abs_logit_difference']:.2e}, top-1 agreement "
          f"{100 * report['parity']['top1_agreement']:.2f} %")
    runners = {"pytorch": _run_torch(run.model), "onnxruntime": _run_session(session)}
    if int8:
        train = run.data.eval_view("train")
        calibration = run.normalize(train.images_at(range(min(len(train), CALIBRATION_IMAGES)))).float().numpy()
        quantize_int8(folder / ONNX_FILE, folder / INT8_FILE, calibration)
        runners["onnxruntime int8"] = _run_session(onnx_session(folder / INT8_FILE))
    for name, run_fn in runners.items():
        report[name] = {**throughput(run_fn, pixels),
                        "test_accuracy": float((_batched(run_fn, pixels).argmax(1) == labels).mean())}
        print(f"{name:17s} test accuracy {100 * report[name]['test_accuracy']:.2f} %  "
              f"{report[name]['images_per_second']:9,.0f} images/s at batch {TIMED_BATCH}  "
              f"{report[name]['ms_per_image_at_batch_1']:7.2f} ms at batch 1  ({torch.get_num_threads()} threads)")
    return report


def export_command(args) -> int:
    """Run `export` for parsed arguments; return the exit status."""
    export_and_check(Path(args.model), args.num_images, args.int8)
    return 0
