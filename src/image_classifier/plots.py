"""Every matplotlib figure of the project, written atomically as PNG.

Images come in as uint8 (N, C, H, W) with C 1 or 3 (or float in [0, 1]); grayscale is drawn gray.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")    # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .files import atomic_path  # noqa: E402

__all__ = ["plot_samples", "plot_class_distribution", "plot_augmentation", "plot_learning_curves",
           "plot_confusion_matrix", "plot_reliability", "plot_robustness", "plot_lr_find", "plot_top_losses", "plot_cam_grid", "plot_picture", "plot_feature_maps"]

DPI = 120


def _save(fig, path: str | os.PathLike) -> None:
    if fig.get_layout_engine() is None:     # figures made with layout="constrained" keep room for their suptitle
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)


def _hwc(image: Any) -> np.ndarray:
    """(C, H, W) uint8 or float [0, 1] → (H, W, 3) or (H, W) float in [0, 1] for imshow."""
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    array = np.clip(array, 0.0, 1.0)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _show(ax, image: Any, title: str = "", fontsize: int = 8) -> None:
    array = _hwc(image)
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")


def _grid(n: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(n, max_cols)
    return max(1, math.ceil(n / max(cols, 1))), max(cols, 1)


def plot_samples(images: Any, labels: Sequence[int], class_names: Sequence[str], path: str | os.PathLike) -> None:
    """A grid of images, each titled with its class name."""
    n = len(labels)
    per_class = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)[1]
    # One row per class when the sample is balanced and small enough; otherwise 8 per row.
    cols = int(per_class[0]) if len(set(per_class)) == 1 and 2 <= per_class[0] <= 12 else 8
    rows, cols = _grid(n, max_cols=cols)
    # constrained layout keeps room for the title above the first row's labels (tight_layout let them overlap)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.55 * rows + 0.3), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        _show(ax, image, class_names[int(label)])
    fig.suptitle(f"{n} sample images", fontsize=10)
    _save(fig, path)


def plot_class_distribution(counts: Mapping[str, Mapping[str, int]], path: str | os.PathLike) -> None:
    """Images per class, one group of bars per class and one colour per split."""
    splits = list(counts)
    classes = list(next(iter(counts.values()), {}))
    k = len(classes)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.45 * k * max(1, len(splits)) / 1.5), 24.0), 4.2))
    width = 0.8 / max(1, len(splits))
    x = np.arange(k)
    for i, split in enumerate(splits):
        values = [counts[split].get(c, 0) for c in classes]
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, values, width, label=f"{split} ({sum(values):,})")
    step = max(1, math.ceil(k / 50))           # thin the labels beyond ~50 classes
    ax.set_xticks(x[::step])
    ax.set_xticklabels(classes[::step], rotation=45 if k > 10 or max(map(len, classes), default=0) > 8 else 0,
                       ha="right" if k > 10 else "center", fontsize=8 if k <= 30 else 6)
    ax.set_ylabel("images")
    ax.set_title("Images per class")
    top = max((v for c in counts.values() for v in c.values()), default=1)
    ax.set_ylim(0, top * 1.2)          # headroom so the legend never covers a bar
    ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(splits)), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_augmentation(original: Any, augmented: Any, path: str | os.PathLike) -> None:
    """The original image first, then K augmented versions of it."""
    images = [original, *list(augmented)]
    rows, cols = _grid(len(images), max_cols=6)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.95 * rows + 0.3), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        _show(ax, image, "original" if i == 0 else f"augmented {i}", fontsize=9)
    fig.suptitle("Training augmentation", fontsize=10)
    _save(fig, path)


def plot_learning_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                         train_loss_note: Optional[str] = None) -> None:
    """Loss and accuracy (train vs validation) per epoch, and the learning rate (per step when recorded).
    `train_loss_note` says how the training loss differs from the validation's (label smoothing, mixing)."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in ((axes[0], "loss", "Cross-entropy loss"), (axes[1], "accuracy", "Accuracy")):
        note = f" ({train_loss_note})" if key == "loss" and train_loss_note else ""
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train" + note)
        ax.plot(epochs, [h[f"eval_{key}"] for h in history], "s-", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    per_step = [lr for h in history for lr in h.get("learning_rates", [])]
    if per_step:   # fractional epochs: epoch e's steps spread over (e-1, e]
        xs = [h["epoch"] - 1 + (i + 1) / len(h["learning_rates"]) for h in history
              for i in range(len(h.get("learning_rates", [])))]
        axes[2].plot(xs, per_step, "-")
    else:
        axes[2].plot(epochs, [h["learning_rate"] for h in history], "o-")
    axes[2].set_title("Learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    # --progressive_resize_epochs: shade the epochs trained on downscaled images (validation runs at full size).
    sides = [h.get("train_image_size") for h in history]
    small = [e for e, side in zip(epochs, sides) if side is not None and side != sides[-1]]
    for ax in axes:
        ax.set_xlim(0 if per_step else min(epochs, default=1) - 0.5, max(epochs, default=1) + 0.5)
        if small:
            ax.axvspan(min(small) - 1, max(small), color="0.9", zorder=0,
                       label=f"trained at {sides[0]}x{sides[0]}" if ax is axes[1] else None)
    if small:
        axes[1].legend()
    _save(fig, path)


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Counts and row-normalised rates side by side (rows: true class, columns: predicted)."""
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(5.0, 0.55 * k), 22.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side))
    for ax, values, title, fmt in ((axes[0], counts, "Counts", "d"), (axes[1], rates, "Row-normalised", ".2f")):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        step = max(1, math.ceil(k / 40))
        ticks = np.arange(k)[::step]
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xticklabels([class_names[i] for i in ticks], rotation=45, ha="right", fontsize=8)
        ax.set_yticklabels([class_names[i] for i in ticks], fontsize=8)
        if k <= 20:
            threshold = values.max() / 2 if values.max() else 1
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7 if k > 10 else 9,
                        color="white" if v > threshold else "black")
    _save(fig, path)


def plot_reliability(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], ece_before: float,
                     ece_after: float, temperature: float, path: str | os.PathLike) -> None:
    """Reliability diagram: accuracy against confidence per bin (`calibration.reliability_bins`), before and after
    temperature scaling, over the diagonal of perfect calibration; beneath, how many predictions each bin holds."""
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(6, 6.4), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="0.5", label="perfectly calibrated")
    for bins, name, colour, marker in ((before, f"before: ECE {100 * ece_before:.2f} %", "tab:red", "s"),
                                       (after, f"after T = {temperature:.3f}: ECE {100 * ece_after:.2f} %", "tab:blue",
                                        "o")):
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker=marker, color=colour, label=name)
        counts.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["count"] for b in bins],
                   width=(1 / 15) * 0.45, color=colour, alpha=0.7, align="edge" if colour == "tab:blue" else "center")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("Reliability on the test split (one view per image, 15 bins)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    counts.set_xlabel("confidence (probability of the predicted class)")
    counts.set_ylabel("images")
    counts.set_yscale("log")
    counts.grid(alpha=0.3)
    _save(fig, path)


def plot_robustness(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Accuracy under each corruption (rows) at each severity (columns), as a heat map with the numbers, titled
    with the clean accuracy and the mean over all corruptions and severities."""
    names = list(report["accuracy"])
    table = 100 * np.array([report["accuracy"][n] for n in names])
    fig, ax = plt.subplots(figsize=(6.5, 0.42 * len(names) + 1.6))
    image = ax.imshow(table, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03, label="accuracy (%)")
    for (i, j), value in np.ndenumerate(table):
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(table.shape[1]))
    ax.set_xticklabels([f"severity {s}" for s in range(1, table.shape[1] + 1)], fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n.replace("_", " ") for n in names], fontsize=8)
    ax.set_title(f"Accuracy under corruptions ({report['num_images']:,} test images): clean "
                 f"{100 * report['clean_accuracy']:.1f} %, mean {100 * report['mean_corruption_accuracy']:.1f} %",
                 fontsize=9)
    _save(fig, path)


