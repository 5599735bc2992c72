"""Calibration: when the model says 90 %, is it right 90 % of the time?

Expected calibration error (ECE; Naeini et al., 2015; Guo et al., 2017): the predictions are put in 15 equal-width
bins of confidence (the top class's probability), and ECE = sum over bins of (share of predictions in the bin) x
|accuracy in the bin - mean confidence in the bin|. It is torchmetrics' `MulticlassCalibrationError(n_bins=15)`,
with one fix: torchmetrics gives a confidence of exactly 1.0 (common in float32 softmax) a 16th bin of its own;
here it joins the last bin, (14/15, 1], as the usual definition has it. Beside it, the negative log-likelihood
and the Brier score (mean over images of the squared distance between the probabilities and the one-hot label).

Temperature scaling (Guo et al., 2017): one number T > 0 fitted on the validation split's logits by NLL (log T
by LBFGS with a strong-Wolfe line search, in float64: too few iterations, or probabilities instead of logits, are
the usual reasons ECE rises after scaling). softmax(logits / T) keeps every prediction's class (accuracy is
unchanged) and moves its confidence. `fold_temperature` divides the classifier's last weights and bias by T, which
is exact and needs no code at load time: `pipeline()`, the app and `predict` then give calibrated probabilities.
config.json records `calibration = {"temperature": T, "folded_into_classifier": true}` so it is never applied
twice.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["N_BINS", "TEMPERATURE_RANGE", "calibration_metrics", "reliability_bins", "fit_temperature", "fold_temperature",
           "unfold_temperature", "output_layer"]

N_BINS = 15


def _probabilities(logits: np.ndarray) -> torch.Tensor:
    return torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=1)


def calibration_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ECE (15 bins), negative log-likelihood and Brier score of logits (N, K) against labels (N,)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = _probabilities(logits)
    target = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    # Confidence 1.0 joins the last bin (torchmetrics would open a 16th). torchmetrics bins in float32, where
    # 1 - 1e-6 is the nearest step below 1; it moves no bin's mean confidence by more than 1e-6.
    ece = multiclass_calibration_error(probs.clamp(max=1 - 1e-6), target, num_classes=probs.shape[1],
                                       n_bins=N_BINS, norm="l1")
    nll = nn.functional.cross_entropy(torch.log(probs.clamp(min=1e-300)), target)
    one_hot = nn.functional.one_hot(target, probs.shape[1]).double()
    brier = ((probs - one_hot) ** 2).sum(dim=1).mean()
    return {"ece": float(ece), "nll": float(nll), "brier": float(brier)}


def reliability_bins(logits: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """The reliability diagram's bins (the same 15 as the ECE): for each non-empty (lo, hi], its bounds, the
    predictions in it, their accuracy and mean confidence."""
    probs = _probabilities(logits).numpy()
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == np.asarray(labels)
    edges = np.linspace(0, 1, N_BINS + 1)
    index = np.clip(np.ceil(confidence * N_BINS).astype(int) - 1, 0, N_BINS - 1)     # (lo, hi]
    bins = []
    for b in range(N_BINS):
        inside = index == b
        if inside.any():
            bins.append({"low": round(float(edges[b]), 4), "high": round(float(edges[b + 1]), 4),
                         "count": int(inside.sum()), "accuracy": float(correct[inside].mean()),
                         "confidence": float(confidence[inside].mean())})
    return bins


# The fitted temperature is kept within these: on a validation split the model gets entirely right, the NLL falls
# without end as T -> 0 (sharper is always better there), which would multiply the classifier's weights without bound.
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on (logits (N, K), labels (N,)): the validation
    split's. Fitted as log T (so T stays positive) by LBFGS with a strong-Wolfe line search, in float64; kept
    within TEMPERATURE_RANGE."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(np.clip(log_t.detach().exp().item(), *TEMPERATURE_RANGE))


def output_layer(model: nn.Module) -> nn.Module:
    """The layer that computes the logits: the small CNN's `classifier`, a timm model's `get_classifier()`."""
    from .timm_models import classifier_module

    layer = classifier_module(model) or getattr(model, "classifier", None)
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise ValueError(f"cannot fold a temperature into {type(layer).__name__}: the output layer must be a "
                         "Linear or 1x1 convolution")
    return layer


@torch.no_grad()
def fold_temperature(model: nn.Module, temperature: float) -> None:
    """Divide the output layer's weights and bias by `temperature`: the model's logits become logits / T exactly.
    Recorded in `model.config.calibration`; refused for a model whose config says it is already calibrated."""
    if getattr(model.config, "calibration", None):
        raise ValueError(f"this model is already calibrated ({model.config.calibration}); folding a temperature "
                         "again would apply it twice")
    layer = output_layer(model)
    layer.weight.div_(temperature)
    if layer.bias is not None:
        layer.bias.div_(temperature)
    model.config.calibration = {"temperature": round(float(temperature), 6), "folded_into_classifier": True,
                                "fitted_on": "validation"}


@torch.no_grad()
def unfold_temperature(model: nn.Module) -> Optional[float]:
    """Undo `fold_temperature` (the output layer's weights and bias times the recorded temperature), to train a
    calibrated model further from its own logits; returns the temperature, or None for a model never calibrated."""
    recorded = getattr(model.config, "calibration", None)
    if not recorded:
        return None
    temperature = float(recorded["temperature"])
    layer = output_layer(model)
    layer.weight.mul_(temperature)
    if layer.bias is not None:
        layer.bias.mul_(temperature)
    model.config.calibration = None
    return temperature
