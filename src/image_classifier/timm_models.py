"""timm architectures through transformers' `TimmWrapperForImageClassification` (no remote code): resolving
a --model name, checking --pretrained weights, building the model with a new head, and saving a folder that
both stock timm (`local-dir:`/`hf-hub:`) and stock transformers load.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from transformers import PreTrainedModel

from .model_folder import CONFIG, PROCESSOR, WEIGHTS

__all__ = ["TIMM_PREFIX", "TIMM_INPUT", "TIMM_OVERRIDES", "timm_model_name", "is_timm_model",
           "timm_pretrained_source", "check_pretrained_weights", "create_timm_model", "timm_data_config",
           "timm_config_dict", "save_timm_model", "classifier_module"]

TIMM_PREFIX = "timm/"
# How the data stage turns any image into model input (images.decode_image / build_image_processor: squash
# to a square, bilinear). Written into the saved timm data config, so that timm's own eval transform
# (`timm.data.create_transform(**timm.data.resolve_data_config(model=m))`) does the same.
TIMM_INPUT = {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash"}
# Small-CNN overrides that mean something for a timm model, and the timm keyword each becomes.
TIMM_OVERRIDES = {"classifier_dropout": "drop_rate"}


def timm_model_name(name: str) -> Optional[str]:
    """The timm model name that --model stands for (not a small-CNN preset), or None for an unknown name.

    'timm/resnet10t' and 'resnet10t' give 'resnet10t'; a pretrained tag is kept ('timm/resnet18.a1_in1k').
    A 'timm/' name that timm does not know raises ValueError with the closest names timm has.
    """
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
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [WEIGHTS, "pytorch_model.bin"]
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


def create_timm_model(name: str, class_names: list[str], num_channels: int, image_size: int,
                      overrides: dict[str, Any], pretrained: bool, crop_pct: Optional[float] = None) -> PreTrainedModel:
    """A TimmWrapperForImageClassification holding timm model `name` with a fresh `len(class_names)`-way head.

    Its saved data config describes the data stage's evaluation input: squashed to the square (resident path,
    `crop_pct` None) or the shorter side resized to floor(size / crop_pct) and centre-cropped (streaming)."""
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    if num_channels != 3:
        raise ValueError(f"timm models take RGB input (3 channels), got num_channels={num_channels}; grayscale "
                         "images are repeated into 3 channels (leave --num_channels unset)")
    unknown = sorted(set(overrides) - set(TIMM_OVERRIDES))
    if unknown:
        raise ValueError(f"model option(s) {unknown} shape the small-CNN presets; a timm model takes only "
                         f"{sorted(TIMM_OVERRIDES)}")
    model_args = {TIMM_OVERRIDES[k]: v for k, v in overrides.items()}
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
    if crop_pct is not None:
        data_config.update(crop_pct=float(crop_pct), crop_mode="center")
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


def classifier_module(model: nn.Module) -> Optional[nn.Module]:
    """The classifier of a timm model (`get_classifier()`); None for the small CNN, which has no backbone to
    transfer (it is trained from scratch as one piece)."""
    if is_timm_model(model):
        return model.timm_model.get_classifier()
    return None


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


def save_timm_model(model: nn.Module, folder: str | os.PathLike) -> None:
    """A timm model's folder: timm's own weight names, a config.json that stock timm and stock transformers
    both load (see `timm_config_dict`), and its image processor.

    transformers would save the weights as `timm_model.*`, which timm's `local-dir:`/`hf-hub:` loading
    refuses; the plain names load in both (transformers maps them when it loads a timm checkpoint).

    The image processor of a timm model is `TimmWrapperImageProcessor`: timm's eval transform built from
    the data config in config.json. `AutoImageProcessor` takes it from config.json for a local folder
    (whatever preprocessor_config.json says) and from preprocessor_config.json for a Hub repo, so that
    file says the same: one preprocessing for the pipeline, the app and timm users alike. It equals the
    training preprocessing (`images.decode_image` + `Normalize`) up to 1/255 where an image is resized
    (PIL's and torchvision's antialiased bilinear resize round differently).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.timm_model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    config = timm_config_dict(model, folder)
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    processor = {"image_processor_type": "TimmWrapperImageProcessor", "architecture": config["architecture"],
                 "pretrained_cfg": config["pretrained_cfg"]}
    (folder / PROCESSOR).write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n",
                                                     encoding="utf-8")
