"""Evaluation of a saved model: score a model folder (or its Hub id) on a split of any dataset the trainer accepts.

    python -m image_classifier evaluate --model outputs/cifar10 [--dataset D] [--split test] [--tta none] --output_dir OUT

The model folder's training_config.json says how its run decoded and split the data (image size, channels,
split fractions, seed, subsets), so the run's own test split comes back image for image; `--dataset` swaps in
another dataset decoded the same way. Class names are matched by name (any order); a dataset whose classes are
not the model's is refused with both lists. OUT/metrics.json has the keys a run writes for that split
(`test_accuracy`, `test_f1`, ... for `--split test`, `eval_...` for validation), beside the confusion matrix and
top-losses plots. `load_saved_run` is the one way a finished run is reloaded with its data (robustness, bench).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = ["SavedRun", "load_saved_run", "match_classes", "evaluate_saved", "compare_with_run", "write_evaluation",
           "add_evaluate_command", "evaluate_command", "PREFIXES"]

PREFIXES = {"test": "test", "validation": "eval", "train": "train"}     # metrics.json key prefix of each split


@dataclass
class SavedRun:
    """A finished model and the data of its run, ready to score."""

    source: str                        # folder or Hub id
    config: Any                        # config.Config: the run's, with --dataset swapped in when given
    data: Any                          # data.ImageData
    model: torch.nn.Module             # in eval mode, prepared by `accelerator`
    normalize: Any                     # augment.Normalize: the saved processor's mean and std
    accelerator: Any
    class_names: list[str]             # the model's, logit i = class_names[i]


def load_saved_run(source: str, dataset: Optional[str] = None, **hub_kwargs) -> SavedRun:
    """The model folder (or Hub id) `source`, its processor's normalisation and its run's data (`dataset`
    instead, decoded the same way). Raises FileNotFoundError when `source` has no training_config.json."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from . import model_folder
    from .augment import Normalize
    from .config import parse_config
    from .data import load_data
    from .engine import build_accelerator, plain_model
    from .models import class_names_of

    saved = model_folder.read_json(source, model_folder.TRAINING_CONFIG, **hub_kwargs)
    if not isinstance(saved, dict):
        raise FileNotFoundError(f"{source} has no {model_folder.TRAINING_CONFIG}: pass the folder (or Hub id) of a "
                                "model this project trained")
    if dataset and dataset != saved.get("dataset"):     # another dataset's columns are found again
        saved = {**saved, "dataset": dataset, "dataset_config_name": None, "image_column": None,
                 "label_column": None}
    config = parse_config([], defaults=saved)
    data = load_data(config.data, seed=config.train.seed)
    model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=True, **hub_kwargs).eval()
    normalize = Normalize.from_processor(AutoImageProcessor.from_pretrained(source, **hub_kwargs))
    accelerator = build_accelerator(config)
    # Scored in float32 as the run's final evaluation: without the autocast `prepare` adds under --mixed_precision.
    model = plain_model(accelerator, accelerator.prepare(model))
    if config.train.channels_last:       # as the run scored it: the memory format moves the last digits of the logits
        model = model.to(memory_format=torch.channels_last)
    return SavedRun(source, config, data, model, normalize, accelerator, class_names_of(model))


def match_classes(model_classes: Sequence[str], data_classes: Sequence[str]) -> np.ndarray:
    """For each dataset label, the model's logit index of the same class name; a DataError naming both lists
    when the names differ."""
    from .data import DataError

    index = {name: i for i, name in enumerate(model_classes)}
    missing = [name for name in data_classes if name not in index]
    if missing or len(data_classes) != len(model_classes):
        unknown = sorted(set(model_classes) - set(data_classes))
        raise DataError(f"the dataset's classes are not the model's: the dataset has {list(data_classes)}, the model "
                        f"knows {list(model_classes)}" + (f" (not in the model: {missing})" if missing else "")
                        + (f" (not in the dataset: {unknown})" if unknown else "")
                        + ". Evaluate on a dataset with the same class names, or fine-tune the model on this one "
                          "(python train.py --model MODEL_FOLDER --dataset ...).")
    return np.array([index[name] for name in data_classes], dtype=np.int64)


def evaluate_saved(run: SavedRun, split: str = "test", tta: str = "none") -> tuple[dict[str, Any], np.ndarray,
                                                                                  np.ndarray]:
    """Score `run.model` on `split` once per image in float32, as the run's final evaluation does. Returns the
    metrics (keys prefixed as in metrics.json, plus ECE/NLL/Brier), the logits (N, K) and the labels (N,) in
    the model's class order."""
    from . import calibration, metrics
    from .engine import predict_float32

    if split not in run.data.tensors:
        raise FileNotFoundError(f"the dataset has no {split!r} split (it has {', '.join(run.data.tensors)})")
    mapping = match_classes(run.class_names, run.data.class_names)
    started = time.perf_counter()
    logits, labels = predict_float32(run.model, run.data.tensors[split], run.normalize, run.accelerator, run.config,
                                     tta)
    seconds = time.perf_counter() - started
    labels = mapping[labels]
    prefix = PREFIXES[split]
    results = metrics.compute_metrics(logits, labels, run.class_names, prefix=prefix)
    results.update({f"{prefix}_{k}": v for k, v in calibration.calibration_metrics(logits, labels).items()})
    results.update(model=run.source, dataset=run.config.data.dataset, split=split, tta=tta,
                   images_per_second=round(len(labels) / seconds, 1))
    return results, logits, labels


