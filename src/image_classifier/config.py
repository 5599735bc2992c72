"""Every option of a run, as typed dataclasses parsed by `transformers.HfArgumentParser`.

Flags equal field names (`--learning_rate` sets `TrainingArguments.learning_rate`), so a saved
`training_config.json` is itself a valid config file: `python train.py training_config.json`.
Invalid values fail at start-up with a `ConfigError` that names the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from .recipes import (LABEL_SMOOTHING, LABEL_SMOOTHING_DEFAULT, MODEL_RECIPES, OPTIMIZERS, PHOTO_IMAGE_SIZE,
                      PHOTO_MODEL, PHOTO_SIDE, RECIPE_FLAGS, RECIPES, RESIDENT_MAX_GIB, DataTraits, choose_data_path, default_model,
                      optimizer_defaults, photo_image_size, recipe_for, schedule_defaults)

__all__ = [
    "ConfigError",
    "DataArguments",
    "ModelArguments",
    "TrainingArguments",
    "HubArguments",
    "Config",
    "parse_config",
    "save_config",
]


class ConfigError(ValueError):
    """A bad option. The message names the flag and says what would be valid."""

    def __init__(self, flag: str, problem: str):
        self.flag = flag
        super().__init__(f"--{flag}: {problem}")


def _require(ok: bool, flag: str, problem: str) -> None:
    if not ok:
        raise ConfigError(flag, problem)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(h|min|m|s|)\s*", re.IGNORECASE)
_SECONDS_PER = {"h": 3600, "m": 60, "min": 60, "s": 1, "": 1}


def parse_duration(text: str, flag: str) -> float:
    """Seconds in '15m', '900s', '1h30m', '1.5h' or '90' (seconds); a ConfigError naming `flag` otherwise."""
    parts = list(_DURATION.finditer(str(text).strip()))
    if not parts or "".join(m.group(0) for m in parts) != str(text).strip() or (len(parts) > 1 and not parts[-1][2]):
        raise ConfigError(flag, f"is not a duration: {text!r}. Give a number with h, m or s, e.g. 15m, 900s or 1h30m")
    return sum(float(m.group(1)) * _SECONDS_PER[m.group(2).lower()] for m in parts)


def _fraction(value: float, flag: str, low_open: bool = False) -> None:
    ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
    _require(ok, flag, f"must be a fraction in {'(' if low_open else '['}0, 1), got {value}")


# The recipes' values, for the help texts (see recipes.py): airbench (cnn-fast, cnn-wide) and the rest.
_A, _S = RECIPES["airbench"], RECIPES["sgd_onecycle"]
_MUON, _SGD, _ADAM = OPTIMIZERS["muon"], OPTIMIZERS["sgd"], OPTIMIZERS["adam"]
_AIRBENCH_MODELS = "/".join(m for m, r in MODEL_RECIPES.items() if r == "airbench")
IMBALANCED = 3.0       # largest / smallest train class from which the best epoch is picked by macro F1


@dataclass
class DataArguments:
    """Where the images come from and how they are split, preprocessed and augmented."""

    dataset: str = field(
        default="uoft-cs/cifar10",
        metadata={"help": "Hub dataset id, alias (cifar10, cifar100, mnist, fashion_mnist), local folder of "
                          "parquet/arrow files, a `save_to_disk` folder, or an image folder (one subfolder per class)."},
    )
    dataset_config_name: Optional[str] = field(
        default=None, metadata={"help": "Configuration (subset) name of the dataset, when it has several."}
    )
    image_column: Optional[str] = field(
        default=None, metadata={"help": "Column holding the images; found by feature type when omitted."}
    )
    label_column: Optional[str] = field(
        default=None, metadata={"help": "Column holding the labels; found by feature type when omitted."}
    )
    validation_split_fraction: float = field(
        default=0.1,
        metadata={"help": "Fraction of train carved out (stratified, seeded) as validation when the dataset has none."},
    )
    test_split_fraction: float = field(
        default=0.1,
        metadata={"help": "Fraction of train carved out (stratified, seeded) as test when the dataset has none."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep at most this many training images (seeded random subset); for quick runs."}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep at most this many validation and test images each (seeded random subset)."}
    )
    image_size: Optional[int] = field(
        default=None,
        metadata={"help": f"Model input side in pixels (square). Default: the most common side in the dataset; for "
                          f"photos (most common side over {PHOTO_SIDE} px) {PHOTO_IMAGE_SIZE['cpu']} on a CPU, "
                          f"{PHOTO_IMAGE_SIZE['cuda']} on a CUDA GPU, at most the photos' median shorter side."},
    )
    num_channels: Optional[int] = field(
        default=None,
        metadata={"help": "Model input channels: 1 (grayscale) or 3 (RGB). Default: 1 when every image is grayscale."},
    )
    strict_images: bool = field(
        default=False, metadata={"help": "Fail on a corrupt or undecodable image instead of skipping it with a warning."}
    )
    explore_only: bool = field(
        default=False, metadata={"help": "Write the data summary and exploration plots, then stop without training."}
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where decoded uint8 image tensors are cached between runs. "
                          "Default: $HF_HOME/image_classifier (or ~/.cache/huggingface/image_classifier)."},
    )
    dataloader_num_workers: Optional[int] = field(
        default=None, metadata={"help": "DataLoader worker processes that decode images (0: in the training process). "
                                        "Default: on the streaming path, the CPU cores this process may use when "
                                        "training on a GPU, and 0 when training on the CPU (its cores are busy with "
                                        "the model: a 2,000-photo epoch of ResNet-18 took 54 s decoding in the "
                                        "training process, 60 s with 1 worker, 66 s with 2); 0 on the resident path."}
    )
    data_path: Optional[Literal["resident", "streaming"]] = field(
        default=None, metadata={"help": f"resident: decode every image once into memory (cached on disk) and augment "
                                        f"in batches on the device; streaming: keep images encoded in the dataset's "
                                        f"files and decode each sample in DataLoader workers (memory does not grow "
                                        f"with the dataset). Default: streaming for photos (most common side over "
                                        f"{PHOTO_SIDE} px) and for data whose decoded splits exceed "
                                        f"--resident_max_gib; else resident. The run prints which and why."}
    )
    streaming: bool = field(
        default=False, metadata={"help": "Read the dataset in datasets' streaming mode, for a Hub dataset too large to "
                                         "download first (a local folder of data files or an image folder works too). "
                                         "The train split stays a stream: shuffled in a buffer of "
                                         "--shuffle_buffer_size images each epoch, sharded per process "
                                         "(split_dataset_by_node) and decoded as read; validation and test (where "
                                         "the dataset has none: carved from the first rows of train, or stratified "
                                         "when the stream is ordered by class) are read once, still encoded, into "
                                         "memory (over 256 MB: a memory-mapped file in the cache folder). Implies "
                                         "--data_path streaming."}
    )
    shuffle_buffer_size: int = field(
        default=10_000, metadata={"help": "With --streaming: images (encoded) a process holds to shuffle the train "
                                          "stream, shared among its loader workers (each worker shuffles its own "
                                          "files in a buffer of its share)."}
    )
    resident_max_gib: float = field(
        default=RESIDENT_MAX_GIB, metadata={"help": "GiB: decoded splits larger than this take the streaming path."}
    )
    crop_pct: Optional[float] = field(
        default=None, metadata={"help": "Streaming path: evaluation resizes the shorter side to image_size / crop_pct "
                                        "and centre-crops image_size (timm). Default: a timm model's own, else 0.875."}
    )
    crop_scale: list[float] = field(
        default_factory=lambda: [0.08, 1.0],
        metadata={"help": "Streaming path: area range of the training RandomResizedCrop, as fractions of the image."}
    )
    class_balance: Literal["none", "sampling", "loss"] = field(
        default="none", metadata={"help": "For imbalanced classes: 'sampling' draws training images with weights "
                                          "1/class count (each class equally often, with replacement); 'loss' "
                                          "weights the cross-entropy by N / (K x class count)."}
    )
    # Augmentation (training only). Each is off at 0 / False / "none".
    augment: bool = field(default=True, metadata={"help": "Master switch for training-time augmentation."})
    random_crop_padding: int = field(
        default=2, metadata={"help": "Random shift: pad by this many pixels (reflect) and crop back; 0 disables."}
    )
    horizontal_flip: Optional[bool] = field(
        default=None, metadata={"help": "Random horizontal flip. Default: on, except for digit datasets (all class names are digits)."}
    )
    flip_schedule: Optional[Literal["random", "alternate"]] = field(
        default=None, metadata={"help": "How training flips are drawn. 'random': each image, each epoch, with p=0.5. "
                                        "'alternate' (airbench): a seeded random half in the first epoch, then every "
                                        "image the other way round each epoch, so each is seen both ways equally often; "
                                        "needs the resident data path. Default: alternate on that path, else random."}
    )
    rotation_degrees: float = field(default=0.0, metadata={"help": "Random rotation range in degrees (+/-); 0 disables."})
    zoom: float = field(default=0.0, metadata={"help": "Random zoom range as a fraction (0.1: scale 0.9-1.1); 0 disables."})
    color_jitter: float = field(
        default=0.0, metadata={"help": "Brightness/contrast/saturation jitter strength (fraction); 0 disables."}
    )
    auto_augment: Literal["none", "randaugment", "trivialaugment"] = field(
        default="none", metadata={"help": "Automatic augmentation policy applied per image."}
    )
    random_erasing: float = field(
        default=0.0, metadata={"help": "Probability of erasing a random rectangle of each image; 0 disables."}
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "MixUp Beta(alpha, alpha) on batches; 0 disables."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix Beta(alpha, alpha) on batches; 0 disables."})

    def __post_init__(self):
        _require(bool(self.dataset and self.dataset.strip()), "dataset", "must name a Hub id, alias or local folder")
        _fraction(self.validation_split_fraction, "validation_split_fraction", low_open=True)
        _fraction(self.test_split_fraction, "test_split_fraction", low_open=True)
        for name in ("max_train_samples", "max_eval_samples", "image_size"):
            value = getattr(self, name)
            _require(value is None or value > 0, name, f"must be a positive integer, got {value}")
        _require(self.num_channels in (None, 1, 3), "num_channels", f"must be 1 or 3, got {self.num_channels}")
        _require(self.dataloader_num_workers is None or self.dataloader_num_workers >= 0, "dataloader_num_workers",
                 "must be >= 0")
        _require(self.shuffle_buffer_size >= 1, "shuffle_buffer_size", f"must be >= 1, got {self.shuffle_buffer_size}")
        _require(self.resident_max_gib > 0, "resident_max_gib", f"must be > 0 GiB, got {self.resident_max_gib}")
        _require(self.crop_pct is None or 0 < self.crop_pct <= 1, "crop_pct", f"must be in (0, 1], got {self.crop_pct}")
        _require(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale",
                 f"must be two fractions LOW HIGH with 0 < LOW <= HIGH <= 1, got {self.crop_scale}")
        _require(0 <= self.random_crop_padding <= 64, "random_crop_padding", "must be between 0 and 64 pixels")
        _require(0 <= self.rotation_degrees <= 180, "rotation_degrees", "must be between 0 and 180 degrees")
        _fraction(self.zoom, "zoom")
        _require(0 <= self.color_jitter <= 1, "color_jitter", "must be between 0 and 1")
        _require(0 <= self.random_erasing <= 1, "random_erasing", "must be a probability between 0 and 1")
        _require(self.mixup_alpha >= 0, "mixup_alpha", "must be >= 0")
        _require(self.cutmix_alpha >= 0, "cutmix_alpha", "must be >= 0")


@dataclass
class ModelArguments:
    """Which network: a named small-CNN preset (with optional overrides of its shape) or a timm architecture."""

    model: Optional[str] = field(
        default=None,
        metadata={"help": "Model preset: cnn-basic (textbook two-conv CNN), cnn-fast (airbench94's BatchNorm/GELU net "
                          "for 32x32 images at 3/4 width), cnn-wide (at full width); or a timm architecture as "
                          "timm/NAME (any name in timm.list_models(), optionally with a pretrained tag: timm/resnet10t, "
                          "timm/resnet18.a1_in1k). Default for small images: cnn-wide when training on a CUDA GPU, cnn-fast "
                          "otherwise (each the sooner to 90%% on CIFAR-10 there; README, Speed, bench/RESULTS.md); "
                          f"for photos (over {PHOTO_SIDE} px) {PHOTO_MODEL}, from ImageNet weights when the Hub is "
                          "reachable."},
    )
    pretrained: Optional[bool] = field(
        default=None,
        metadata={"help": "timm models: start from timm's pretrained weights, downloaded from the Hub (the "
                          "classifier is re-initialized for the dataset's classes). Default: on for the photo default "
                          "model when its weights can be had (offline it trains from scratch and says so); else off."},
    )
    freeze_backbone_epochs: int = field(
        default=0, metadata={"help": "timm models: train only the classifier for this many first epochs; 0 disables."}
    )
    backbone_learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "timm models: peak learning rate of every layer but the classifier (for example 10x "
                          "below --learning_rate when fine-tuning). Default: --learning_rate."},
    )
    widths: Optional[list[int]] = field(
        default=None, metadata={"help": "Override: output channels of each convolutional block."}
    )
    convs_per_block: Optional[int] = field(default=None, metadata={"help": "Override: convolutions in each block."})
    kernel_size: Optional[int] = field(default=None, metadata={"help": "Override: convolution kernel side (odd)."})
    pooling: Optional[Literal["max", "avg"]] = field(
        default=None, metadata={"help": "Override: 2x2 pooling after each block."}
    )
    batch_norm: Optional[bool] = field(default=None, metadata={"help": "Override: BatchNorm after each convolution."})
    activation: Optional[Literal["relu", "gelu"]] = field(default=None, metadata={"help": "Override: activation."})
    block_dropout: Optional[float] = field(
        default=None, metadata={"help": "Override: dropout probability after each block."}
    )
    classifier_dropout: Optional[float] = field(
        default=None, metadata={"help": "Override: dropout probability before the output layer."}
    )
    stem: Optional[Literal["none", "whiten"]] = field(
        default=None, metadata={"help": "Override: 'whiten' puts a fixed 2x2 patch-whitening convolution, set from "
                                        "the training images, before the blocks (airbench); 'none' feeds pixels in."}
    )
    batch_norm_momentum: Optional[float] = field(
        default=None, metadata={"help": "Override: weight of each new batch in BatchNorm's running statistics "
                                        "(PyTorch convention, in (0, 1])."}
    )
    norm_scale: Optional[bool] = field(
        default=None, metadata={"help": "Override: learn BatchNorm's scale (false: fixed at 1, only the shift learns)."}
    )
    identity_init: Optional[bool] = field(
        default=None, metadata={"help": "Override: start every convolution's first C_in filters as the identity."}
    )
    logit_scale: Optional[float] = field(
        default=None, metadata={"help": "Override: factor on the logits (e.g. 0.111 = 1/9, airbench). cnn-fast and "
                                        "cnn-wide scale by 1/(last of --widths): 1/192, 1/256, or 1/384 with "
                                        "--widths 128 384 384."}
    )

    def __post_init__(self):
        _require(self.model is None or bool(self.model), "model", "must name a preset or a timm architecture (timm/NAME)")
        from .model_folder import saved_architecture

        # A model this project trained (folder or Hub id): trained further with the recipe of what it was built as.
        self._saved_as = saved_architecture(self.model)
        _require(self.freeze_backbone_epochs >= 0, "freeze_backbone_epochs", "must be >= 0 (0 disables)")
        _require(self.backbone_learning_rate is None or self.backbone_learning_rate > 0, "backbone_learning_rate",
                 f"must be > 0, got {self.backbone_learning_rate}")
        if self.widths is not None:
            _require(len(self.widths) > 0 and all(w > 0 for w in self.widths), "widths",
                     f"must be positive channel counts, got {self.widths}")
        _require(self.convs_per_block is None or self.convs_per_block > 0, "convs_per_block", "must be >= 1")
        _require(self.kernel_size is None or (self.kernel_size > 0 and self.kernel_size % 2 == 1), "kernel_size",
                 f"must be a positive odd number, got {self.kernel_size}")
        for name in ("block_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None:
                _fraction(value, name)
        _require(self.batch_norm_momentum is None or 0 < self.batch_norm_momentum <= 1, "batch_norm_momentum",
                 f"must be in (0, 1], got {self.batch_norm_momentum}")
        _require(self.logit_scale is None or self.logit_scale > 0, "logit_scale", f"must be > 0, got {self.logit_scale}")

    @property
    def saved(self) -> bool:
        """Whether --model names a model this project trained (a folder or its Hub id), to fine-tune."""
        return getattr(self, "_saved_as", None) is not None

    @property
    def architecture(self) -> Optional[str]:
        """The preset or timm/NAME that --model is, or that the saved model it names was built as."""
        return getattr(self, "_saved_as", None) or self.model

    def overrides(self) -> dict[str, Any]:
        """The shape options the user set, as model-config keyword arguments."""
        names = ("widths", "convs_per_block", "kernel_size", "pooling", "batch_norm", "activation",
                 "block_dropout", "classifier_dropout", "stem", "batch_norm_momentum", "norm_scale", "identity_init",
                 "logit_scale")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


# Accelerate's trackers (accelerate.tracking.LOGGER_TYPE_TO_CLASS) and the package each needs.
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow",
            "comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}


def report_trackers(report_to: str) -> list[str]:
    """The trackers --report_to names ('all': every installed one; 'none': none); a ConfigError for an unknown
    one, or one whose package is not installed, that says what to install."""
    import importlib.util

    names = [name.strip() for name in report_to.split(",") if name.strip() and name.strip() != "none"]
    if names == ["all"]:
        return [name for name, package in TRACKERS.items() if importlib.util.find_spec(package) is not None]
    for name in names:
        _require(name in TRACKERS, "report_to", f"{name!r} is not a tracker; choose from {', '.join(TRACKERS)}, "
                                                "all or none (comma-separated for several)")
        _require(importlib.util.find_spec(TRACKERS[name]) is not None, "report_to",
                 f"{name} is not installed: pip install {TRACKERS[name].replace('_', '-')} (or drop it from "
                 "--report_to)")
    return names


@dataclass
class TrainingArguments:
    """How to train: output, optimisation, schedule, early stopping, checkpoints, logging."""

    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Where the model folder is written. Default: outputs/<dataset>-<model>."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into a folder that already holds a finished model."}
    )
    seed: int = field(default=42, metadata={"help": "Random seed for model initialisation, splits and data order."})
    recipe: Optional[Literal["airbench", "sgd_onecycle"]] = field(
        default=None, metadata={"help": f"The training recipe (recipes.py) that fills the optimizer, batch, schedule, "
                                        f"epoch and resizing options left unset: airbench (airbench94_muon) for "
                                        f"{_AIRBENCH_MODELS}, sgd_onecycle otherwise. The run prints its values."}
    )
    num_train_epochs: Optional[float] = field(
        default=None, metadata={"help": f"Training epochs (passes over the train split). Default: "
                                        f"{_A['num_train_epochs']:g} for {_AIRBENCH_MODELS} (on a CPU the first "
                                        f"{_A['resize_epochs_cpu'][0]} at 3/4 size, see --progressive_resize_epochs), "
                                        f"{_S['num_train_epochs']:g} otherwise."}
    )
    max_train_steps: Optional[int] = field(
        default=None, metadata={"help": "Stop after this many optimizer steps; overrides --num_train_epochs."}
    )
    time_budget: Optional[str] = field(
        default=None, metadata={"metavar": "DURATION",
                                "help": "Train the best model that fits this much training time (e.g. 5m, 900s, "
                                        "1h30m; seconds as history.json counts them: per-epoch validation and the "
                                        "final evaluation come on top). The run times a few steps on this host, then "
                                        "sets --num_train_epochs and --progressive_resize_epochs (and, for "
                                        f"{_AIRBENCH_MODELS} when 10 of its epochs fit, a wider net) and prints the "
                                        "plan. A resumed run keeps its plan."}
    )
    per_device_train_batch_size: Optional[int] = field(
        default=None, metadata={"help": f"Training images per step per process (capped at the train split's size). "
                                        f"Default for {_AIRBENCH_MODELS}: {_A['batch_cpu']} on CPU (half airbench's "
                                        f"{_A['batch_cuda']}: twice the steps per epoch, +0.5 points at 10 epochs "
                                        f"there), {_A['batch_cuda']} on a CUDA GPU (its steps are launch-bound, so half "
                                        f"as many reach 90%% about a quarter sooner); {_S['batch_cpu']} otherwise."}
    )
    per_device_eval_batch_size: Optional[int] = field(
        default=None, metadata={"help": f"Evaluation images per step per process. Default: {_A['eval_batch']}; "
                                        f"{RECIPES['finetune']['eval_batch']} for photos (the finetune recipe)."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches whose gradients are summed before each optimizer step."}
    )
    scale_lr: bool = field(
        default=False,
        metadata={"help": "Linear scaling rule: multiply --learning_rate by processes x --gradient_accumulation_steps "
                          "(--learning_rate is then the rate for one process's batch)."},
    )
    sync_batchnorm: bool = field(
        default=False,
        metadata={"help": "With several GPU processes, BatchNorm statistics over the global batch (SyncBatchNorm) "
                          "instead of each process's batch."},
    )
    optimizer: Optional[Literal["muon", "sgd", "adam", "adamw"]] = field(
        default=None,
        metadata={"help": f"muon: Muon for convolution kernels, SGD for the rest (airbench94_muon; its SGD rates suit "
                          f"{_AIRBENCH_MODELS}); sgd (Nesterov); adam; adamw. Default: {_A['optimizer']} for "
                          f"{_AIRBENCH_MODELS}, {_S['optimizer']} otherwise."},
    )
    learning_rate: Optional[float] = field(
        default=None, metadata={"help": f"Peak learning rate (with muon: the kernels' Muon step). Default: muon "
                                        f"{_MUON['learning_rate_at_2000']} x sqrt(batch / 2000) (airbench's "
                                        f"{_MUON['learning_rate_at_2000']} at its batch of 2000; 0.17 at 1000), "
                                        f"{_SGD['learning_rate']} for sgd (0.1 for cnn-basic, which has no BatchNorm), "
                                        f"{_ADAM['learning_rate']} for adam/adamw. "
                                        f"Batch: per process x accumulation steps."}
    )
    sgd_learning_rate: Optional[float] = field(
        default=None, metadata={"help": f"With --optimizer muon: peak SGD learning rate of the other parameters "
                                        f"(output layer, biases, BatchNorm), per mean-loss gradient. Default: "
                                        f"{_MUON['sgd_learning_rate_per_image']} x batch (airbench's per image, for "
                                        f"cnn-fast's 1/192-scaled logits: 670 at 1000)."}
    )
    bias_learning_rate_scale: Optional[float] = field(
        default=None, metadata={"help": f"Learning-rate multiplier of the biases and norm parameters, whose weight "
                                        f"decay is then divided by it (the same decay per step as the weights). "
                                        f"Unset: they train at the learning rate without decay; default "
                                        f"{_MUON['bias_learning_rate_scale']} with muon (airbench)."}
    )
    weight_decay: Optional[float] = field(
        default=None, metadata={"help": f"Weight decay (L2 for sgd/adam and muon's SGD part, decoupled for adamw; "
                                        f"Muon's kernels keep a fixed norm instead). Default: {_MUON['weight_decay']:g} "
                                        f"for muon (0.002 per step at 670), {_SGD['weight_decay']:g} otherwise."}
    )
    momentum: Optional[float] = field(
        default=None, metadata={"help": f"SGD momentum (muon: of its SGD part). Default: {_MUON['momentum']} for "
                                        f"muon, {_SGD['momentum']} for sgd."}
    )
    muon_momentum: float = field(default=0.6, metadata={"help": "With --optimizer muon: the kernels' momentum."})
    nesterov: bool = field(default=True, metadata={"help": "Use Nesterov momentum with SGD and Muon."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2."})
    label_smoothing: Optional[float] = field(
        default=None, metadata={"help": f"Cross-entropy label smoothing (fraction). Default: "
                                        f"{LABEL_SMOOTHING_DEFAULT}, except plain cross-entropy (0) for "
                                        f"{', '.join(LABEL_SMOOTHING)}."}
    )
    max_grad_norm: float = field(default=0.0, metadata={"help": "Clip gradients to this L2 norm; 0 disables."})
    lr_scheduler_type: Optional[Literal["constant", "linear", "onecycle", "triangle", "cosine", "plateau"]] = field(
        default=None,
        metadata={"help": f"constant; linear (warm-up then linear decay to 0); onecycle; triangle (linear from 0.2x to "
                          f"the peak over the warm-up, then linear to 0.07x: airbench); cosine (warm-up then cosine); "
                          f"plateau (reduce on a stalled validation metric). Default: {_A['lr_scheduler_type']} for "
                          f"{_AIRBENCH_MODELS}, {_S['lr_scheduler_type']} otherwise."},
    )
    warmup_ratio: Optional[float] = field(
        default=None, metadata={"help": f"Fraction of optimizer steps spent warming up (linear, triangle, cosine, "
                                        f"onecycle). Default: {_A['warmup_ratio']:g} for {_AIRBENCH_MODELS}, "
                                        f"{_S['warmup_ratio']:g} otherwise."}
    )
    plateau_patience: int = field(
        default=2, metadata={"help": "Plateau: epochs without improvement before the learning rate is cut."}
    )
    plateau_factor: float = field(default=0.5, metadata={"help": "Plateau: factor the learning rate is multiplied by."})
    metric_for_best_model: Optional[Literal["accuracy", "f1", "loss"]] = field(
        default=None, metadata={"help": f"Validation metric that picks the best epoch and drives early stopping. "
                                        f"Default: f1 (macro) when the train classes are imbalanced (largest / "
                                        f"smallest >= {IMBALANCED}), else accuracy."}
    )
    early_stopping_patience: Optional[int] = field(
        default=None, metadata={"help": "Stop after this many epochs without improvement; unset disables."}
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Minimum change of the metric that counts as an improvement."}
    )
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = field(
        default=None, metadata={"help": f"Mixed precision; default: Accelerate's config when launched with one, else "
                                        f"bf16 on a GPU that supports it, or for {_AIRBENCH_MODELS} on a CPU with "
                                        f"AVX512_BF16 or AMX; else no."}
    )
    channels_last: bool = field(
        default=True, metadata={"help": "Train in channels_last memory format (about 1.5x faster convolutions on CPU)."}
    )
    torch_compile: bool = field(
        default=False, metadata={"help": "torch.compile the model (pays on GPUs for long runs; costs a minute of compiling)."}
    )
    whiten_bias_epochs: int = field(
        default=3, metadata={"help": "Epochs the whitening stem's bias trains (--stem whiten; airbench: 3). After them "
                                     "it stays fixed, which spares the backward pass into the stem (about 8%% of a "
                                     "CPU step). One process only: under DDP the trained set is fixed, so it trains "
                                     "throughout."}
    )
    progressive_resize_epochs: Optional[int] = field(
        default=None, metadata={"help": f"Train the first N epochs on images downscaled to --progressive_resize_size "
                                        f"(progressive resizing: a 24x24 step of cnn-fast costs half a 32x32 one); the "
                                        f"later epochs, evaluation and the saved model use the full size. 0 disables. "
                                        f"Default on a CPU: {_A['resize_epochs_cpu'][0]}/{_A['resize_epochs_cpu'][1]} "
                                        f"of --num_train_epochs, rounded down, for {_AIRBENCH_MODELS} "
                                        f"({_A['resize_epochs_cpu'][0]} of their default {_A['num_train_epochs']:g}); "
                                        f"0 on a CUDA GPU (its steps are launch-bound: small images run no faster "
                                        f"there), for other models and with --max_train_steps."}
    )
    progressive_resize_size: Optional[int] = field(
        default=None, metadata={"help": "Side in pixels of the downscaled training images of --progressive_resize_epochs "
                                        "(antialiased bilinear). Default: 3/4 of --image_size."}
    )
    lookahead: bool = field(
        default=False, metadata={"help": "Lookahead weight averaging (airbench): from 30%% of the steps on, every 5 steps "
                                         "the weights are pulled into a running average whose decay grows as "
                                         "0.77 x progress^3, and replaced by it at every epoch's end."}
    )
    ema_decay: float = field(
        default=0.0, metadata={"help": "Exponential moving average of the weights, per optimizer step (e.g. 0.99); "
                                       "evaluation and the saved model use the average. 0 disables."}
    )
    tta: Optional[Literal["none", "flip", "flip_translate"]] = field(
        default=None, metadata={"help": "Test-time augmentation in the final evaluation (and each epoch's with "
                                        "--tta_each_epoch): mean logits over mirrored (and 1-pixel shifted) views. "
                                        "Applies only where horizontal flips are on (not for digits). Default: "
                                        "flip_translate on the resident path, none on the streaming path (as timm)."}
    )
    calibrate: bool = field(
        default=True, metadata={"help": "Fit a temperature T on the validation split's logits (Guo et al., 2017) and "
                                        "fold it into the classifier (its weights and bias divided by T): the saved "
                                        "model, pipeline() and the app give calibrated probabilities; accuracy is "
                                        "unchanged. metrics.json and the card report ECE, NLL and Brier before and "
                                        "after."}
    )
    robustness_report: bool = field(
        default=False, metadata={"help": "After training, score the test split under 13 common corruptions at 5 "
                                         "severities (CIFAR-10-C style, robustness.py) and write robustness.json and "
                                         "plots/robustness.png: about 65 extra passes over --robustness_samples "
                                         "images (a fifth more time for the CIFAR-10 default, so off by default; "
                                         "`python -m image_classifier robustness --model DIR` does it later)."}
    )
    robustness_samples: int = field(
        default=2000, metadata={"help": "Test images (the first ones) scored under each corruption and severity."}
    )
    tta_each_epoch: bool = field(
        default=False, metadata={"help": "Use --tta in the validation after every epoch too (learning curves, best-epoch "
                                         "choice, early stopping): flip_translate scores 6 views per image there, "
                                         "about a sixth more wall time for the fast recipe. Off: each epoch scores one "
                                         "view per image; the final evaluation uses --tta either way."}
    )
    resident_data: bool = field(
        default=True, metadata={"help": "Keep the decoded uint8 train split on the training device and draw batches "
                                        "by indexing (no DataLoader); off, or with --dataloader_num_workers > 0, "
                                        "uses a DataLoader."}
    )
    save_total_limit: int = field(default=2, metadata={"help": "Keep this many epoch checkpoints (the newest)."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder to continue from."}
    )
    report_to: str = field(
        default="none", metadata={"help": "Experiment trackers fed through Accelerate, comma-separated: "
                                          f"{', '.join(TRACKERS)}, 'all' (those installed) or 'none'. Each gets the "
                                          "config, the training loss and learning rate every --logging_steps, each "
                                          "epoch's metrics and the final test metrics (tensorboard logs under "
                                          "OUTPUT_DIR/runs)."}
    )
    logging_steps: int = field(
        default=10, metadata={"help": "Optimizer steps between training-loss reports (progress bar, --report_to)."}
    )

    def __post_init__(self):
        self.report_to = ",".join(report_trackers(self.report_to)) or "none"
        _require(self.logging_steps >= 1, "logging_steps", f"must be >= 1, got {self.logging_steps}")
        _require(self.num_train_epochs is None or self.num_train_epochs > 0, "num_train_epochs",
                 f"must be > 0, got {self.num_train_epochs}")
        _require(self.max_train_steps is None or self.max_train_steps > 0, "max_train_steps", "must be >= 1")
        if self.time_budget is not None:
            _require(self.num_train_epochs is None and self.max_train_steps is None, "time_budget",
                     "plans the number of epochs itself: drop --num_train_epochs / --max_train_steps, or drop "
                     "--time_budget")
            _require(self.progressive_resize_epochs in (None, 0), "progressive_resize_epochs",
                     "is planned by --time_budget (give 0 to train every epoch at full size, or drop it)")
            _require(self.time_budget_seconds >= 10, "time_budget", f"must be at least 10 seconds, got "
                                                                    f"{self.time_budget_seconds:g} s")
        for name in ("per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            _require(value is None or value >= 1, name, f"must be >= 1, got {value}")
        if self.label_smoothing is not None:
            _fraction(self.label_smoothing, "label_smoothing")
        _require(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 disables clipping)")
        _require(self.plateau_patience >= 0, "plateau_patience", "must be >= 0")
        _require(0 < self.plateau_factor < 1, "plateau_factor", "must be in (0, 1)")
        _require(self.early_stopping_patience is None or self.early_stopping_patience >= 1,
                 "early_stopping_patience", "must be >= 1")
        _require(self.early_stopping_threshold >= 0, "early_stopping_threshold", "must be >= 0")
        _require(self.whiten_bias_epochs >= 0, "whiten_bias_epochs", f"must be >= 0, got {self.whiten_bias_epochs}")
        _require(self.progressive_resize_epochs is None or self.progressive_resize_epochs >= 0,
                 "progressive_resize_epochs", f"must be >= 0 (0 disables), got {self.progressive_resize_epochs}")
        _require(self.progressive_resize_size is None or self.progressive_resize_size >= 8, "progressive_resize_size",
                 f"must be at least 8 pixels, got {self.progressive_resize_size}")
        _require(self.save_total_limit >= 1, "save_total_limit", "must be >= 1")
        _require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1) (0 disables), got {self.ema_decay}")

    def resolve_defaults(self, model: str, photos: bool = False) -> None:
        """Fill the options left unset from the recipe for `model` (recipes.py; photos: finetune) and the
        optimizer's defaults at the resolved batch, then check them."""
        cuda = training_on_cuda()
        self.recipe = self.recipe or recipe_for(model, photos)
        self.metric_for_best_model = self.metric_for_best_model or "accuracy"
        if self.label_smoothing is None:
            self.label_smoothing = LABEL_SMOOTHING.get(model, LABEL_SMOOTHING_DEFAULT)
        for name, value in schedule_defaults(self.recipe, cuda, self.num_train_epochs, self.max_train_steps).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        _require(self.max_train_steps is not None or self.progressive_resize_epochs < self.num_train_epochs,
                 "progressive_resize_epochs", f"must be fewer than --num_train_epochs ({self.num_train_epochs:g}): the "
                                              "last epochs train at the full size the model is evaluated and served at")
        _require(self.per_device_train_batch_size >= 1, "per_device_train_batch_size",
                 f"must be >= 1, got {self.per_device_train_batch_size}")
        _require(self.sgd_learning_rate is None or self.optimizer == "muon", "sgd_learning_rate",
                 "applies to --optimizer muon only")
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        for name, value in optimizer_defaults(self.optimizer, batch, model).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("learning_rate", "sgd_learning_rate", "bias_learning_rate_scale"):
            value = getattr(self, name)
            _require(value is None or value > 0, name, f"must be > 0, got {value}")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        _require(0 <= self.muon_momentum < 1, "muon_momentum", "must be in [0, 1)")
        _fraction(self.warmup_ratio, "warmup_ratio")

    @property
    def time_budget_seconds(self) -> Optional[float]:
        """--time_budget in seconds (None without one)."""
        return None if self.time_budget is None else parse_duration(self.time_budget, "time_budget")

    @property
    def greater_is_better(self) -> bool:
        return self.metric_for_best_model != "loss"


