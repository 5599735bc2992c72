"""Look at the data before training: data_summary.json, a sample grid, the class distribution and an
augmentation preview, and a printed summary. Written by every run (and alone with --explore_only)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from . import plots
from .augment import BatchAugment, describe_augmentation
from .config import DataArguments
from .data import ImageData
from .files import write_json
from .model_folder import DATA_SUMMARY, plot_file

__all__ = ["explore"]


def explore(data: ImageData, args: DataArguments, output_dir) -> dict:
    """Write OUT/data_summary.json and OUT/plots/{samples,class_distribution,augmentation}.png; print a summary."""
    out = Path(output_dir)
    summary = dict(data.summary)
    streaming = data.path == "streaming"
    summary["augmentation"] = describe_augmentation(args, data.class_names, (data.image_size, data.crop_pct)
                                                    if streaming else None)
    write_json(out / DATA_SUMMARY, summary)

    train = data.eval_view("train")
    positions = _sample_positions(train.labels, len(data.class_names))
    plots.plot_samples(train.images_at(positions), train.labels[positions].tolist(), data.class_names,
                       plot_file(out, "samples"))
    counts = {s: info["class_counts"] for s, info in summary["splits"].items()}
    plots.plot_class_distribution(counts, plot_file(out, "class_distribution"))
    original = train.images_at([0])[0]
    # Random flips here even under --flip_schedule alternate: the preview is one epoch's worth of draws.
    augment = BatchAugment(dataclasses.replace(args, flip_schedule="random"), data.class_names, data.mean, data.std,
                           per_sample=streaming)
    with torch.random.fork_rng(devices=[]):          # the preview must not shift the training randomness
        torch.manual_seed(0)
        # streaming: 11 draws of the loader's per-image transforms (random-resized crops, flips), then the batch's
        views = (torch.stack([data.tensors["train"][0][0] for _ in range(11)]) if streaming
                 else original.unsqueeze(0).repeat(11, 1, 1, 1))
        augmented = augment.augment(views)
    plots.plot_augmentation(original, augmented.clamp(0, 1), plot_file(out, "augmentation"))

    print(_format_summary(summary))
    return summary


def _sample_positions(labels: torch.Tensor, num_classes: int, seed: int = 0) -> list[int]:
    """A few train images per class (up to 8 each, about 64 in all); 64 at random for many classes."""
    rng = np.random.default_rng(seed)
    labels = labels.numpy()
    if num_classes > 64:
        return sorted(rng.choice(len(labels), size=min(64, len(labels)), replace=False).tolist())
    per_class = max(1, min(8, 64 // num_classes))
    positions: list[int] = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        positions.extend(rng.permutation(rows)[:per_class].tolist())
    return positions


def _format_summary(summary: dict) -> str:
    splits = " / ".join(f"{s} {info['rows']:,}" for s, info in summary["splits"].items())
    names = ", ".join(summary["class_names"][:10]) + (", ..." if summary["num_classes"] > 10 else "")
    modes = ", ".join(f"{m} {n:,}" for m, n in summary["image_modes"].items())
    sizes = ", ".join(f"{s} {n:,}" for s, n in list(summary["image_sizes"].items())[:3])
    lines = [
        f"Dataset {summary['dataset']} ({summary['dataset_resolved']}; {summary['source']}): "
        f"columns {summary['image_column']!r} / {summary['label_column']!r}",
        f"  {summary['num_classes']} classes: {names}",
        f"  splits: {splits}; train imbalance max/min {summary['imbalance_ratio']}",
        f"  images: {sizes}; modes: {modes}; skipped {_skipped(summary['skipped_images']['count'])}",
        f"  model input: {summary['num_channels']}x{summary['image_size']}x{summary['image_size']} "
        f"({summary['data_path']} path); "
        f"mean {summary['mean']}, std {summary['std']}",
        f"  augmentation: {'; '.join(summary.get('augmentation', [])) or 'none'}",
    ]
    return "\n".join(lines)


def _skipped(count) -> str:
    """The count of undecodable images; the streaming path counts them as it reads (None here)."""
    return "(counted as images are read: streaming path)" if count is None else str(count)