def compare_with_run(results: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """Each metric `results` shares with the run's metrics.json `saved`, as 'key: saved -> now' where the two
    differ. Without TTA the run's `test_accuracy_without_tta` is the one-view accuracy to compare with."""
    one_view = ("test_ece", "test_nll", "test_brier")       # the run's calibration figures are one view per image
    if results.get("tta") == "none" and saved.get("tta", "none") != "none":
        saved = {"test_accuracy": saved.get("test_accuracy_without_tta"), **{k: saved.get(k) for k in one_view}}
    elif results.get("tta") != "none":
        saved = {k: v for k, v in saved.items() if k not in one_view}
    shared = [k for k in results if saved.get(k) is not None and isinstance(results[k], (int, float, list, dict))]
    return [f"{k}: {saved[k]} -> {results[k]}" for k in shared if saved[k] != results[k]] + \
        [f"({len(shared)} metrics compared)"]


def write_evaluation(run: SavedRun, results: dict[str, Any], logits: np.ndarray, labels: np.ndarray,
                     out: Path) -> None:
    """OUT/metrics.json, OUT/plots/confusion_matrix.png and OUT/plots/top_losses.png (atomic writes)."""
    from . import interpretation, metrics, model_folder, plots
    from .data import predicted_view
    from .files import write_json

    prefix = PREFIXES[results["split"]]
    write_json(out / model_folder.METRICS, results)
    plots.plot_confusion_matrix(np.asarray(results[f"{prefix}_confusion_matrix"]), run.class_names,
                                model_folder.plot_file(out, "confusion_matrix"))
    view = predicted_view(run.data.eval_view(results["split"]), len(labels))
    interpretation.write_top_losses(run.model, run.normalize, view, labels, metrics.softmax(logits),
                                    run.class_names, model_folder.plot_file(out, "top_losses"))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def add_evaluate_command(subparsers) -> None:
    """Add the `evaluate` sub-command (see `image_classifier.__main__`)."""
    parser = subparsers.add_parser(
        "evaluate", help="score a trained model on a dataset split (metrics.json and plots)",
        description="Score a model folder (or Hub id) this project trained on a split of its run's dataset (or "
                    "--dataset, decoded the same way; classes matched by name). Prints the metrics and, on the "
                    "run's own data, how they compare with the run's metrics.json; --output_dir writes "
                    "metrics.json, plots/confusion_matrix.png and plots/top_losses.png.")
    parser.add_argument("--model", required=True, help="a model folder a training run wrote, or its Hub id")
    parser.add_argument("--dataset", default=None, help="dataset to score on (default: the run's); any --dataset "
                                                        "train.py accepts")
    parser.add_argument("--split", default="test", choices=list(PREFIXES), help="which split (default: test)")
    parser.add_argument("--tta", default="none", choices=["none", "flip", "flip_translate"],
                        help="test-time augmentation (default none: one view per image, as pipeline() and the app "
                             "see it; the run's own --tta reproduces its metrics.json)")
    parser.add_argument("--output_dir", default=None, help="write metrics.json and plots/ here")
    parser.set_defaults(run=evaluate_command)


def evaluate_command(args) -> int:
    """Run `evaluate` for parsed arguments; return the exit status."""
    from . import model_folder

    run = load_saved_run(args.model, args.dataset)
    results, logits, labels = evaluate_saved(run, args.split, args.tta)
    prefix = PREFIXES[args.split]
    run.accelerator.print(
        f"{args.split} accuracy {results[f'{prefix}_accuracy']:.4f}  precision {results[f'{prefix}_precision']:.4f}  "
        f"recall {results[f'{prefix}_recall']:.4f}  f1 {results[f'{prefix}_f1']:.4f}  loss "
        f"{results[f'{prefix}_loss']:.4f}  ECE {100 * results[f'{prefix}_ece']:.2f} %  ({len(labels):,} images of "
        f"{run.config.data.dataset}, tta {args.tta}, {results['images_per_second']:,.0f} images/s)")
    saved = model_folder.read_json(args.model, model_folder.METRICS)
    if isinstance(saved, dict) and not args.dataset and args.split == "test":
        differences = compare_with_run(results, saved)
        same = len(differences) == 1
        run.accelerator.print(("the same as the run's metrics.json " if same else "differs from the run's "
                               "metrics.json: ") + "; ".join(differences))
    if args.output_dir and run.accelerator.is_main_process:
        write_evaluation(run, results, logits, labels, Path(args.output_dir))
        print(f"wrote {Path(args.output_dir) / model_folder.METRICS} and plots/")
    return 0
