"""Training recipes as data: each a named set of plain values with units, chosen once from the model and the
device (`recipe_for`), printed at the start of a run and saved in training_config.json (as `recipe`, with
every value it filled in). A flag the user sets always wins over its recipe value.

airbench      airbench94_muon (KellerJordan/cifar10-airbench) for cnn-fast and cnn-wide: their 1/width-scaled
              logits are what its SGD rates are tuned for.
sgd_onecycle  SGD with Nesterov momentum and a one-cycle schedule, for every other model (cnn-basic, timm).

The optimizer's own defaults (learning rates, weight decay, momentum) follow the optimizer a run ends up with,
so `--optimizer adamw` on cnn-fast gets AdamW's values: they are in OPTIMIZERS.
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["RECIPES", "OPTIMIZERS", "MODEL_RECIPES", "DEFAULT_MODEL", "RECIPE_FLAGS", "recipe_for", "default_model",
           "schedule_defaults", "optimizer_defaults", "describe"]

RECIPES: dict[str, dict[str, Any]] = {
    "airbench": dict(
        optimizer="muon",
        batch_cpu=1000,              # images per step per process on a CPU: half airbench's, twice the steps per
                                     # epoch (+0.5 points at 10 epochs on CIFAR-10)
        batch_cuda=2000,             # on a CUDA GPU: airbench's own; its steps are launch-bound, so half as many
                                     # reach 90 % about a quarter sooner
        lr_scheduler_type="linear",  # linear decay to 0
        warmup_ratio=0.0,            # fraction of the optimizer steps
        num_train_epochs=11.0,       # passes over the train split
        resize_epochs_cpu=(5, 11),   # on a CPU, the first 5 of every 11 epochs train at 3/4 of the side
                                     # (progressive resizing: a 24x24 step costs half a 32x32 one); none on a
                                     # CUDA GPU, where a small step runs no faster (bench/RESULTS.md)
        bf16_on_cpu=True,            # bf16 autocast on a CPU that computes in it natively (AVX512_BF16, AMX):
                                     # steps 1.8-2.7x faster (bench/precision_speedup.py)
    ),
    "sgd_onecycle": dict(
        optimizer="sgd",
        batch_cpu=256,               # images per step per process, on any device
        batch_cuda=256,
        lr_scheduler_type="onecycle",
        warmup_ratio=0.2,            # fraction of the optimizer steps spent rising to the peak
        num_train_epochs=10.0,
        resize_epochs_cpu=(0, 1),    # no progressive resizing
        bf16_on_cpu=False,           # float32 on a CPU: torch 2.14's CPU bf16 weight gradient of a strided
                                     # convolution over padding only is garbage (see engine.default_precision)
    ),
}

# Per optimizer: its defaults wherever the run did not set them. Rates are peaks; batch = images per optimizer
# step per process (per-device batch x accumulation steps).
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "muon": dict(
        learning_rate_at_2000=0.24,      # the kernels' Muon step at batch 2000 (airbench), times sqrt(batch / 2000):
                                         # Muon's step is normalised, so it scales with the gradient noise
        sgd_learning_rate_per_image=0.67,  # the other parameters' SGD rate per image of the batch (670 at 1000), per
                                           # mean-loss gradient, for 1/192-scaled logits (airbench)
        bias_learning_rate_scale=0.079,  # biases and BatchNorm train at this multiple of the SGD rate
        weight_decay=3e-6,               # of the SGD part (0.002 per step at rate 670); kernels keep a fixed norm
        momentum=0.85,                   # of the SGD part (Nesterov)
    ),
    "sgd": dict(learning_rate=0.2, weight_decay=5e-4, momentum=0.9),
    "adam": dict(learning_rate=1e-3, weight_decay=5e-4, momentum=0.9),
    "adamw": dict(learning_rate=1e-3, weight_decay=5e-4, momentum=0.9),
}

# The flags a recipe or an optimizer fills, in the order a run prints them.
RECIPE_FLAGS = ("optimizer", "per_device_train_batch_size", "learning_rate", "sgd_learning_rate",
                "bias_learning_rate_scale", "weight_decay", "momentum", "lr_scheduler_type", "warmup_ratio",
                "num_train_epochs", "progressive_resize_epochs")

MODEL_RECIPES = {"cnn-fast": "airbench", "cnn-wide": "airbench"}     # every other model: sgd_onecycle
DEFAULT_MODEL = {"cpu": "cnn-fast", "cuda": "cnn-wide"}             # each the sooner to 90 % on CIFAR-10 there


def recipe_for(model: str) -> str:
    """The recipe a model trains with unless --recipe says otherwise."""
    return MODEL_RECIPES.get(model, "sgd_onecycle")


def default_model(on_cuda: bool) -> str:
    return DEFAULT_MODEL["cuda" if on_cuda else "cpu"]


def schedule_defaults(recipe: str, on_cuda: bool, num_train_epochs: Optional[float],
                      max_train_steps: Optional[int]) -> dict[str, Any]:
    """Flag values of `recipe` on this device: optimizer, batch, schedule, epochs, progressive resizing.

    `num_train_epochs` (the user's, else None) sizes the resized share; with --max_train_steps none is resized.
    """
    r = RECIPES[recipe]
    epochs = r["num_train_epochs"] if num_train_epochs is None else num_train_epochs
    small, every = r["resize_epochs_cpu"]
    resized = int(epochs * small // every) if max_train_steps is None and not on_cuda else 0
    return {"optimizer": r["optimizer"], "per_device_train_batch_size": r["batch_cuda" if on_cuda else "batch_cpu"],
            "lr_scheduler_type": r["lr_scheduler_type"], "warmup_ratio": r["warmup_ratio"],
            "num_train_epochs": r["num_train_epochs"], "progressive_resize_epochs": resized}


def optimizer_defaults(optimizer: str, batch: int) -> dict[str, Any]:
    """Flag values of `optimizer` at `batch` images per optimizer step per process."""
    o = OPTIMIZERS[optimizer]
    values = {k: o[k] for k in ("weight_decay", "momentum")}
    if optimizer == "muon":
        values.update(learning_rate=round(o["learning_rate_at_2000"] * math.sqrt(batch / 2000), 4),
                      sgd_learning_rate=o["sgd_learning_rate_per_image"] * batch,
                      bias_learning_rate_scale=o["bias_learning_rate_scale"])
    else:
        values["learning_rate"] = o["learning_rate"]
    return values


def describe(recipe: str, values: dict[str, Any], device: str) -> str:
    """One line for the start of a run: the recipe, the device, and the value of each of its flags."""
    shown = ", ".join(f"--{k} {v:g}" if isinstance(v, float) else f"--{k} {v}" for k, v in values.items()
                      if v is not None)
    return f"Recipe {recipe} on {device}: {shown}"
