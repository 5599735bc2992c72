"""Evaluation metrics through `evaluate`, offline.

`evaluate.load("accuracy")` fetches its script from the Hub; the modules here ship inside the
package (`metric_modules/<name>/<name>.py`, scikit-learn underneath) and load by path.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["METRIC_MODULES", "load_metric", "compute_metrics", "softmax", "most_confused"]

METRIC_MODULES = Path(__file__).with_name("metric_modules")


@lru_cache(maxsize=None)
def load_metric(name: str):
    """The shipped `evaluate` module `name` (accuracy, precision, recall, f1, confusion_matrix, top_k_accuracy)."""
    import evaluate

    path = METRIC_MODULES / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"no metric module {name!r}; shipped: {sorted(p.name for p in METRIC_MODULES.iterdir())}")
    return evaluate.load(str(path))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, computed in float64 for stability."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log softmax(logits)[label], stable (log-sum-exp) in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def most_confused(matrix: Sequence[Sequence[int]], class_names: Sequence[str], top: int = 10) -> list[dict[str, Any]]:
    """The most frequent mistakes, [{"true", "predicted", "count"}], most first (ties in class order): the off-diagonal
    cells of a confusion matrix whose rows are true classes and columns predictions."""
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(class_names), len(class_names))
    off = counts * (1 - np.eye(len(class_names), dtype=np.int64))
    cells = np.argsort(-off, axis=None, kind="stable")[:top]
    return [{"true": class_names[i], "predicted": class_names[j], "count": int(off[i, j])}
            for i, j in zip(*np.unravel_index(cells, off.shape)) if off[i, j] > 0]


def compute_metrics(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """Accuracy, macro and weighted precision/recall/F1, per class, confusion matrix and its most confused pairs,
    cross-entropy, top-5.

    logits: (N, K) float; labels: (N,) int class ids. Keys are prefixed `prefix_` when a prefix is given;
    every value is a plain Python number, list or dict (JSON-ready).
    """
    logits, labels = np.asarray(logits), np.asarray(labels, dtype=np.int64)
    num_classes = len(class_names)
    if logits.ndim != 2 or logits.shape[1] != num_classes or len(logits) != len(labels):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match {num_classes} classes")
    preds = logits.argmax(axis=1)
    every = list(range(num_classes))       # classes absent from both labels and predictions still count
    inputs = dict(predictions=preds, references=labels)
    out: dict[str, Any] = {"accuracy": load_metric("accuracy").compute(**inputs)["accuracy"]}
    per_class: dict[str, dict[str, float]] = {name: {} for name in class_names}
    for name in ("precision", "recall", "f1"):
        module = load_metric(name)
        out[name] = module.compute(**inputs, labels=every, average="macro", zero_division=0)[name]
        out[f"{name}_weighted"] = module.compute(**inputs, labels=every, average="weighted", zero_division=0)[name]
        scores = module.compute(**inputs, labels=every, average=None, zero_division=0)[name]
        for class_name, score in zip(class_names, scores):
            per_class[class_name][name] = float(score)
    support = np.bincount(labels, minlength=num_classes)
    for class_name, count in zip(class_names, support):
        per_class[class_name]["support"] = int(count)
    out["loss"] = _cross_entropy(logits, labels)
    if num_classes > 5:
        out["top5_accuracy"] = load_metric("top_k_accuracy").compute(
            predictions=logits.astype(np.float32), references=labels, k=5, labels=every)["top_k_accuracy"]
    out["per_class"] = per_class
    out["confusion_matrix"] = load_metric("confusion_matrix").compute(**inputs, labels=every)["confusion_matrix"]
    out["most_confused"] = most_confused(out["confusion_matrix"], class_names)
    out["num_samples"] = int(len(labels))
    return {f"{prefix}_{k}" if prefix else k: v for k, v in out.items()}
