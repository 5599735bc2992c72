"""Model presets and factory: the small CNN (a `transformers` model with its code beside the weights).

`create_model("cnn-fast", class_names=[...], num_channels=3, image_size=32)` gives a
`SmallCNNForImageClassification`; `summarize_model` gives a per-layer table with parameters and FLOPs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel

from .configuration_small_cnn import SmallCNNConfig
from .modeling_small_cnn import SmallCNNForImageClassification

__all__ = ["PRESETS", "create_model", "count_parameters", "summarize_model"]

# Shape options of each small-CNN preset (SmallCNNConfig keyword arguments).
PRESETS: dict[str, dict[str, Any]] = {
    # The textbook net: Conv(32)-ReLU-MaxPool, Conv(64)-ReLU-MaxPool, Flatten, Dense(128)-ReLU, Dropout(0.5), output.
    "cnn-basic": dict(widths=[32, 64], convs_per_block=1, kernel_size=3, pooling="max", batch_norm=False,
                      activation="relu", block_dropout=0.0, hidden_size=128, classifier_dropout=0.5,
                      global_pool="flatten"),
    # The default for 32x32 images: 3 blocks of 2 convs with BatchNorm and GELU, global max pool, linear head.
    # About 68M multiply-adds per 32x32 image, 1.2M parameters.
    "cnn-fast": dict(widths=[64, 128, 256], convs_per_block=2, kernel_size=3, pooling="max", batch_norm=True,
                     activation="gelu", block_dropout=0.0, hidden_size=0, classifier_dropout=0.0,
                     global_pool="max"),
    # cnn-fast at twice the width (about 4x the compute): for a GPU or a long run.
    "cnn-wide": dict(widths=[128, 256, 512], convs_per_block=2, kernel_size=3, pooling="max", batch_norm=True,
                     activation="gelu", block_dropout=0.0, hidden_size=0, classifier_dropout=0.1,
                     global_pool="max"),
}

_SHAPE_OPTIONS = frozenset({"widths", "convs_per_block", "kernel_size", "pooling", "batch_norm", "activation",
                            "block_dropout", "classifier_dropout", "hidden_size", "global_pool"})


def create_model(name: str, *, class_names: list[str], num_channels: int, image_size: int,
                 overrides: dict[str, Any] | None = None) -> PreTrainedModel:
    """A freshly initialised model: preset `name` with `overrides` (from `ModelArguments.overrides()`) applied.

    `class_names[i]` is the label of logit i (`config.id2label`); images are `num_channels` x `image_size`
    x `image_size`. Raises ValueError for an unknown preset or override.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(PRESETS)}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - _SHAPE_OPTIONS)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid: {sorted(_SHAPE_OPTIONS)}")
    if not class_names:
        raise ValueError("class_names must name at least one class")
    id2label = {i: str(label) for i, label in enumerate(class_names)}
    config = SmallCNNConfig(num_channels=num_channels, image_size=image_size, **{**PRESETS[name], **overrides},
                            id2label=id2label, label2id={label: i for i, label in id2label.items()})
    return SmallCNNForImageClassification(config)


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
