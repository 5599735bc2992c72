"""Robustness: accuracy on the test split under common corruptions, CIFAR-10-C style (Hendrycks & Dietterich, 2019).

Each corruption has five severities with the constants of the CIFAR-10-C generator (hendrycks/robustness,
`make_cifar_c.py`), written here with numpy, OpenCV and Pillow and applied on the fly to the images as the model
sees them (uint8 (N, C, S, S)); spatial constants (blur radii, fog scale) are for 32 px and scale with S / 32.
Every (corruption, severity) draws from its own seeded generator, so a report is reproducible. Frost, snow,
spatter, glass and elastic blur are left out (frost needs the original photos of frost; the others are slow).

Reference (RobustBench's standard WRN-28-10 on CIFAR-10-C): 94.78 % clean, 73.46 % mean over 15 corruptions x 5
severities (86.9 % at severity 1, 56.5 % at 5).
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "robustness_report", "measure_robustness", "summarize", "describe",
           "add_robustness_command", "robustness_command"]

SEVERITIES = (1, 2, 3, 4, 5)

# name -> (function(x float (N, S, S, C) in [0, 1], constant, rng, scale) -> same, constants for severities 1-5)
Corruption = Callable[[np.ndarray, Any, np.random.Generator, float], np.ndarray]


def _gaussian_noise(x, sigma, rng, scale):
    return x + rng.normal(0.0, sigma, x.shape)


def _shot_noise(x, photons, rng, scale):
    return rng.poisson(x * photons) / photons


def _impulse_noise(x, amount, rng, scale):
    """Salt and pepper: each value set to 0 or 1 with probability `amount` (half each)."""
    hit = rng.random(x.shape)
    x = x.copy()
    x[hit < amount / 2] = 0.0
    x[(hit >= amount / 2) & (hit < amount)] = 1.0
    return x


def _speckle_noise(x, sigma, rng, scale):
    return x + x * rng.normal(0.0, sigma, x.shape)


def _filter_each(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    import cv2

    return np.stack([cv2.filter2D(image.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
                     .reshape(image.shape) for image in x])


def _gaussian_blur(x, sigma, rng, scale):
    import cv2

    sigma = sigma * scale
    return np.stack([cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma).reshape(image.shape) for image in x])


def _defocus_blur(x, radius_and_alias, rng, scale):
    """A disk of the given radius (px), softened by a Gaussian of sigma `alias`."""
    import cv2

    radius, alias = radius_and_alias[0] * scale, radius_and_alias[1]
    half = max(8, int(np.ceil(radius)))
    grid = np.arange(-half, half + 1)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius ** 2).astype(np.float32)
    kernel = cv2.GaussianBlur(disk / disk.sum(), (3, 3) if radius <= 8 else (5, 5), alias)
    return _filter_each(x, kernel)


def _motion_blur(x, radius_and_sigma, rng, scale):
    """A one-sided streak `radius` px long with Gaussian weights of `sigma`, at a random angle in [-45, 45] degrees
    per image (ImageMagick's -motion-blur, which the reference uses)."""
    radius, sigma = radius_and_sigma[0] * scale, radius_and_sigma[1] * scale
    steps = np.arange(0, int(np.ceil(radius)) + 1)
    weights = np.exp(-steps ** 2 / (2 * sigma ** 2))
    out = []
    for image in x:
        angle = np.deg2rad(rng.uniform(-45, 45))
        size = 2 * len(steps) + 1
        kernel = np.zeros((size, size), np.float32)
        for step, weight in zip(steps, weights):
            kernel[int(round(len(steps) - step * np.sin(angle))), int(round(len(steps) + step * np.cos(angle)))] += weight
        out.append(_filter_each(image[None], kernel / kernel.sum())[0])
    return np.stack(out)


def _plasma(n: int, size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """n diamond-square plasma fractals (n, size, size) in [0, 1]; size a power of two."""
    maps = np.zeros((n, size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = maps[:, 0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        maps[:, half:size:step, half:size:step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centres = maps[:, half:size:step, half:size:step]
        corners = maps[:, 0:size:step, 0:size:step]
        across = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, 0:size:step, half:size:step] = across / 4 + wibble * rng.uniform(-wibble, wibble, across.shape)
        down = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half:size:step, 0:size:step] = down / 4 + wibble * rng.uniform(-wibble, wibble, down.shape)
        step //= 2
        wibble /= decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def _fog(x, strength_and_decay, rng, scale):
    strength, decay = strength_and_decay
    n, height, width = x.shape[:3]
    size = 1 << int(np.ceil(np.log2(max(height, width, 2))))
    fog = _plasma(n, size, decay, rng)[:, :height, :width, None]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    return (x + strength * fog) * peak / (peak + strength)


def _value(x):
    return x.max(axis=-1, keepdims=True)


def _brightness(x, shift, rng, scale):
    """HSV value + shift, hue and saturation kept: each pixel scaled by its new value over its old one."""
    value = _value(x)
    brighter = np.clip(value + shift, 0, 1)
    return np.where(value > 0, x * brighter / np.maximum(value, 1e-12), brighter)


def _contrast(x, factor, rng, scale):
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * factor + means


def _saturate(x, factor_and_shift, rng, scale):
    """HSV saturation x factor + shift, hue and value kept (gray pixels take hue 0, red, as skimage gives them)."""
    if x.shape[-1] != 3:
        return x
    factor, shift = factor_and_shift
    value = _value(x)
    saturation = np.where(value > 0, (value - x.min(axis=-1, keepdims=True)) / np.maximum(value, 1e-12), 0.0)
    target = np.clip(saturation * factor + shift, 0, 1)
    coloured = value - (value - x) * target / np.maximum(saturation, 1e-12)
    gray = np.concatenate([value, value * (1 - target), value * (1 - target)], axis=-1)
    return np.where(saturation > 0, coloured, gray)


def _through_pil(x: np.ndarray, change: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    out = []
    for image in (x * 255).round().astype(np.uint8):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        out.append(np.asarray(change(pil), np.float32).reshape(image.shape) / 255)
    return np.stack(out)


def _jpeg(x, quality, rng, scale):
    def compress(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode)
    return _through_pil(x, compress)


def _pixelate(x, factor, rng, scale):
    def pixelate(image: Image.Image) -> Image.Image:
        small = image.resize((int(image.width * factor), int(image.height * factor)), Image.BOX)
        return small.resize(image.size, Image.BOX)
    return _through_pil(x, pixelate)


# name -> (function, the CIFAR-10-C constants of severities 1-5). Blur radii and sigmas are pixels at 32 px.
CORRUPTIONS: dict[str, tuple[Corruption, tuple]] = {
    "gaussian_noise": (_gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": (_shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": (_impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "speckle_noise": (_speckle_noise, (0.06, 0.1, 0.12, 0.16, 0.2)),
    "gaussian_blur": (_gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),
    "defocus_blur": (_defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    "motion_blur": (_motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
    "fog": (_fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    "brightness": (_brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "contrast": (_contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "saturate": (_saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))),
    "jpeg_compression": (_jpeg, (80, 65, 58, 50, 40)),
    "pixelate": (_pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """uint8 images (N, C, S, S) under corruption `name` at `severity` (1-5), seeded by (seed, name, severity)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"no corruption {name!r}; one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1-5, got {severity}")
    function, constants = CORRUPTIONS[name]
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity])
    x = images.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0             # (N, S, S, C)
    out = function(x, constants[severity - 1], rng, images.shape[-1] / 32)
    return torch.from_numpy((np.clip(out, 0, 1) * 255).round().astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def robustness_report(predict: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor, labels: np.ndarray,
                      seed: int = 0, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Accuracy of `predict` (uint8 (N, C, S, S) -> predicted class ids (N,)) on the clean images and under every
    corruption at every severity: {"clean_accuracy", "num_images", "accuracy": {name: [acc per severity]}} plus
    the summary of `summarize`."""
    labels = np.asarray(labels)
    report: dict[str, Any] = {"clean_accuracy": float((predict(images) == labels).mean()), "num_images": len(labels),
                              "seed": seed, "accuracy": {}}
    for name in CORRUPTIONS:
        report["accuracy"][name] = [float((predict(corrupt(images, name, s, seed)) == labels).mean())
                                    for s in SEVERITIES]
        progress(f"{name}: " + " ".join(f"{100 * a:.1f}" for a in report["accuracy"][name]))
    return {**report, **summarize(report)}


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Mean corruption accuracy (all corruptions and severities), the mean per severity, and the worst corruption
    (lowest mean over its severities)."""
    table = np.array(list(report["accuracy"].values()))           # (corruptions, severities)
    means = table.mean(axis=1)
    worst = int(means.argmin())
    return {"mean_corruption_accuracy": float(table.mean()),
            "mean_accuracy_per_severity": [float(v) for v in table.mean(axis=0)],
            "worst_corruption": {"name": list(report["accuracy"])[worst], "mean_accuracy": float(means[worst])}}


def measure_robustness(model: torch.nn.Module, normalize, view, config, accelerator,
                       num_images: Optional[int] = None) -> dict[str, Any]:
    """`robustness_report` on the first --robustness_samples images of a test split's evaluation view (uint8, as the
    model sees them), scored in float32 like the evaluation (`engine.predict`). Every process computes it (the
    predictions are gathered); it prints the table."""
    from . import engine
    from .data import decoded_images

    images, labels = decoded_images(view, num_images or config.train.robustness_samples)

    def predict(batch: torch.Tensor) -> np.ndarray:
        dataset = torch.utils.data.TensorDataset(batch, torch.zeros(len(batch), dtype=torch.int64))
        loader = accelerator.prepare(engine.build_loader(dataset, config.train.per_device_eval_batch_size, False, 0,
                                                         persistent=False))
        return engine.predict(model, loader, normalize, accelerator, mixed_precision=False)[0].argmax(axis=1)

    started = time.perf_counter()
    report = robustness_report(predict, images, labels, seed=config.train.seed)
    report["seconds"] = round(time.perf_counter() - started, 1)
    accelerator.print(describe(report))
    return report


def describe(report: dict[str, Any]) -> str:
    """The report as a table (accuracy %, corruptions by severity) and its summary lines."""
    lines = [f"{'corruption':18s}" + "".join(f"{s:>7d}" for s in SEVERITIES) + "   mean"]
    for name, accuracies in report["accuracy"].items():
        lines.append(f"{name:18s}" + "".join(f"{100 * a:7.1f}" for a in accuracies)
                     + f"{100 * np.mean(accuracies):7.1f}")
    per_severity = " / ".join(f"{100 * a:.1f}" for a in report["mean_accuracy_per_severity"])
    worst = report["worst_corruption"]
    lines += [f"robustness on {report['num_images']:,} test images: clean {100 * report['clean_accuracy']:.2f} %, "
              f"mean under {len(report['accuracy'])} corruptions x 5 severities "
              f"{100 * report['mean_corruption_accuracy']:.2f} % (severity 1-5: {per_severity}); worst: "
              f"{worst['name']} {100 * worst['mean_accuracy']:.1f} %"
              + (f"; {report['seconds']:.0f} s" if "seconds" in report else "")]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line: `python -m image_classifier robustness --model DIR [--num_images N] [--output_dir DIR]`
# --------------------------------------------------------------------------------------------

def add_robustness_command(subparsers) -> None:
    """Add the `robustness` sub-command (see `image_classifier.__main__`)."""
    parser = subparsers.add_parser(
        "robustness", help="score a trained model under common corruptions (CIFAR-10-C style)",
        description="Score a trained model folder on its run's test split (from its training_config.json; or "
                    "--dataset) under 13 corruptions at 5 severities, and print the table. With --output_dir, "
                    "also write robustness.json and robustness.png there.")
    parser.add_argument("--model", required=True, help="a model folder a training run wrote")
    parser.add_argument("--dataset", default=None, help="score on this dataset's test split instead of the run's")
    parser.add_argument("--num_images", type=int, default=None,
                        help="test images scored (the first ones; default: the run's --robustness_samples, 2000)")
    parser.add_argument("--output_dir", default=None, help="write robustness.json and robustness.png here")
    parser.set_defaults(run=robustness_command)


def robustness_command(args) -> int:
    """Run `robustness` for parsed arguments; return the exit status."""
    from pathlib import Path

    from . import model_folder, plots
    from .evaluation import load_saved_run
    from .files import write_json

    run = load_saved_run(args.model, args.dataset)
    report = measure_robustness(run.model, run.normalize, run.data.eval_view("test"), run.config, run.accelerator,
                                args.num_images)
    if args.output_dir and run.accelerator.is_main_process:
        out = Path(args.output_dir)
        write_json(out / model_folder.ROBUSTNESS, report)
        plots.plot_robustness(report, out / "robustness.png")
    return 0
