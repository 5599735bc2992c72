"""Training recipes as data: each a named set of plain values with units, chosen once from the model and the
device (`recipe_for`), printed at the start of a run and saved in training_config.json (as `recipe`, with
every value it filled in). A flag the user sets always wins over its recipe value.

airbench      airbench94_muon (KellerJordan/cifar10-airbench) for cnn-fast and cnn-wide: their 1/width-scaled
              logits are what its SGD rates are tuned for.
sgd_onecycle  SGD with Nesterov momentum and a one-cycle schedule, for every other model (cnn-basic, timm) on
              small images.
finetune      AdamW with warm-up and cosine decay for photos (data whose common side is over PHOTO_SIDE), the
              timm recipe for fine-tuning a backbone (or training one from scratch when offline).

Defaults also follow the data (`DataTraits`, found by the data stage before decoding): photos take the
streaming path, a timm backbone (`PHOTO_MODEL`), the finetune recipe and a smaller input (`PHOTO_IMAGE_SIZE`).

The optimizer's own defaults (learning rates, weight decay, momentum) follow the optimizer a run ends up with,
so `--optimizer adamw` on cnn-fast gets AdamW's values: they are in OPTIMIZERS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["RECIPES", "OPTIMIZERS", "MODEL_RECIPES", "DEFAULT_MODEL", "RECIPE_FLAGS", "PHOTO_SIDE", "PHOTO_MODEL",
           "PHOTO_IMAGE_SIZE", "RESIDENT_MAX_GIB", "DataTraits", "recipe_for", "default_model", "photo_image_size",
           "choose_data_path", "schedule_defaults", "optimizer_defaults", "describe", "LABEL_SMOOTHING", "MODEL_LEARNING_RATES",
           "LABEL_SMOOTHING_DEFAULT", "BUDGET_TIERS", "BUDGET_MAX_EPOCHS", "PLAN_EFFICIENCY", "SLOW_DEFAULT_SECONDS",
           "BUDGET_MIN_FULL_EPOCHS", "plan_epochs", "REPLAN_RECENT_EPOCHS", "REPLAN_FREELY_UNTIL", "REPLAN_MARGIN",
           "replan_epochs", "rest_seconds", "fill_epochs"]

RECIPES: dict[str, dict[str, Any]] = {
    "airbench": dict(
        optimizer="muon",
        batch_cpu=1000,              # images per step per process on a CPU: half airbench's, twice the steps per
                                     # epoch (+0.5 points at 10 epochs on CIFAR-10)
        batch_cuda=2000,             # on a CUDA GPU: airbench's own; its steps are launch-bound, so half as many
                                     # reach 90 % about a quarter sooner
        eval_batch=512,              # images per evaluation step per process
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
        eval_batch=512,
        lr_scheduler_type="onecycle",
        warmup_ratio=0.2,            # fraction of the optimizer steps spent rising to the peak
        num_train_epochs=10.0,
        resize_epochs_cpu=(0, 1),    # no progressive resizing
        bf16_on_cpu=False,           # float32 on a CPU: torch 2.14's CPU bf16 weight gradient of a strided
                                     # convolution over padding only is garbage (see engine.default_precision)
    ),
    "finetune": dict(
        optimizer="adamw",
        batch_cpu=32,                # images per step per process at 160 px on a CPU: a ResNet-18 step holds 0.8 GB
                                     # of activations there (1.6 at 64) and runs as many images/s
        batch_cuda=128,              # on a GPU, 128 at 224 px (timm's fine-tuning batches)
        eval_batch=128,              # a ResNet-18 forward at 160 px holds 1.6 MB per image in its largest layer
        lr_scheduler_type="cosine",
        warmup_ratio=0.1,
        num_train_epochs=10.0,
        resize_epochs_cpu=(0, 1),    # no progressive resizing: the random-resized crop already varies the scale
        bf16_on_cpu=False,           # as sgd_onecycle (strided convolutions)
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

# Peak learning rates where a model differs from its optimizer's default. cnn-basic has no BatchNorm: at SGD's 0.2 it
# diverged (NaN) in a 5-epoch one-cycle run on CIFAR-10 and reached 68.2 % in its default 10 epochs; at 0.1, 71.2 %
# (the best of a 5-rate grid) and 75.7 % (bench/RESULTS.md, "lr-find").
MODEL_LEARNING_RATES = {("cnn-basic", "sgd"): 0.1}

# The flags a recipe or an optimizer fills, in the order a run prints them.
RECIPE_FLAGS = ("optimizer", "per_device_train_batch_size", "learning_rate", "sgd_learning_rate",
                "bias_learning_rate_scale", "weight_decay", "momentum", "lr_scheduler_type", "warmup_ratio",
                "num_train_epochs", "progressive_resize_epochs", "label_smoothing")

MODEL_RECIPES = {"cnn-fast": "airbench", "cnn-wide": "airbench"}     # every other model: sgd_onecycle
# Cross-entropy label smoothing (fraction) of each model; every other: LABEL_SMOOTHING_DEFAULT. cnn-basic is the
# textbook network, trained with the textbook loss (plain categorical cross-entropy) unless --label_smoothing.
LABEL_SMOOTHING = {"cnn-basic": 0.0}
LABEL_SMOOTHING_DEFAULT = 0.2           # airbench's; on CIFAR-10 it also lowers the test loss of the others
DEFAULT_MODEL = {"cpu": "cnn-fast", "cuda": "cnn-wide"}             # each the sooner to 90 % on CIFAR-10 there

# Photos: data whose most common side is over PHOTO_SIDE pixels.
PHOTO_SIDE = 64
PHOTO_MODEL = "timm/resnet18.a1_in1k"   # ImageNet weights when the Hub is reachable (see bench/RESULTS.md,
                                        # "Photo backbone"), else the same network from scratch
PHOTO_IMAGE_SIZE = {"cpu": 160, "cuda": 224}   # pixels, capped at the photos' median shorter side
RESIDENT_MAX_GIB = 2.0                  # decoded splits above this take the streaming path


def recipe_for(model: str, photos: bool = False) -> str:
    """The recipe a model trains with unless --recipe says otherwise (photos: finetune, for any model)."""
    return "finetune" if photos else MODEL_RECIPES.get(model, "sgd_onecycle")


def default_model(on_cuda: bool, photos: bool = False) -> str:
    return PHOTO_MODEL if photos else DEFAULT_MODEL["cuda" if on_cuda else "cpu"]


@dataclass(frozen=True)
class DataTraits:
    """What the data stage finds before decoding anything (data.open_source), that the defaults follow."""

    side: int                       # pixels: the most common image side among the sampled train headers
    short_side: int                 # pixels: the median shorter side among them
    num_images: int                 # rows of train, validation and test together
    gray: bool                      # every sampled image is grayscale
    imbalance_ratio: Optional[float]    # largest / smallest train class (None: a class has no image)

    @property
    def photos(self) -> bool:
        return self.side > PHOTO_SIDE


def photo_image_size(traits: DataTraits, on_cuda: bool) -> int:
    """The default model input side for photos: PHOTO_IMAGE_SIZE on this device, at most the photos' median
    shorter side (a crop is never upscaled by default)."""
    return min(PHOTO_IMAGE_SIZE["cuda" if on_cuda else "cpu"], traits.short_side)


def choose_data_path(traits: DataTraits, image_size: int, num_channels: int, max_gib: float) -> tuple[str, str]:
    """("resident" or "streaming", why): photos and data whose decoded splits exceed `max_gib` stream."""
    decoded = traits.num_images * num_channels * image_size ** 2 / 2 ** 30
    if traits.photos:
        return "streaming", (f"photos (most common side {traits.side} px > {PHOTO_SIDE}): each decoded when a batch "
                             "needs it, aspect ratio kept")
    if decoded > max_gib:
        return "streaming", (f"the decoded splits would take {decoded:.1f} GiB > --resident_max_gib {max_gib:g}: "
                             "each image decoded when a batch needs it")
    return "resident", (f"small images ({traits.side} px), {decoded * 1024:.0f} MiB decoded <= --resident_max_gib "
                        f"{max_gib:g} GiB: decoded once into memory, augmented in batches")


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
            "per_device_eval_batch_size": r["eval_batch"],
            "lr_scheduler_type": r["lr_scheduler_type"], "warmup_ratio": r["warmup_ratio"],
            "num_train_epochs": r["num_train_epochs"], "progressive_resize_epochs": resized}


def optimizer_defaults(optimizer: str, batch: int, model: Optional[str] = None) -> dict[str, Any]:
    """Flag values of `optimizer` at `batch` images per optimizer step per process (for `model`: see
    MODEL_LEARNING_RATES)."""
    o = OPTIMIZERS[optimizer]
    values = {k: o[k] for k in ("weight_decay", "momentum")}
    if optimizer == "muon":
        values.update(learning_rate=round(o["learning_rate_at_2000"] * math.sqrt(batch / 2000), 4),
                      sgd_learning_rate=o["sgd_learning_rate_per_image"] * batch,
                      bias_learning_rate_scale=o["bias_learning_rate_scale"])
    else:
        values["learning_rate"] = MODEL_LEARNING_RATES.get((model, optimizer), o["learning_rate"])
    return values


def describe(recipe: str, values: dict[str, Any], device: str) -> str:
    """One line for the start of a run: the recipe, the device, and the value of each of its flags."""
    shown = ", ".join(f"--{k} {v:g}" if isinstance(v, float) else f"--{k} {v}" for k, v in values.items()
                      if v is not None)
    return f"Recipe {recipe} on {device}: {shown}"


# --time_budget on an airbench model: what a budget buys, most accurate per epoch first. The default is timed first;
# a tier with `below_default` only where fewer than that many default epochs fit, and then it is taken and nothing
# more is timed; otherwise a tier is taken when at least `min_epochs` of it (None: as many as of the default) fit
# the budget at the rate measured on this host at the start of the run. The plan trains as many epochs of it as fit,
# with the recipe's share of them at the reduced size. A tier's flags apply where the user left them unset (at their
# defaults); `cost` (its epoch's seconds over the default's, bf16 on this CPU, both at the recipe's share of small
# epochs) only decides whether the tier is worth timing.
BUDGET_TIERS = (
    dict(name="wide", min_epochs=10, cost=4.0,
         # airbench95's widths with random erasing at batch 500: 92.37 % after 22 epochs (2 seeds, 41 minutes on a
         # bf16 host); a net of twice its step cost (128/512/512, 3 convolutions per block) reached 92.25 % in 10
         # epochs (bench/RESULTS.md)
         flags=dict(widths=[128, 384, 384], per_device_train_batch_size=500, random_erasing=0.5)),
    dict(name="batch-500", min_epochs=None, cost=1.0,
         # half the default's batch: more accurate per epoch (+0.23 points after 11 epochs, 2 seeds), and on some
         # CPUs faster per image too (float32 with AVX2 kernels 1.10x, bf16 with AVX512_BF16 1.08x), on others
         # slower (float32 with AVX-512 0.95x), and on a GPU far slower (launch-bound): so it is timed, and taken
         # where at least as many of its epochs fit as of the default's (bench/RESULTS.md, Time budgets)
         flags=dict(per_device_train_batch_size=500)),
    dict(name="default", min_epochs=1, cost=1.0, flags={}),
    dict(name="narrow", min_epochs=1, cost=0.5, below_default=11,
         # two thirds of cnn-fast's widths, about twice its images/s: taken (before the others) where fewer than the
         # recipe's 11 epochs of the default fit, and then instead of them. On a 2-core host without AVX-512, 15
         # minutes bought 16.3 epochs of it and 89.52 %, against 5.8 epochs of the default net and 88.76 % (one seed
         # each; the tier itself, 2 seeds: 89.27 % and, with the cheaper timing, 89.42 %; at
         # batch 500 it reached 88.93 %, one seed; bench/RESULTS.md, Time budgets)
         flags=dict(widths=[32, 128, 128])),
)
PLAN_EFFICIENCY = 1.0       # the training loop's images/s over the bare copy's timed at the start of the run: 1.00-1.08
                            # in six budgeted runs here (the host's speed moves 5-10 % between minutes); above 1.0 the
                            # 5-minute run would have trained past its budget (bench/RESULTS.md, Time budgets)
BUDGET_MAX_EPOCHS = 4       # x the recipe's epochs: a plan trains at most this many (46 epochs of cnn-wide bought
                            # no more than 34, bench/RESULTS.md); a larger budget is left unused, and the plan says so
SLOW_DEFAULT_SECONDS = 15 * 60  # a default run predicted to train longer than this says so and what a budget would do
BUDGET_MIN_FULL_EPOCHS = 4  # a plan short of the recipe's epochs trains up to all but these small to fit one more:
                            # 11 epochs with 7 small (4 full) reached 90.15 %, 10 with 5 small 89.70 %, in the same
                            # training seconds (batch 500, seed 0, bench/RESULTS.md, Time budgets)
REPLAN_RECENT_EPOCHS = 3    # after each epoch a budgeted run plans the rest again from the mean of the last 3
                            # epochs at each image side (the host's speed drifts 5-10 % between minutes, and the
                            # start-of-run timing was 5-10 % off either way per side: bench/RESULTS.md, Time
                            # budgets); the slowest of them cut and restored an epoch on one 10 % slower epoch
REPLAN_MARGIN = 0.01        # of the budget, kept in hand by every plan: an epoch's seconds vary by 2-5 % around the
                            # mean (1-3 s of a 50-s one), and the last epoch must end within the budget. A re-plan
                            # changes a plan that still ends within the budget only where the change adds at least
                            # this much training, or a whole epoch where that is less (one line and one retarget per
                            # real change, not one after every epoch)
REPLAN_FREELY_UNTIL = 0.75  # fraction of the planned epochs: past it a re-plan only cuts a plan that would end
                            # past the budget (a later change of length moves an already low learning rate by a
                            # large share of itself: one epoch more after 15 of 20 raises it by 14 %, after 10 by 5 %);
                            # the first full-size epoch, which corrects the start's timing most, comes at about half


def plan_epochs(budget_seconds: float, epoch_seconds: float, small_epoch_seconds: float,
                resize_share: tuple[int, int], max_epochs: int, stretch_to: int = 0) -> tuple[int, int]:
    """(epochs, of which at the reduced size): the most epochs, at most `max_epochs`, whose predicted seconds fit
    `budget_seconds`, the recipe's `resize_share` (small, every) of them at the reduced size, rounded down, or up
    where that is what lets the last epoch fit (6 epochs of 5/11: 2 small, or 3). A plan of at most `stretch_to`
    epochs (the recipe's own count) may train all but BUDGET_MIN_FULL_EPOCHS of them small, the fewest that let
    them fit. (0, 0) when one does not fit.
    """
    small, every = resize_share

    def seconds(epochs: int, resized: int) -> float:
        return resized * small_epoch_seconds + (epochs - resized) * epoch_seconds

    for epochs in range(min(max_epochs, int(budget_seconds // min(epoch_seconds, small_epoch_seconds)) + 1), 0, -1):
        most = min(epochs - 1, -(-epochs * small // every))
        if small and epochs <= stretch_to:
            most = max(most, epochs - BUDGET_MIN_FULL_EPOCHS)
        for resized in range(epochs * small // every, most + 1):
            if seconds(epochs, resized) <= budget_seconds:
                return epochs, resized
    return 0, 0


def replan_epochs(left_seconds: float, done: int, planned: int, resized: int, epoch_seconds: float,
                  small_epoch_seconds: float, resize_share: tuple[int, int], max_epochs: int,
                  stretch_to: int = 0) -> tuple[int, int]:
    """(epochs, of which at the reduced size) for a run that has trained `done` of the `planned` epochs, `resized`
    of them planned small, and has `left_seconds` of its budget left. While small epochs are still ahead, the
    whole plan as `plan_epochs` would make it with these seconds (the epochs done counted as small ones), keeping
    the planned split where the count stays and it still fits; once they are done, as many full-size epochs
    after them as fit. Never fewer than `done` (then the run ends now)."""
    def rest(epochs: int, small: int) -> float:
        return rest_seconds(done, epochs, small, epoch_seconds, small_epoch_seconds)

    if done < resized:
        epochs, small = plan_epochs(left_seconds + done * small_epoch_seconds, epoch_seconds, small_epoch_seconds,
                                    resize_share, max_epochs, stretch_to)
        if epochs == planned and rest(planned, resized) <= left_seconds:
            return planned, resized
        small = max(small, done)
        while epochs > done and rest(epochs, small) > left_seconds:
            epochs -= 1
        return max(epochs, done), min(small, max(epochs, done))
    return max(done, min(max_epochs, done + int(left_seconds // epoch_seconds))), resized


def fill_epochs(epochs: int, spare_seconds: float, epoch_seconds: float, max_epochs: int) -> float:
    """`epochs` and a last, partial full-size epoch that trains for `spare_seconds` (what is left of the budget that
    one whole epoch more would overrun), in hundredths of an epoch: a 5-minute budget whose 6th epoch does not fit
    trains 5.85 of them, not 5 with 15 % of its seconds unused. None at `max_epochs`, or where none fits."""
    if epochs < 1 or epochs >= max_epochs or spare_seconds <= 0:
        return float(epochs)
    return round(epochs + min(0.99, math.floor(100 * spare_seconds / epoch_seconds) / 100), 2)


def rest_seconds(done: int, epochs: float, resized: int, epoch_seconds: float, small_epoch_seconds: float) -> float:
    """Training seconds of a plan's epochs after the first `done`: the small ones still ahead, then the full-size
    (the last of them may be partial: `epochs` 5.85)."""
    return max(0, resized - done) * small_epoch_seconds + max(0, epochs - max(resized, done)) * epoch_seconds

