"""Model presets and factory: the small CNN (a `transformers` model with its code beside the weights)
and any timm architecture (through transformers' `TimmWrapperForImageClassification`, no remote code).

`create_model("cnn-fast", class_names=[...], num_channels=3, image_size=32)` gives a
`SmallCNNForImageClassification`; `create_model("timm/resnet10t", ...)` a `TimmWrapperForImageClassification`
(`pretrained=True`: timm's weights with a new classifier). `save_pretrained` writes either as a folder that
stock `transformers` (and, for timm models, stock `timm`) loads; the timm specifics live in `timm_models`.
`summarize_model` gives a per-layer table with parameters and FLOPs.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel

from .configuration_small_cnn import SmallCNNConfig
from .modeling_small_cnn import SmallCNNForImageClassification
from .timm_models import (TIMM_OVERRIDES, check_pretrained_weights, create_timm_model, is_timm_model,
                          save_timm_model, timm_data_config, timm_model_name)

__all__ = ["PRESETS", "create_model", "count_parameters", "summarize_model", "is_timm_model", "input_normalization",
           "save_pretrained", "train_stem_bias", "prepare_model_config", "load_trained_model", "replace_classifier",
           "class_names_of"]

# Shape options of each small-CNN preset (SmallCNNConfig keyword arguments).
_AIRBENCH = dict(convs_per_block=2, kernel_size=3, pooling="max", batch_norm=True, activation="gelu",
                 block_dropout=0.0, hidden_size=0, classifier_dropout=0.0, global_pool="max", stem="whiten",
                 batch_norm_momentum=0.4, norm_scale=False, identity_init=True, initializer_range=1.0,
                 # logit_scale 1/(last of the widths), after --widths: the head's weights have unit variance, so its
                 # logits are scaled down by the number of features it sums to stay O(1) (1/192 for cnn-fast)
                 logits_per_width=True)
PRESETS: dict[str, dict[str, Any]] = {
    # The textbook net: Conv(32)-ReLU-MaxPool, Conv(64)-ReLU-MaxPool, Flatten, Dense(128)-ReLU, Dropout(0.5), output.
    "cnn-basic": dict(widths=[32, 64], convs_per_block=1, kernel_size=3, pooling="max", batch_norm=False,
                      activation="relu", block_dropout=0.0, hidden_size=128, classifier_dropout=0.5,
                      global_pool="flatten"),
    # The default for 32x32 images: airbench94's net at 3/4 width. A fixed 2x2 patch-whitening stem, 3 blocks
    # of 2 convs (BatchNorm with the scale fixed at 1, GELU), convolutions started as identities, global max
    # pool, a linear head with unit-variance weights and logits scaled by 1/192 (airbench94_muon). About 69M
    # multiply-adds per 32x32 image, 0.9M parameters; trained with Muon by default (see TrainingArguments).
    "cnn-fast": dict(widths=[48, 192, 192], **_AIRBENCH),
    # airbench94's net at full width (about 1.8x the compute of cnn-fast on a CPU): for a GPU or a long run.
    "cnn-wide": dict(widths=[64, 256, 256], **_AIRBENCH),
}

_SHAPE_OPTIONS = frozenset({"widths", "convs_per_block", "kernel_size", "pooling", "batch_norm", "activation",
                            "block_dropout", "classifier_dropout", "hidden_size", "global_pool", "stem",
                            "batch_norm_momentum", "norm_scale", "identity_init", "logit_scale"})


def create_model(name: str, *, class_names: list[str], num_channels: int, image_size: int,
                 overrides: dict[str, Any] | None = None, pretrained: bool = False,
                 crop_pct: float | None = None) -> PreTrainedModel:
    """A freshly initialised model: preset `name` with `overrides` (from `ModelArguments.overrides()`) applied,
    or the timm architecture `name` ('timm/NAME' or a bare timm name), from timm's pretrained weights when
    `pretrained` (with a new classifier).

    `class_names[i]` is the label of logit i (`config.id2label`); images are `num_channels` x `image_size`
    x `image_size`; `crop_pct` (streaming path) is the evaluation crop a timm model's saved data config
    records (None: images squashed to the square). Raises ValueError for an unknown preset or override.
    """
    if not class_names:
        raise ValueError("class_names must name at least one class")
    timm_name = None if name in PRESETS else timm_model_name(name)
    if timm_name is not None:
        return create_timm_model(timm_name, list(class_names), num_channels, image_size, dict(overrides or {}),
                                  pretrained, crop_pct)
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(PRESETS)}, "
                         "or a timm architecture as timm/NAME")
    if pretrained:
        raise ValueError(f"{name} is a small CNN: it has no pretrained weights (those come with timm/NAME models)")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - _SHAPE_OPTIONS)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid: {sorted(_SHAPE_OPTIONS)}")
    options = {**PRESETS[name], **overrides}
    if options.pop("logits_per_width", False) and "logit_scale" not in overrides:   # 1/384 with --widths 128 384 384
        options["logit_scale"] = 1 / options["widths"][-1]
    id2label = {i: str(label) for i, label in enumerate(class_names)}
    config = SmallCNNConfig(num_channels=num_channels, image_size=image_size, **options,
                            id2label=id2label, label2id={label: i for i, label in id2label.items()})
    return SmallCNNForImageClassification(config)


def load_trained_model(source: str, class_names: list[str]) -> PreTrainedModel:
    """A model this project trained (folder or Hub id), to train further on data with `class_names`: its weights,
    without the temperature a calibrated run folded into the classifier, and a new classifier where the classes
    differ from the model's (by name or order; kept where they match, to continue training)."""
    from transformers import TimmWrapperForImageClassification

    from .calibration import unfold_temperature
    from .model_folder import CONFIG, read_json

    kind = (read_json(source, CONFIG) or {}).get("model_type")
    cls = SmallCNNForImageClassification if kind == "small_cnn" else TimmWrapperForImageClassification
    model = cls.from_pretrained(source)
    unfold_temperature(model)
    if class_names_of(model) != list(class_names):
        replace_classifier(model, class_names)
    return model