@dataclass
class HubArguments:
    """Pushing the finished model to the Hugging Face Hub."""

    push_to_hub: bool = field(default=False, metadata={"help": "Push the model folder to the Hub after training."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Repository to push to, as USER/NAME."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the repository as private."})
    hub_token: Optional[str] = field(
        default=None, metadata={"help": "Hub token; default: HF_TOKEN or the cached login. Never saved or logged."}
    )

    def __post_init__(self):
        if self.push_to_hub:
            _require(bool(self.hub_model_id) and self.hub_model_id.count("/") == 1, "hub_model_id",
                     "--push_to_hub needs --hub_model_id USER/NAME")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                      # macOS, Windows
        return max(1, os.cpu_count() or 1)


def training_on_cuda() -> bool:
    """Whether Accelerate will train on a CUDA GPU: one is visible and ACCELERATE_USE_CPU does not turn it off."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")



ARGUMENT_CLASSES = (DataArguments, ModelArguments, TrainingArguments, HubArguments)
SECRET_FIELDS = {"hub_token"}


@dataclass
class Config:
    """The resolved configuration of one run."""

    data: DataArguments = field(default_factory=DataArguments)
    model: ModelArguments = field(default_factory=ModelArguments)
    train: TrainingArguments = field(default_factory=TrainingArguments)
    hub: HubArguments = field(default_factory=HubArguments)

    def __post_init__(self):
        # The flags left to their defaults: `follow_data` may fill them again once the data has been looked at.
        self.unset = frozenset(f.name for part in (self.data, self.model, self.train, self.hub)
                               for f in dataclasses.fields(part) if getattr(part, f.name) is None)
        self._resolve(None)

    def _resolve(self, traits: Optional[DataTraits]) -> None:
        """Fill every unset flag: from the data's traits when known, else as for small images."""
        cuda, photos = training_on_cuda(), bool(traits and traits.photos)
        if self.model.model is None:
            self.model.model = default_model(cuda, photos)
        if photos and self.data.image_size is None:
            self.data.image_size = photo_image_size(traits, cuda)
        self.train.resolve_defaults(self.model.architecture, photos)
        if traits is not None and "metric_for_best_model" in self.unset and (traits.imbalance_ratio or 0) >= IMBALANCED:
            self.train.metric_for_best_model = "f1"
        self._resolve_path(traits)
        if self.train.output_dir is None:
            name = Path(self.data.dataset.rstrip("/")).name or "dataset"
            model = (f"from-{Path(self.model.model.rstrip('/')).name}" if self.model.saved
                     else self.model.model.replace('/', '-'))
            self.train.output_dir = os.path.join("outputs", f"{name}-{model}")

    def _resolve_path(self, traits: Optional[DataTraits]) -> Optional[str]:
        """The data path (left to the data stage while the data is unknown) and what follows it: loader workers,
        test-time augmentation, the flip schedule. Returns why that path, where it chose one."""
        why = None
        if self.data.streaming:
            _require(self.data.data_path in (None, "streaming"), "data_path",
                     "--streaming reads the train split as a stream, which only the streaming data path can train on: "
                     "drop --data_path resident (or --streaming)")
            _require(self.data.class_balance != "sampling", "class_balance",
                     "'sampling' draws images by position, which a stream (--streaming) cannot: use --class_balance loss")
            if self.data.data_path is None:
                self.data.data_path, why = "streaming", "--streaming (datasets' streaming mode): each image decoded as read"
        if traits is not None and self.data.data_path is None:
            size = self.data.image_size or traits.side
            channels = self.data.num_channels or (1 if traits.gray and not self.model.architecture.startswith("timm/") else 3)
            self.data.data_path, why = choose_data_path(traits, size, channels, self.data.resident_max_gib)
        streaming = self.data.data_path == "streaming"
        if self.data.dataloader_num_workers is None:      # see the flag's help for the measurement
            self.data.dataloader_num_workers = available_cores() if streaming and training_on_cuda() else 0
        if self.train.tta is None:
            self.train.tta = "none" if streaming else "flip_translate"
        # Alternation needs each image's identity and the epoch, which only ResidentBatches has.
        resident = (self.train.resident_data and self.data.dataloader_num_workers == 0 and not streaming
                    and self.data.class_balance != "sampling")
        if self.data.flip_schedule is None:
            self.data.flip_schedule = "alternate" if resident else "random"
        _require(resident or self.data.flip_schedule == "random", "flip_schedule",
                 "'alternate' needs the resident data path (--resident_data true, --dataloader_num_workers 0); "
                 "use --flip_schedule random with a DataLoader")
        return why

    def _reset(self, names) -> None:
        for part in (self.data, self.model, self.train, self.hub):
            for f in dataclasses.fields(part):
                if f.name in names and f.name in self.unset:
                    setattr(part, f.name, None)

    def follow_data(self, traits: DataTraits) -> list[str]:
        """Resolve the unset flags again for this data (photos: a timm backbone, the finetune recipe, a smaller
        input, the streaming path; imbalance: macro F1 picks the best epoch); return the lines to print.
        `follow_data_path` says which data path (call it again once the model has fixed the input size)."""
        self._reset(self.unset)
        self._resolve(traits)
        d, t = self.data, self.train
        notes = []
        if traits.photos and "model" in self.unset:
            notes.append(f"Photos: the default model is {self.model.model} at {d.image_size}x{d.image_size} with the "
                         f"{t.recipe} recipe (--model, --image_size and --recipe override them)")
        if "metric_for_best_model" in self.unset:
            ratio = traits.imbalance_ratio
            why = (f"the train classes are imbalanced ({ratio:g}:1 >= {IMBALANCED:g}:1), so accuracy would favour the "
                   "large ones" if t.metric_for_best_model == "f1" else
                   f"the train classes are balanced enough ({ratio:g}:1 < {IMBALANCED:g}:1)" if ratio else
                   "a class has no training image")
            notes.append(f"The best epoch is picked by validation {t.metric_for_best_model}: {why} "
                         "(--metric_for_best_model overrides it)")
        return notes

    def apply_plan(self, values: dict[str, Any]) -> None:
        """Set these flags (a --time_budget plan: epochs, resizing, a tier's net and batch; the caller leaves out
        those the user gave) and fill the recipe's values that follow them again (the learning rates follow the
        batch)."""
        for part in (self.data, self.model, self.train, self.hub):
            for f in dataclasses.fields(part):
                if f.name in values:
                    setattr(part, f.name, values[f.name])
        follow = (set(RECIPE_FLAGS) | {"per_device_eval_batch_size"}) & self.unset - set(values)
        self._reset(follow)
        self.unset = self.unset - set(values)
        self.train.resolve_defaults(self.model.architecture)

    def follow_data_path(self, traits: DataTraits) -> str:
        """Choose the data path again for the input size as it now stands (a pretrained timm model may have set it)
        and return the line that says which and why."""
        self._reset({"data_path", "dataloader_num_workers", "tta", "flip_schedule"})
        why = self._resolve_path(traits)
        d = self.data
        return (f"Data path {d.data_path}" + (f": {why}" if why else " (--data_path)")
                + (f"; {d.dataloader_num_workers} loader worker(s)" if d.data_path == "streaming" else ""))

    def to_dict(self) -> dict[str, Any]:
        """Flat {flag: value} of every option, secrets removed (re-parses with `parse_config`)."""
        flat: dict[str, Any] = {}
        for part in (self.data, self.model, self.train, self.hub):
            flat.update(dataclasses.asdict(part))
        for name in SECRET_FIELDS:
            flat.pop(name, None)
        return flat


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in --help, except "(default: None)": those options say in words what fills them."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)

    def _format_action_invocation(self, action):
        # '--image_size N' once: not also HfArgumentParser's '--image-size' alias (it still parses)
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return f"{action.option_strings[0]} {self._format_args(action, _metavar(action))}"