def plot_lr_find(rates: Sequence[float], smoothed: Sequence[float], suggestion: float, valley: float,
                 path: str | os.PathLike, title: str = "") -> None:
    """The learning-rate finder: smoothed training loss against the learning rate (log scale), the suggestion
    (the steepest fall) and fastai's valley reading marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(rates, smoothed, "-")
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggestion (steepest fall): {suggestion:.3g}")
    ax.axvline(valley, color="tab:gray", linestyle=":", label=f"fastai's valley: {valley:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    low, high = min(smoothed), smoothed[0]
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), max(high, low) + 0.6 * (high - low + 1e-9))
    ax.set_title("Learning-rate finder" + (f": {title}" if title else ""), fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_top_losses(images: Sequence[Any], overlays: Sequence[np.ndarray], titles: Sequence[str], total_wrong: int,
                    total: int, path: str | os.PathLike) -> None:
    """The test images the model is most confidently wrong about, each beside its Grad-CAM overlay (for the
    predicted class), highest loss first. images: (C, H, W); overlays: uint8 (H, W, 3); titles: one per case."""
    if len(images) == 0:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, f"No misclassified images among {total:,}", ha="center", va="center", fontsize=12)
        ax.axis("off")
        _save(fig, path)
        return
    rows, cases = _grid(len(images), max_cols=4)
    fig, axes = plt.subplots(rows, 2 * cases, figsize=(2.3 * 2 * cases, 2.9 * rows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, overlay, title) in enumerate(zip(images, overlays, titles)):
        row, col = divmod(i, cases)
        _show(axes[row, 2 * col], image, title, fontsize=8)
        _show(axes[row, 2 * col + 1], overlay.transpose(2, 0, 1), "Grad-CAM", fontsize=8)
    fig.suptitle(f"Top losses: the most confident mistakes ({total_wrong:,} of {total:,} test images misclassified)",
                 fontsize=11)
    _save(fig, path)


def plot_cam_grid(rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]], columns: int,
                  path: str | os.PathLike, note: str = "") -> None:
    """Grad-CAM overlays per class: one row per (class name, [(overlay uint8 (H, W, 3), title)]), up to `columns`
    cells each (correct predictions first, then mistakes)."""
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, columns, figsize=(1.75 * columns + 1.2, 1.95 * n + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for r, (class_name, cells) in enumerate(rows):
        axes[r, 0].text(-0.12, 0.5, class_name, transform=axes[r, 0].transAxes, ha="right", va="center",
                        fontsize=9, fontweight="bold")
        for c, (overlay, title) in enumerate(cells[:columns]):
            _show(axes[r, c], overlay.transpose(2, 0, 1), title, fontsize=7)
    fig.suptitle("Grad-CAM of the predicted class: correct (✓) and wrong (✗) test predictions per true class"
                 + (f"\n{note}" if note else ""), fontsize=10)
    _save(fig, path)


def plot_picture(picture: np.ndarray, title: str, path: str | os.PathLike, width: float = 6.0) -> None:
    """One uint8 (H, W, 3) picture (a filter or feature-map grid) under a title."""
    height, wide = picture.shape[:2]
    fig, ax = plt.subplots(figsize=(width, max(1.5, width * height / max(wide, 1) + 0.5)))
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    _save(fig, path)


def plot_feature_maps(stages: Sequence[tuple[np.ndarray, str]], path: str | os.PathLike, title: str = "") -> None:
    """Each stage's channel grid (uint8 (H, W, 3)) under its caption, one stage per row."""
    fig, axes = plt.subplots(len(stages), 1, figsize=(7, 2.4 * len(stages) + 0.4), squeeze=False)
    for ax, (grid, caption) in zip(axes[:, 0], stages):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