def class_names_of(model: PreTrainedModel) -> list[str]:
    """The label of each logit, in order (`config.id2label`)."""
    return [str(model.config.id2label[i]) for i in range(model.config.num_labels)]


@torch.no_grad()
def replace_classifier(model: PreTrainedModel, class_names: list[str]) -> None:
    """A freshly initialised `len(class_names)`-way output layer (the small CNN's initialisation, or timm's
    `reset_classifier`), and the config's labels set to `class_names`."""
    if is_timm_model(model):
        model.timm_model.reset_classifier(len(class_names))
    else:
        model.classifier = nn.Linear(model.classifier.in_features, len(class_names))
        model._init_weights(model.classifier)
    id2label = {i: str(label) for i, label in enumerate(class_names)}
    model.config.num_labels = len(class_names)
    model.config.id2label, model.config.label2id = id2label, {label: i for i, label in id2label.items()}
    model.num_labels = len(class_names)


def needs_data_init(model: nn.Module) -> bool:
    """Whether the model initialises something from training images (a whitening stem: cnn-fast, cnn-wide)."""
    return getattr(getattr(model, "config", None), "stem", "none") == "whiten"


def init_from_data(model: nn.Module, images: torch.Tensor) -> None:
    """Set what a model initialises from the training data: the whitening stem, from normalized
    images (N, C, H, W), a few thousand. A no-op for models without one (every other preset, timm)."""
    if needs_data_init(model):
        model.init_whitening(images)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once); only those with requires_grad when `trainable_only`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _shape(output: Any) -> str:
    """'64x16x16' for a (1, 64, 16, 16) tensor (batch dimension dropped); several for tuples."""
    if isinstance(output, torch.Tensor):
        return "x".join(map(str, output.shape[1:])) or "scalar"
    if isinstance(output, (tuple, list)):
        return ", ".join(_shape(o) for o in output if isinstance(o, torch.Tensor)) or "-"
    return "-"


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def summarize_model(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """A table of every leaf layer (output shape, parameters, FLOPs), then totals, for ONE (C, H, W) image.

    FLOPs count the forward pass of one image in eval mode as measured by torch's `FlopCounterMode`:
    matrix products and convolutions only, one multiply-add = 2 FLOPs (pooling, norms and activations
    are not counted). Runs on a copy, so the model's weights and train/eval mode are untouched.
    """
    probe = copy.deepcopy(model).eval()
    first = next(probe.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    device = first.device if first is not None else None
    x = torch.zeros(1, *input_shape, dtype=dtype, device=device)  # (1, C, H, W)

    leaves = [(name, module) for name, module in probe.named_modules() if name and not any(module.children())]
    shapes: dict[str, str] = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, _shape(out)))
             for name, module in leaves]
    try:
        with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
            probe(x)
    finally:
        for hook in hooks:
            hook.remove()
    root = type(probe).__name__
    flop_counts = counter.get_flop_counts()
    total_flops = counter.get_total_flops()

    rows = [("input", "", "x".join(map(str, input_shape)), "", "")]
    leaf_params = 0
    for name, module in leaves:
        params = sum(p.numel() for p in module.parameters(recurse=False))
        leaf_params += params
        flops = sum(flop_counts.get(f"{root}.{name}", {}).values())
        rows.append((name, type(module).__name__, shapes.get(name, "(not called)"), f"{params:,}",
                     _human(flops) if flops else ""))
    total = count_parameters(probe)
    if total != leaf_params:  # parameters held directly by container modules (e.g. tokens, scales)
        rows.append(("(other)", "", "", f"{total - leaf_params:,}", ""))

    header = ("Layer", "Type", "Output shape", "Params", "FLOPs")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row) -> str:
        return "  ".join(str(v).ljust(w) if i < 3 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths)))

    rule = "-" * len(line(header))
    trainable = count_parameters(probe, trainable_only=True)
    return "\n".join([
        f"{type(model).__name__}  input {tuple(input_shape)} (C, H, W)",
        rule, line(header), rule, *map(line, rows), rule,
        f"Total parameters:     {total:,}",
        f"Trainable parameters: {trainable:,}",
        f"Non-trainable:        {total - trainable:,}",
        f"Forward FLOPs per image: {total_flops:,} ({_human(total_flops)} FLOPs = {_human(total_flops / 2)} "
        "multiply-adds; 1 multiply-add = 2 FLOPs; convolutions and matmuls only)",
    ])