def _metavar(action) -> str:
    """A short placeholder for a flag's value by its type: N, X, TEXT, BOOL."""
    if action.metavar:
        return action.metavar
    kind = getattr(action.type, "__name__", "")
    return {"int": "N", "float": "X", "string_to_bool": "BOOL"}.get(kind, "TEXT")


# --help groups, one per stage of a run, in order: (title, what it holds). Each flag is in its class's group
# (data, model, optimisation, Hub) unless HELP_STAGE_OF names another.
HELP_GROUPS = {
    "data": "where the images come from, how they are split, decoded and loaded",
    "augmentation": "training-time changes to the images (each off at 0 / false / none)",
    "model": "which network: a preset, a timm architecture, or a model this project trained (to fine-tune)",
    "optimisation": "recipe, optimizer, schedule, batch and precision; the recipe fills what is not given",
    "evaluation": "the best epoch, early stopping, test-time augmentation, calibration, robustness",
    "output": "where the model folder goes, checkpoints, resuming, trackers",
    "hub": "pushing the model folder to the Hugging Face Hub",
}
HELP_STAGE_OF = {
    **dict.fromkeys(["crop_scale", "augment", "random_crop_padding", "horizontal_flip", "flip_schedule",
                     "rotation_degrees", "zoom", "color_jitter", "auto_augment", "random_erasing", "mixup_alpha",
                     "cutmix_alpha"], "augmentation"),
    **dict.fromkeys(["per_device_eval_batch_size", "metric_for_best_model", "early_stopping_patience",
                     "early_stopping_threshold", "tta", "tta_each_epoch", "calibrate", "robustness_report",
                     "robustness_samples"], "evaluation"),
    **dict.fromkeys(["output_dir", "overwrite_output_dir", "save_total_limit", "resume_from_checkpoint",
                     "report_to", "logging_steps"], "output"),
}
_CLASS_STAGE = {"DataArguments": "data", "ModelArguments": "model", "TrainingArguments": "optimisation",
                "HubArguments": "hub"}


