"""Model presets and factory: the small CNN (a `transformers` model with its code beside the weights)
and any timm architecture (through transformers' `TimmWrapperForImageClassification`, no remote code).

`create_model("cnn-fast", class_names=[...], num_channels=3, image_size=32)` gives a
`SmallCNNForImageClassification`; `create_model("timm/resnet10t", ...)` a `TimmWrapperForImageClassification`
(`pretrained=True`: timm's weights with a new classifier). `save_pretrained` writes either as a folder that
stock `transformers` (and, for timm models, stock `timm`) loads. `parameter_groups` / `freeze_backbone` give
the transfer-learning split (lower backbone learning rate, frozen backbone). `summarize_model` gives a
per-layer table with parameters and FLOPs.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel

from .configuration_small_cnn import SmallCNNConfig
from .modeling_small_cnn import SmallCNNForImageClassification

__all__ = ["PRESETS", "create_model", "count_parameters", "summarize_model", "timm_model_name", "is_timm_model",
           "timm_pretrained_source", "check_pretrained_weights", "input_normalization", "save_pretrained",
           "parameter_groups", "freeze_backbone", "train_stem_bias", "prepare_model_config"]

# A preset's logit_scale of 1/(last of its widths), resolved by create_model after --widths: the head's weights
# have unit variance, so its logits are scaled down by the number of features it sums to stay O(1).
LOGITS_BY_WIDTH = "1/width"

# Shape options of each small-CNN preset (SmallCNNConfig keyword arguments).
_AIRBENCH = dict(convs_per_block=2, kernel_size=3, pooling="max", batch_norm=True, activation="gelu",
                 block_dropout=0.0, hidden_size=0, classifier_dropout=0.0, global_pool="max", stem="whiten",
                 batch_norm_momentum=0.4, norm_scale=False, identity_init=True, initializer_range=1.0,
                 logit_scale=LOGITS_BY_WIDTH)
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
                 overrides: dict[str, Any] | None = None, pretrained: bool = False) -> PreTrainedModel:
    """A freshly initialised model: preset `name` with `overrides` (from `ModelArguments.overrides()`) applied,
    or the timm architecture `name` ('timm/NAME' or a bare timm name), from timm's pretrained weights when
    `pretrained` (with a new classifier).

    `class_names[i]` is the label of logit i (`config.id2label`); images are `num_channels` x `image_size`
    x `image_size`. Raises ValueError for an unknown preset or override.
    """
    if not class_names:
        raise ValueError("class_names must name at least one class")
    timm_name = timm_model_name(name)
    if timm_name is not None:
        return _create_timm_model(timm_name, list(class_names), num_channels, image_size, dict(overrides or {}),
                                  pretrained)
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
    if options.get("logit_scale") == LOGITS_BY_WIDTH:     # after --widths: 1/384 with --widths 128 384 384
        options["logit_scale"] = 1 / options["widths"][-1]
    id2label = {i: str(label) for i, label in enumerate(class_names)}
    config = SmallCNNConfig(num_channels=num_channels, image_size=image_size, **options,
                            id2label=id2label, label2id={label: i for i, label in id2label.items()})
    return SmallCNNForImageClassification(config)


def init_from_data(model: nn.Module, images: torch.Tensor) -> None:
    """Set what a model initialises from the training data: the whitening stem, from normalized
    images (N, C, H, W), a few thousand. A no-op for models without one (every other preset, timm)."""
    if getattr(getattr(model, "config", None), "stem", "none") == "whiten":
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


# ------------------------------------------------------------------------------------------------
# timm architectures, through transformers' TimmWrapperForImageClassification
# ------------------------------------------------------------------------------------------------

TIMM_PREFIX = "timm/"
# How the data stage turns any image into model input (data.decode_image / build_image_processor: squash
# to a square, bilinear). Written into the saved timm data config, so that timm's own eval transform
# (`timm.data.create_transform(**timm.data.resolve_data_config(model=m))`) does the same.
TIMM_INPUT = {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash"}
# Small-CNN overrides that mean something for a timm model, and the timm keyword each becomes.
_TIMM_OVERRIDES = {"classifier_dropout": "drop_rate"}


def timm_model_name(name: str) -> Optional[str]:
    """The timm model name that --model stands for, or None for a small-CNN preset or an unknown name.

    'timm/resnet10t' and 'resnet10t' give 'resnet10t'; a pretrained tag is kept ('timm/resnet18.a1_in1k').
    A 'timm/' name that timm does not know raises ValueError with the closest names timm has.
    """
    if name in PRESETS:
        return None
    bare = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
    import timm

    if bare and timm.is_model(bare):
        arch, tag = timm.models.split_model_name_tag(bare)
        if tag:
            try:
                timm.models.get_pretrained_cfg(bare, allow_unregistered=False)
            except RuntimeError:
                tags = [n.split(".", 1)[1] for n in timm.list_pretrained(arch) if n.split(".", 1)[0] == arch]
                raise ValueError(f"timm model {arch!r} has no pretrained tag {tag!r}; its tags: "
                                 f"{', '.join(tags) or 'none (no pretrained weights)'}") from None
        return bare
    if name.startswith(TIMM_PREFIX):
        close = difflib.get_close_matches(timm.models.split_model_name_tag(bare)[0], timm.list_models(), n=5)
        raise ValueError(f"timm {timm.__version__} has no model {bare!r}"
                         + (f"; close names: {', '.join(close)}" if close else "")
                         + " (every name: python -c 'import timm; print(timm.list_models())')")
    return None


def is_timm_model(model: nn.Module) -> bool:
    """True for a TimmWrapperForImageClassification (or a module that wraps one as `timm_model`)."""
    return hasattr(model, "timm_model") and getattr(getattr(model, "config", None), "model_type", "") == "timm_wrapper"


def timm_pretrained_source(name: str) -> Optional[str]:
    """Where `--pretrained` weights of timm model `name` come from: a Hub id ('timm/resnet10t.c3_in1k'),
    else a URL; None when timm has no pretrained weights for it. No network."""
    import timm

    name = timm_model_name(name) or name
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:
        return None
    return cfg.hf_hub_id or cfg.url or None


def _describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_pretrained_weights(name: str) -> str:
    """Check at once that timm's pretrained weights of `name` can be loaded; return where they come from.

    Weights already in the Hugging Face cache need no network. Otherwise one HEAD request (10 s timeout,
    no retries) asks the Hub, so a machine without network fails in about a second, not after the
    minute of retries that a download would spend. Raises ConfigError('pretrained', ...) that says
    what to do, training from scratch included.
    """
    import timm
    from huggingface_hub import constants, get_session, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.utils import build_hf_headers

    from .config import ConfigError

    arch = timm.models.split_model_name_tag(name)[0]
    scratch = f"or drop --pretrained to train {arch} from scratch (random initialization)"
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tagged = [n for n in timm.list_pretrained(arch) if n.split(".", 1)[0] == arch]
        raise ConfigError("pretrained", f"timm has no pretrained weights for {name!r}"
                          + (f" (pretrained variants: {', '.join(tagged[:8])})" if tagged else "")
                          + f"; pick another model, {scratch}.")
    if not cfg.hf_hub_id:                                   # an old-style URL (GitHub release, ...)
        urls = [cfg.url]
        source = cfg.url
    else:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in files:
            if isinstance(try_to_load_from_cache(cfg.hf_hub_id, filename), str):
                return cfg.hf_hub_id                        # cached: loads offline
        urls = [hf_hub_url(cfg.hf_hub_id, filename) for filename in files]
        source = cfg.hf_hub_id
    if constants.HF_HUB_OFFLINE:
        raise ConfigError("pretrained", f"the weights of {name} ({source}) are not in the Hugging Face cache "
                                        f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; unset it on a "
                                        f"machine with network to download them, {scratch}.")
    reason = ""
    for url in urls:
        try:
            response = get_session().head(url, headers=build_hf_headers(), timeout=10, follow_redirects=True)
        except Exception as error:                          # DNS, refused connection, timeout, proxy, TLS
            raise ConfigError(
                "pretrained", f"cannot download the pretrained weights of {name} from {source}: the Hub "
                f"({constants.ENDPOINT}) cannot be reached ({_describe_error(error)}). Connect this machine to "
                f"the network (or point HF_ENDPOINT at a reachable mirror, or fill the Hugging Face cache "
                f"from a machine that has network), {scratch}.") from None
        if response.status_code < 400:
            return source
        reason = f"HTTP {response.status_code} for {url}"
        if response.status_code in (401, 403):
            reason += " (gated or private: log in with `hf auth login` or set HF_TOKEN)"
    raise ConfigError("pretrained", f"cannot download the pretrained weights of {name} from {source}: {reason}; "
                                    f"{scratch}.")


def _create_timm_model(name: str, class_names: list[str], num_channels: int, image_size: int,
                       overrides: dict[str, Any], pretrained: bool) -> PreTrainedModel:
    """A TimmWrapperForImageClassification holding timm model `name` with a fresh `len(class_names)`-way head."""
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    if num_channels != 3:
        raise ValueError(f"timm models take RGB input (3 channels), got num_channels={num_channels}; grayscale "
                         "images are repeated into 3 channels (leave --num_channels unset)")
    unknown = sorted(set(overrides) - set(_TIMM_OVERRIDES))
    if unknown:
        raise ValueError(f"model option(s) {unknown} shape the small-CNN presets; a timm model takes only "
                         f"{sorted(_TIMM_OVERRIDES)}")
    model_args = {_TIMM_OVERRIDES[k]: v for k, v in overrides.items()}
    source_cfg = timm.models.get_pretrained_cfg(name)
    if source_cfg is not None and source_cfg.fixed_input_size and source_cfg.input_size[-1] != image_size:
        model_args["img_size"] = image_size     # ViT-like models: build (and resample pretrained weights) for it
    num_classes = len(class_names)
    # The network itself, built by timm: its own initialization (TimmWrapperForImageClassification(config)
    # would redraw every weight with transformers' normal(0, 0.02), which trains far worse from scratch),
    # and with --pretrained its weights (timm drops the source classifier when the class count differs).
    network = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **model_args)
    if pretrained:
        network.reset_classifier(num_classes)   # a new head for the new classes, even when the count matches
    data_config = dict(network.pretrained_cfg)
    if tuple(data_config.get("input_size", ()))[1:] != (image_size, image_size):
        data_config["pool_size"] = None         # the feature map is no longer the source's size
    data_config.update(input_size=(3, image_size, image_size), **TIMM_INPUT)
    for key in ("test_input_size", "test_crop_pct"):    # they describe the source's ImageNet evaluation
        data_config.pop(key, None)
    network.pretrained_cfg = data_config
    network.default_cfg = data_config           # timm's older alias, still read by some helpers

    id2label = {i: str(label) for i, label in enumerate(class_names)}
    config = TimmWrapperConfig(architecture=timm.models.split_model_name_tag(name)[0], num_labels=num_classes,
                               id2label=id2label, label2id={label: i for i, label in id2label.items()},
                               model_args=model_args or None)
    with torch.device("meta"):                  # its own timm model would be thrown away: build it nowhere
        model = TimmWrapperForImageClassification(config)
    model.timm_model = network
    return model


def timm_data_config(model: nn.Module) -> dict[str, Any]:
    """The preprocessing a timm model expects: input_size, interpolation, mean, std, crop_pct, crop_mode."""
    import timm

    return timm.data.resolve_data_config(model=model.timm_model)


def input_normalization(model: nn.Module, mean: list[float], std: list[float]) -> tuple[list[float], list[float]]:
    """The mean/std to normalize the model's inputs with: a timm model's own (its data config: the
    pretrained weights expect them), else the given ones (the training split's statistics)."""
    if not is_timm_model(model):
        return list(mean), list(std)
    config = timm_data_config(model)
    return [float(m) for m in config["mean"]], [float(s) for s in config["std"]]


def timm_config_dict(model: nn.Module, folder: str | os.PathLike) -> dict[str, Any]:
    """config.json of a timm model that both `timm.create_model("local-dir:…"/"hf-hub:…", pretrained=True)`
    and `AutoModelForImageClassification.from_pretrained` accept.

    timm's export (architecture, num_classes, label_names, model_args, pretrained_cfg with the data
    config) joined with transformers' keys (model_type, architectures). Two keys are fixed: `num_classes`
    leaves `model_args` (TimmWrapper passes num_classes itself: "got multiple values"), and the pretrained
    `tag` goes (these weights are not that tag's). `pretrained_cfg` must be present: without it timm reads
    the whole file as one and refuses transformers' keys.
    """
    import timm

    network = model.timm_model
    path = Path(folder) / ".timm_config.json"
    label_names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    timm.models._hub.save_config_for_hf(network, str(path), model_config={"label_names": label_names},
                                        data_config=timm_data_config(model))
    try:
        exported = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    model_args = dict(exported.get("model_args") or {})
    model_args.pop("num_classes", None)
    exported["model_args"] = model_args or None
    exported["pretrained_cfg"].pop("tag", None)
    merged = {**model.config.to_diff_dict(), **exported}
    merged["architectures"] = ["TimmWrapperForImageClassification"]
    merged["model_type"] = "timm_wrapper"
    return merged


def save_pretrained(model: nn.Module, folder: str | os.PathLike) -> None:
    """`model.save_pretrained(folder)`, except for timm models: timm's own weight names, a config.json that
    stock timm and stock transformers both load (see `timm_config_dict`), and its image processor.

    transformers would save the weights as `timm_model.*`, which timm's `local-dir:`/`hf-hub:` loading
    refuses; the plain names load in both (transformers maps them when it loads a timm checkpoint).

    The image processor of a timm model is `TimmWrapperImageProcessor`: timm's eval transform built from
    the data config in config.json. `AutoImageProcessor` takes it from config.json for a local folder
    (whatever preprocessor_config.json says) and from preprocessor_config.json for a Hub repo, so that
    file says the same: one preprocessing for the pipeline, the app and timm users alike. It equals the
    training preprocessing (`data.decode_image` + `Normalize`) up to 1/255 where an image is resized
    (PIL's and torchvision's antialiased bilinear resize round differently).
    """
    if not is_timm_model(model):
        model.save_pretrained(folder)
        return
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.timm_model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = timm_config_dict(model, folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    processor = {"image_processor_type": "TimmWrapperImageProcessor", "architecture": config["architecture"],
                 "pretrained_cfg": config["pretrained_cfg"]}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n",
                                                     encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Transfer learning: a head / backbone split of the parameters
# ------------------------------------------------------------------------------------------------


def classifier_module(model: nn.Module) -> Optional[nn.Module]:
    """The classifier of a timm model (`get_classifier()`); None for the small CNN, which has no backbone to
    transfer (it is trained from scratch as one piece)."""
    if is_timm_model(model):
        return model.timm_model.get_classifier()
    return None


def parameter_groups(model: nn.Module, lr: float, backbone_lr: Optional[float] = None,
                     weight_decay: float = 0.0, bias_lr_scale: Optional[float] = None,
                     exclude: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the classifier at `lr`, the rest (the backbone) at `backbone_lr`
    (default `lr`); weight decay on weight matrices and kernels, not on biases and norm parameters.

    With `bias_lr_scale` the 1-D parameters (biases, norm scales and shifts) train at that multiple of
    their group's rate instead, decayed by `weight_decay / bias_lr_scale` so that the decay per step
    (lr x decay) equals the weights' (airbench's BatchNorm-bias scaling). `exclude` leaves parameters
    out (those another update rule takes, see `Muon`).

    The head groups come first (param_groups[0]["lr"] is --learning_rate, the one logged). Backbone
    groups carry `"backbone": True`, which `freeze_backbone` acts on. Empty groups are left out; every
    parameter with requires_grad and not excluded is in exactly one group. Schedulers scale each group's
    own lr. A model without a backbone/head split (the small CNN) gets the groups [weights, biases] at `lr`.
    """
    head = classifier_module(model)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    backbone_lr = lr if backbone_lr is None else backbone_lr
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {(b, d): [] for b in (False, True) for d in (True, False)}
    seen: set[int] = {id(p) for p in exclude}
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_backbone = bool(head_ids) and id(p) not in head_ids
        buckets[(is_backbone, p.ndim > 1)].append(p)
    groups = []
    for (is_backbone, is_weight), params in buckets.items():
        if not params:
            continue
        if is_weight:
            scale, decay = 1.0, weight_decay
        elif bias_lr_scale is None:
            scale, decay = 1.0, 0.0
        else:
            scale, decay = bias_lr_scale, weight_decay / bias_lr_scale
        groups.append({"params": params, "lr": (backbone_lr if is_backbone else lr) * scale, "weight_decay": decay,
                       "backbone": is_backbone})
    return groups


def _drop_frozen_grads(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Optimizer step pre-hook: parameters of frozen groups lose their gradient, so the step skips them
    entirely (no update, no weight decay, no momentum or Adam state)."""
    for group in optimizer.param_groups:
        if group.get("frozen"):
            for p in group["params"]:
                p.grad = None


def freeze_backbone(optimizer: torch.optim.Optimizer, frozen: bool) -> bool:
    """Freeze (or release) the backbone groups of an optimizer built from `parameter_groups`.

    Works by dropping the backbone's gradients just before each optimizer step (a step pre-hook,
    installed once), so it is correct under DDP, gradient accumulation, mixed precision and any
    scheduler: the backbone still takes part in the forward and backward pass (BatchNorm statistics
    keep adapting) but its weights do not move. Accepts Accelerate's wrapped optimizer. Returns
    whether anything changed.
    """
    inner = getattr(optimizer, "optimizer", optimizer)          # AcceleratedOptimizer -> torch optimizer
    if not getattr(inner, "_backbone_freeze_hook", None):
        inner._backbone_freeze_hook = inner.register_step_pre_hook(_drop_frozen_grads)
    changed = False
    for group in inner.param_groups:
        if group.get("backbone") and bool(group.get("frozen")) != frozen:
            group["frozen"] = frozen
            changed = True
    return changed


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
    try:
        name = timm_model_name(m.model)
    except ValueError as error:
        raise ConfigError("model", str(error)) from None
    if name is None:
        if m.model not in PRESETS:
            raise ConfigError("model", f"unknown model {m.model!r}; choose one of: {', '.join(PRESETS)}, or a timm "
                                       "architecture as timm/NAME (for example timm/resnet10t)")
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
    unknown = sorted(set(m.overrides()) - set(_TIMM_OVERRIDES))
    if unknown:
        raise ConfigError(unknown[0], f"shapes the small-CNN presets; timm model {name} takes only "
                                      f"{', '.join('--' + k for k in _TIMM_OVERRIDES)}")
    if d.num_channels not in (None, 3):
        raise ConfigError("num_channels", "timm models take RGB input: grayscale images are repeated into 3 "
                                          "channels; leave --num_channels unset (or 3)")
    d.num_channels = 3
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