def estimate_training_bytes(model: nn.Module, batch_size: int, input_shape: tuple[int, int, int]) -> int:
    """Bytes one training step of `model` holds at `batch_size` images of (C, H, W) (see `training_bytes`)."""
    per_image, fixed = training_bytes(model, input_shape)
    return batch_size * per_image + fixed


def training_bytes(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(bytes per image, bytes whatever the batch) of one float32 training step of `model` on (C, H, W) images:
    per image, every leaf layer's output (what autograd keeps for the backward pass) plus the largest two again
    (the gradients flowing back); fixed, four copies of the weights (weights, gradients, two optimizer moments).

    Measured by a forward pass of 2 images on a copy of the model; a bound on the order, not to the byte
    (bench/data_throughput.py prints it beside the measured peak).
    """
    probe = copy.deepcopy(model).train()
    first = next(probe.parameters(), None)
    x = torch.zeros(2, *input_shape, device=first.device if first is not None else None)
    sizes: list[int] = []

    def count(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * 4 // 2)          # float32 bytes per image
    leaves = [m for m in probe.modules() if not any(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            probe(x)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes) + sum(sorted(sizes)[-2:]), 4 * 4 * count_parameters(probe)


def input_normalization(model: nn.Module, mean: list[float], std: list[float]) -> tuple[list[float], list[float]]:
    """The mean/std to normalize the model's inputs with: a timm model's own (its data config: the
    pretrained weights expect them), else the given ones (the training split's statistics)."""
    if not is_timm_model(model):
        return list(mean), list(std)
    config = timm_data_config(model)
    return [float(m) for m in config["mean"]], [float(s) for s in config["std"]]


def save_pretrained(model: nn.Module, folder: str | os.PathLike) -> None:
    """`model.save_pretrained(folder)`; a timm model as a folder stock timm loads too (`save_timm_model`)."""
    if is_timm_model(model):
        save_timm_model(model, folder)
    else:
        model.save_pretrained(folder)


def train_stem_bias(model: nn.Module, trainable: bool) -> bool:
    """Let the whitening stem's bias train or hold it fixed (its weight is always fixed); returns whether the
    model has one. Held fixed, no gradient flows into the stem at all."""
    stem = getattr(model, "stem", None)
    if stem is None or getattr(stem, "conv", None) is None or stem.conv.bias is None:
        return False
    stem.conv.bias.requires_grad_(trainable)
    return True


def prepare_model_config(config) -> list[str]:
    """Check --model and its options against the data options before anything is loaded; return notes to print.

    For a timm model: input is RGB (`num_channels` 3); with --pretrained the input size defaults to the
    pretrained weights' own (`--image_size` overrides), and the weights are checked at once
    (`check_pretrained_weights`). Small-CNN presets refuse the timm-only options. Raises ConfigError.
    Sets `config.data.num_channels` / `image_size` where it decides them, so training_config.json holds
    what the run used.
    """
    from .config import ConfigError

    m, d = config.model, config.data
    if m.saved:
        return _prepare_saved_model(config)
    try:
        name = None if m.model in PRESETS else timm_model_name(m.model)
    except ValueError as error:
        raise ConfigError("model", str(error)) from None
    if name is None:
        if m.model not in PRESETS:
            raise ConfigError("model", f"unknown model {m.model!r}{_not_a_model_folder(m.model)}; choose one of: "
                                       f"{', '.join(PRESETS)}, a timm architecture as timm/NAME (for example "
                                       "timm/resnet10t), or the folder (or Hub id) of a model this project trained")
        for flag, value in (("pretrained", m.pretrained), ("freeze_backbone_epochs", m.freeze_backbone_epochs),
                            ("backbone_learning_rate", m.backbone_learning_rate)):
            if value:
                raise ConfigError(flag, f"applies to timm models only (--model timm/NAME); {m.model} is a small "
                                        "CNN trained from scratch")
        if PRESETS[m.model]["global_pool"] == "flatten" and config.train.progressive_resize_epochs:
            raise ConfigError("progressive_resize_epochs", f"needs a model that takes any input size: {m.model} "
                                                           "flattens a fixed-size feature map; use cnn-fast, "
                                                           "cnn-wide or a timm model, or drop the flag")
        return []
    notes = []
    unknown = sorted(set(m.overrides()) - set(TIMM_OVERRIDES))
    if unknown:
        default = " (the default model for photos; pass --model cnn-fast to shape a small CNN)" if (
            "model" in getattr(config, "unset", ())) else ""
        raise ConfigError(unknown[0], f"shapes the small-CNN presets; timm model {name}{default} takes only "
                                      f"{', '.join('--' + k for k in TIMM_OVERRIDES)}")
    if d.num_channels not in (None, 3):
        raise ConfigError("num_channels", "timm models take RGB input: grayscale images are repeated into 3 "
                                          "channels; leave --num_channels unset (or 3)")
    d.num_channels = 3
    if m.pretrained is None:                # the photo default: its weights where they can be had
        m.pretrained = False
        if "model" in getattr(config, "unset", ()) and "." in name:
            try:
                check_pretrained_weights(name)
                m.pretrained = True
            except ConfigError:
                notes.append(f"{name}: its pretrained weights cannot be downloaded here (no network, or "
                             "HF_HUB_OFFLINE), so it trains from scratch; with network it starts from them")
                name = name.split(".")[0]   # no 'names pretrained weights' note below
    if d.crop_pct is None:                  # the streaming path's evaluation crop: the weights' own
        import timm

        source_cfg = timm.models.get_pretrained_cfg(m.model.removeprefix("timm/"))
        d.crop_pct = float(source_cfg.crop_pct) if source_cfg is not None and source_cfg.crop_pct else None
    if m.pretrained:
        import timm

        source = check_pretrained_weights(name)
        size = timm.models.get_pretrained_cfg(name).input_size[-1]
        if d.image_size is None:
            d.image_size = int(size)
            notes.append(f"--pretrained: images are resized to {size}x{size}, the input size {name} was trained "
                         f"at (--image_size overrides it)")
        notes.append(f"--pretrained: {name} starts from the weights of {source}; its classifier is new")
    elif "." in name:
        notes.append(f"{name} names pretrained weights, but without --pretrained it trains from scratch")
    return notes


def _not_a_model_folder(name: str) -> str:
    """Why a path given as --model is no model to fine-tune ('' for a name that is not a path)."""
    from .files import looks_like_local_path

    if os.path.isdir(name):
        return " (that folder holds no model this project trained: no config.json of a small CNN or timm model)"
    return " (no such folder)" if looks_like_local_path(name) else ""


def _prepare_saved_model(config) -> list[str]:
    """`prepare_model_config` for a model this project trained: its input size and channels (from its config.json)
    fix the data's; shape options and --pretrained do not apply. Returns the note to print."""
    from .config import ConfigError
    from .model_folder import CONFIG, read_json

    m, d = config.model, config.data
    saved = read_json(m.model, CONFIG) or {}
    timm_input = (saved.get("pretrained_cfg") or {}).get("input_size")
    size, channels = (int(timm_input[-1]), 3) if timm_input else (int(saved["image_size"]), int(saved["num_channels"]))
    for flag, value in (("pretrained", m.pretrained), *m.overrides().items()):
        if value:
            raise ConfigError(flag, f"{m.model} is a trained model: its shape is fixed and its weights are its own; "
                                    f"drop --{flag}")
    for flag, value in (("image_size", size), ("num_channels", channels)):
        if getattr(d, flag) not in (None, value):
            raise ConfigError(flag, f"{m.model} takes {channels} x {size} x {size} images: its --{flag} is {value}; "
                                    f"drop --{flag} (images are resized to it, and grayscale ones repeated into 3 "
                                    "channels for an RGB model)")
    d.image_size, d.num_channels = size, channels
    if timm_input and d.crop_pct is None and (saved.get("pretrained_cfg") or {}).get("crop_pct"):
        d.crop_pct = float(saved["pretrained_cfg"]["crop_pct"])
    return [f"Fine-tuning {m.model} (built as {m.architecture}, {channels} x {size} x {size} input, trained with its "
            f"recipe): its weights, its preprocessing, and a new classifier where the classes are not its own"]