def _parser():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ARGUMENT_CLASSES, formatter_class=_HelpFormatter,
                              usage="%(prog)s [CONFIG.yaml|CONFIG.json] [--FLAG VALUE ...]",
                              description="Train an image classifier and write its model folder. Flags override a "
                                          "config file; every flag left out is filled from the data and the recipe, "
                                          "and the resolved values are saved in OUTPUT_DIR/training_config.json.")
    _group_by_stage(parser)
    parser.error = _one_line_error    # argparse would print the whole usage before the problem
    # HfArgumentParser wants a value after an Optional[bool] flag (default None: decided later); a bare
    # `--pretrained` means true there too, as it does for the plain bool flags.
    for action in parser._actions:
        if action.type is not None and getattr(action.type, "__name__", "") == "string_to_bool" and action.nargs is None:
            action.nargs, action.const = "?", True
    return parser


def _group_by_stage(parser: argparse.ArgumentParser) -> None:
    """Move each flag into its stage's --help group (HELP_GROUPS); hide HfArgumentParser's `--no_FLAG` twins
    (`--FLAG false` says the same), so each flag is listed once."""
    stage_of = {f.name: HELP_STAGE_OF.get(f.name, _CLASS_STAGE[cls.__name__])
                for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    groups = {stage: parser.add_argument_group(f"{stage} options", about) for stage, about in HELP_GROUPS.items()}
    for action in list(parser._actions):
        if action.dest not in stage_of:
            continue
        if any(option.startswith("--no_") for option in action.option_strings):
            action.help = argparse.SUPPRESS
        for group in parser._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)
        groups[stage_of[action.dest]]._group_actions.append(action)


def _one_line_error(message: str) -> None:
    """argparse's error ('argument --optimizer: invalid choice: ...') as a ConfigError naming the flag, with the
    closest valid choice."""
    import re

    match = re.match(r"argument (?:-\w+/)?--(\w+)(?:/--[\w-]+)?: (.*)", message)
    if not match:
        raise ConfigError("config", message)
    flag, problem = match.groups()
    choice = re.match(r"invalid choice: '([^']*)' \(choose from (.*)\)", problem)
    if choice:
        options = re.findall(r"'([^']*)'", choice.group(2))
        problem = f"{choice.group(1)!r} is not one of {', '.join(options)}." + _did_you_mean(choice.group(1), options)
    raise ConfigError(flag, problem)


def _did_you_mean(word: str, options: list[str], prefix: str = "") -> str:
    """' Did you mean X?' for the option closest to `word` (difflib), else ''."""
    import difflib

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" Did you mean {prefix}{close[0]}?" if close else ""


def _read_config_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError("config", f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            values = json.load(f)
        else:
            import yaml

            values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ConfigError("config", f"{path} must hold a mapping of flag names to values")
    return _check_known(values, path)


def _check_known(values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` if every key is a flag; else a ConfigError naming the first that is not."""
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(unknown[0], f"is not an option (in {where}).{_did_you_mean(unknown[0], sorted(known))} "
                                      "Run `python train.py --help` for the list.")
    return values


def parse_config(argv: Optional[list[str]] = None, defaults: Optional[dict[str, Any]] = None) -> Config:
    """Parse flags, or a JSON/YAML file followed by optional flag overrides, into a `Config`.

    `python train.py --dataset mnist`, `python train.py run.yaml`, `python train.py run.yaml --seed 1`.
    `defaults` ({flag: value}, e.g. a saved run's training_config.json) stand where no flag is given.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if defaults:
        parser.set_defaults(**_check_known(defaults, "the saved config"))
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        parser.set_defaults(**_read_config_file(argv.pop(0)))
    *parts, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        flag = unknown[0].lstrip("-").split("=")[0]
        known = [f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)]
        raise ConfigError(flag, f"is not an option (got {' '.join(unknown)}).{_did_you_mean(flag, known, '--')} Run "
                                "`python train.py --help` for the list.")
    return Config(*parts)


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config (no secrets) as JSON, atomically."""
    from .files import write_json

    write_json(path, config.to_dict())
