"""The model card: `model_card.md` (Jinja2, through `huggingface_hub.ModelCard.from_template`) filled from a
finished run's own files only: config.json, preprocessor_config.json, training_config.json, metrics.json,
history.json, data_summary.json, model_summary.txt and plots/ (see `model_folder`).

`write_model_card(OUTPUT_DIR)` writes README.md; `render_model_card(OUTPUT_DIR, "USER/NAME")` returns the
card that names a Hub repo (what a push uploads).
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from . import model_folder as folder
from .files import write_text
from .metrics import most_confused

__all__ = ["TEMPLATE_PATH", "render_model_card", "write_model_card", "is_hub_id", "TTA_NAMES"]

# The card template lives at the repository root (see DESIGN.md), two folders above this package; an
# installed (non-editable) package may carry a copy beside this file instead.
TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "model_card.md"
_PACKAGED_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"


def _num(value: Any, digits: int = 4) -> str:
    """4-decimal string for a number, "–" for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def is_hub_id(name: Optional[str]) -> bool:
    """A "namespace/name" that is not a local path (a local dataset must not be linked on the Hub)."""
    return bool(name and re.fullmatch(r"[\w][\w.-]*/[\w][\w.-]*", name) and not os.path.exists(name))


def _describe_architecture(config: dict) -> str:
    """One sentence on the network, from config.json."""
    if config.get("model_type") == "small_cnn":
        widths = config.get("widths") or []
        convs, k = config.get("convs_per_block", 1), config.get("kernel_size", 3)
        parts = [f"{convs} convolution{'s' if convs != 1 else ''} of {k}×{k}",
                 f"2×2 {config.get('pooling', 'max')} pooling"]
        if config.get("batch_norm"):
            parts.append("BatchNorm")
        parts.append(str(config.get("activation", "relu")).upper() if config.get("activation") == "gelu"
                     else "ReLU")
        if config.get("block_dropout"):
            parts.append(f"dropout {config['block_dropout']}")
        pool = {"flatten": "flattened", "max": "global max pooling", "avg": "global average pooling"}.get(
            config.get("global_pool"), config.get("global_pool"))
        head = f"a {config['hidden_size']}-unit hidden layer and " if config.get("hidden_size") else ""
        dropout = f" (dropout {config['classifier_dropout']} before it)" if config.get("classifier_dropout") else ""
        return (f"A small convolutional network: {len(widths)} block{'s' if len(widths) != 1 else ''} of "
                f"{', '.join(map(str, widths))} channels (each: {', '.join(parts)}), then {pool} features, "
                f"{head}a linear classifier{dropout}.")
    if config.get("architecture"):  # timm through TimmWrapper
        classes = config.get("num_labels") or config.get("num_classes") or len(config.get("label_names") or [])
        return (f"The [timm](https://github.com/huggingface/pytorch-image-models) architecture "
                f"`{config['architecture']}` with a {classes}-class classifier, loaded through 🤗 Transformers' "
                f"`TimmWrapperForImageClassification` (no custom code).")
    return f"`{(config.get('architectures') or ['?'])[0]}` ({config.get('model_type', 'unknown type')})."


def _timm_base_model(training: dict) -> Optional[str]:
    """Where a --pretrained timm run's starting weights came from ('timm/resnet10t.c3_in1k'); None from scratch."""
    if not training.get("pretrained") or not training.get("model"):
        return None
    try:
        from .timm_models import timm_pretrained_source

        return timm_pretrained_source(str(training["model"]))
    except Exception:  # noqa: BLE001 - timm missing or changed: the card names the model as given
        return str(training["model"])


def _summary_totals(summary: str) -> list[str]:
    """The totals lines of model_summary.txt (parameters, FLOPs)."""
    return [line.strip() for line in summary.splitlines()
            if re.match(r"\s*(Total parameters|Trainable parameters|Forward FLOPs|FLOPs|MACs)", line)]


# Hyperparameters shown in the card's table, in this order: (flag, label).
_HYPERPARAMETERS = [
    ("model", "Model preset"), ("seed", "Seed"), ("time_budget", "Time budget (planned the epochs)"), ("num_train_epochs", "Epochs (configured)"),
    ("max_train_steps", "Max optimizer steps"), ("per_device_train_batch_size", "Batch size per device"),
    ("gradient_accumulation_steps", "Gradient accumulation steps"), ("optimizer", "Optimizer"),
    ("learning_rate", "Peak learning rate"), ("sgd_learning_rate", "Peak SGD learning rate (non-kernel parameters)"),
    ("muon_momentum", "Muon momentum (kernels)"), ("momentum", "Momentum"), ("nesterov", "Nesterov"),
    ("bias_learning_rate_scale", "Bias/BatchNorm learning-rate scale"),
    ("adam_beta1", "Adam β1"), ("adam_beta2", "Adam β2"), ("weight_decay", "Weight decay"),
    ("lr_scheduler_type", "Learning-rate schedule"), ("warmup_ratio", "Warm-up ratio"),
    ("plateau_patience", "Plateau patience"), ("plateau_factor", "Plateau factor"),
    ("label_smoothing", "Label smoothing"), ("max_grad_norm", "Gradient clipping (L2 norm)"),
    ("mixup_alpha", "MixUp α"), ("cutmix_alpha", "CutMix α"), ("ema_decay", "Weight EMA decay (per step)"),
    ("lookahead", "Lookahead weight averaging"), ("metric_for_best_model", "Best-epoch metric (validation)"),
    ("early_stopping_patience", "Early-stopping patience"), ("mixed_precision", "Mixed precision (requested)"),
]


# metrics.json "tta" -> how the card names it (None: single view, nothing to say).
TTA_NAMES = {"none": None, "flip": "the image and its mirror",
             "flip_translate": "the image, its mirror and both shifted by one pixel"}


def _hyperparameters(training: dict, metrics: dict, history: list[dict]) -> list[tuple[str, str]]:
    optimizer = training.get("optimizer")
    skip = set()
    if optimizer not in ("sgd", "muon"):
        skip |= {"momentum", "nesterov"}
    if optimizer != "muon":
        skip |= {"sgd_learning_rate", "muon_momentum"}
    if optimizer not in ("adam", "adamw"):
        skip |= {"adam_beta1", "adam_beta2"}
    if training.get("lr_scheduler_type") != "plateau":
        skip |= {"plateau_patience", "plateau_factor"}
    if training.get("lr_scheduler_type") in ("constant", "plateau"):
        skip.add("warmup_ratio")
    rows = []
    for key, label in _HYPERPARAMETERS:
        value = training.get(key)
        off = key in ("mixup_alpha", "cutmix_alpha", "max_grad_norm", "ema_decay", "lookahead") and not value
        if key in skip or value is None or off:
            continue
        rows.append((label, f"`{value}`"))
    # --progressive_resize_epochs: history.json holds each epoch's training image side.
    sides = [h.get("train_image_size") for h in history]
    small = [side for side in sides if side is not None and side != sides[-1]]
    if small:
        rows.append(("Progressive resizing", f"first {len(small)} epoch(s) at {small[0]}x{small[0]} px, "
                                             f"then {sides[-1]}x{sides[-1]} px"))
    batch = training.get("per_device_train_batch_size")
    if batch:
        effective = batch * (metrics.get("num_processes") or 1) * (training.get("gradient_accumulation_steps") or 1)
        rows.insert(5, ("Effective batch size", f"`{effective}`"))
    return rows


def _read_run(out: Path) -> dict[str, Any]:
    """The run's files as values: config, processor, training (no token), metrics, history, data, summary."""
    config = folder.read_json(out, folder.CONFIG)
    if config is None:
        raise FileNotFoundError(f"{out} is not a model folder: it has no {folder.CONFIG} (train a model first)")
    training = folder.read_json(out, folder.TRAINING_CONFIG, {})
    summary_path = out / folder.MODEL_SUMMARY
    return {"config": config, "processor": folder.read_json(out, folder.PROCESSOR, {}),
            "training": {k: v for k, v in training.items() if "token" not in k.lower()},
            "metrics": folder.read_json(out, folder.METRICS, {}), "history": folder.read_json(out, folder.HISTORY, []),
            "data": folder.read_json(out, folder.DATA_SUMMARY, {}),
            "summary": summary_path.read_text(encoding="utf-8").rstrip() if summary_path.is_file() else ""}


def _card_context(out: Path, hub_model_id: Optional[str]) -> dict[str, Any]:
    """Everything the template needs, read from the run's files (missing files leave sections out)."""
    from huggingface_hub import constants

    run = _read_run(out)
    config, data, metrics = run["config"], run["data"], run["metrics"]
    id2label = config.get("id2label") or {}
    class_names = (data.get("class_names") or [id2label[k] for k in sorted(id2label, key=int)]
                   or [str(name) for name in config.get("label_names") or []])     # timm configs: label_names
    endpoint = constants.ENDPOINT.rstrip("/")
    repo_name = (hub_model_id or out.resolve().name).split("/")[-1]
    stamp = out / (folder.METRICS if (out / folder.METRICS).exists() else folder.CONFIG)
    plots = {name: folder.plot_file(".", name).as_posix() for name in folder.PLOT_NAMES   # the template picks by name
             if folder.plot_file(out, name).is_file()}
    return {
        **_model_context(run, out, hub_model_id, endpoint),
        **_dataset_context(run, class_names, endpoint),
        **_results_context(metrics, class_names),
        **_training_context(run),
        "model_name": repo_name,
        "class_names": class_names,
        "num_labels": len(class_names),
        "plots": plots,
        "citation_key": re.sub(r"\W+", "_", repo_name).strip("_").lower() or "model",
        "citation_author": hub_model_id.split("/")[0] if hub_model_id else "The authors",
        "year": datetime.fromtimestamp(stamp.stat().st_mtime, tz=timezone.utc).year,
    }


def _model_context(run: dict[str, Any], out: Path, hub_model_id: Optional[str], endpoint: str) -> dict[str, Any]:
    """The network: its type, architecture, base weights, size, how to load it and how inputs are prepared."""
    config, training, metrics, summary = run["config"], run["training"], run["metrics"], run["summary"]
    timm_arch = config.get("architecture") if config.get("model_type") == "timm_wrapper" else None
    base_model = _timm_base_model(training) if timm_arch else None
    return {
        "repo_id": hub_model_id,
        "model_ref": hub_model_id or str(out),
        "model_url": f"{endpoint}/{hub_model_id}" if hub_model_id else None,
        "custom_code": bool(config.get("auto_map")),
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "model_type": config.get("model_type") or "?",
        "preset": training.get("model"),
        "architecture_description": _describe_architecture(config),
        "timm_architecture": timm_arch,
        "base_model": base_model,
        "base_model_on_hub": bool(base_model) and is_hub_id(base_model),
        "base_model_url": f"{endpoint}/{base_model}" if base_model and is_hub_id(base_model) else None,
        "timm_ref": (f"hf-hub:{hub_model_id}" if hub_model_id else f"local-dir:{out}") if timm_arch else None,
        "summary_totals": _summary_totals(summary),
        "model_summary": summary,
        "num_parameters": _num(metrics.get("num_parameters")) if metrics.get("num_parameters") else None,
        **_preprocessing(run, timm_arch),
    }


def _preprocessing(run: dict[str, Any], timm_arch: Optional[str]) -> dict[str, Any]:
    """The input side, channels and the processor's steps, in words."""
    config, data, processor = run["config"], run["data"], run["processor"]
    timm_data = config.get("pretrained_cfg") if timm_arch else None
    if isinstance(timm_data, dict) and timm_data.get("input_size"):
        # TimmWrapperImageProcessor: timm's eval transform from the data config (squash resize, /255, normalize)
        processor = {**processor, "size": {"height": timm_data["input_size"][1], "width": timm_data["input_size"][2]},
                     "image_mean": timm_data.get("mean"), "image_std": timm_data.get("std"), "rescale_factor": 1 / 255}
    size = processor.get("size") or {}
    fallback = config.get("image_size") or data.get("image_size")
    side = (f"{size['height']}×{size['width']}" if "height" in size else
            f"{size.get('shortest_edge')} (shortest edge)" if size else
            f"{fallback}×{fallback}" if fallback else "the model's input size")
    channels = config.get("num_channels") or data.get("num_channels") or 3
    mean, std = processor.get("image_mean") or data.get("mean"), processor.get("image_std") or data.get("std")
    steps = [f"converted to {channels} channel{'s' if channels != 1 else ''}"]
    if processor.get("do_resize", True):
        steps.append(f"resized to {side}")
    if processor.get("do_rescale", True) and processor.get("rescale_factor"):
        steps.append(f"scaled to [0, 1] (× {processor['rescale_factor']:.6g})")
    if processor.get("do_normalize", True) and mean:
        steps.append(f"normalised with mean {mean} and standard deviation {std} "
                     + ("(the timm model's data config)" if timm_arch else "(computed on the training split)"))
    return {"image_side": side, "num_channels": channels, "processor_type": processor.get("image_processor_type"),
            "preprocessing": ", ".join(steps)}


def _dataset_context(run: dict[str, Any], class_names: list[str], endpoint: str) -> dict[str, Any]:
    """Where the data came from (a Hub link only for a Hub dataset), its splits, classes and augmentation."""
    data, training = run["data"], run["training"]
    dataset_given = data.get("dataset") or training.get("dataset")
    # data.py writes dataset_resolved (the Hub id an alias stands for, or the absolute local path) and source.
    dataset_id = data.get("dataset_id") or data.get("dataset_resolved") or dataset_given or ""
    on_hub = data["source"] == "hub" if data.get("source") else is_hub_id(dataset_id)
    splits = data.get("splits") or {}
    class_rows = [{"name": name, "counts": [_num((splits[s].get("class_counts") or {}).get(name, 0)) for s in splits]}
                  for name in class_names] if splits else []
    return {
        "dataset": dataset_given,
        "dataset_known": bool(dataset_id),
        "dataset_id": dataset_id,
        "dataset_name": dataset_id if on_hub else Path(str(dataset_id).rstrip("/")).name or "an unrecorded dataset",
        "dataset_on_hub": on_hub,
        "dataset_url": f"{endpoint}/datasets/{dataset_id}" if on_hub else None,
        "dataset_config": data.get("dataset_config_name") or training.get("dataset_config_name"),
        "image_column": data.get("image_column"),
        "label_column": data.get("label_column"),
        "split_names": list(splits),
        "split_rows": [{"name": s, "rows": _num(v.get("rows")), "origin": v.get("from") or "",
                        "limited_from": _num(v["rows_before_limit"]) if v.get("rows_before_limit") not in
                        (None, v.get("rows")) else None} for s, v in splits.items()],
        "split_origins": any(v.get("from") for v in splits.values()),
        "imbalance_ratio": data.get("imbalance_ratio"),
        "skipped_images": (data.get("skipped_images") or {}).get("count") or 0,
        "class_rows": class_rows,
        "augmentation": data.get("augmentation") or [],
    }


# metrics.json keys the card's results table shows (with test_ and eval_ prefixes), and their labels.
_OVERALL = [("accuracy", "Accuracy"), ("precision", "Precision (macro)"), ("recall", "Recall (macro)"),
            ("f1", "F1 (macro)"), ("precision_weighted", "Precision (weighted)"),
            ("recall_weighted", "Recall (weighted)"), ("f1_weighted", "F1 (weighted)"),
            ("top5_accuracy", "Top-5 accuracy"), ("loss", "Cross-entropy loss"), ("num_samples", "Images")]


def _results_context(metrics: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """The scores: overall (validation and test), per class, the weakest classes and the commonest confusions."""
    per_class_metrics = metrics.get("test_per_class") or {}
    per_class = [{"name": name, **{k: _num(v.get(k)) for k in ("precision", "recall", "f1")},
                  "support": _num(v.get("support"))} for name, v in per_class_metrics.items()]
    weakest = sorted((v.get("f1", 0.0), name) for name, v in per_class_metrics.items())[:3]
    overall = [{"label": label, "eval": _num(metrics.get(f"eval_{key}")), "test": _num(metrics.get(f"test_{key}"))}
               for key, label in _OVERALL if f"test_{key}" in metrics or f"eval_{key}" in metrics]
    return {
        "overall": overall,
        "per_class": per_class,
        "weakest": [{"name": name, "f1": _num(f1)} for f1, name in weakest] if len(per_class) > 3 else [],
        # older runs' metrics.json have only the matrix
        "confusions": (metrics.get("test_most_confused") or (most_confused(metrics["test_confusion_matrix"], class_names)
                                                             if metrics.get("test_confusion_matrix") else []))[:3],
        "test_accuracy": _num(metrics.get("test_accuracy")) if "test_accuracy" in metrics else None,
        "test_f1": _num(metrics.get("test_f1")) if "test_f1" in metrics else None,
        "tta": TTA_NAMES.get(metrics.get("tta") or "none"),
        "test_accuracy_without_tta": _num(metrics["test_accuracy_without_tta"])
        if "test_accuracy_without_tta" in metrics else None,
        "test_samples": _num(metrics.get("test_num_samples")) if metrics.get("test_num_samples") else None,
        "calibration": _calibration(metrics),
        "robustness": {"mean": _percent(metrics["mean_corruption_accuracy"]),
                       "images": _num(metrics.get("robustness_num_images")),
                       "clean": _percent(metrics.get("robustness_clean_accuracy")),
                       "worst": metrics["worst_corruption"]["name"].replace("_", " "),
                       "worst_accuracy": _percent(metrics["worst_corruption"]["mean_accuracy"])}
        if "mean_corruption_accuracy" in metrics else None,
    }


def _calibration(metrics: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Temperature scaling's figures, before and after (None for a run with --calibrate false)."""
    if "temperature" not in metrics:
        return None
    rows = [(label, fmt(metrics.get(f"test_{key}_uncalibrated")), fmt(metrics.get(f"test_{key}")))
            for key, label, fmt in (("ece", "Expected calibration error (15 bins)", _percent),
                                    ("nll", "Negative log-likelihood", _num), ("brier", "Brier score", _num))]
    return {"temperature": f"{metrics['temperature']:.3f}", "rows": rows}


def _percent(value: Any) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else "?"


def _training_context(run: dict[str, Any]) -> dict[str, Any]:
    """How it was trained: hyperparameters, the resolved config, the per-epoch history, time and hardware."""
    training, metrics, history = run["training"], run["metrics"], run["history"]
    return {
        "hyperparameters": _hyperparameters(training, metrics, history),
        "training_config_json": json.dumps(training, indent=2) if training else None,
        "history": [{"epoch": h.get("epoch"), **{k: _num(h.get(k)) for k in
                     ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy")},
                     "learning_rate": f"{h['learning_rate']:.3g}" if isinstance(h.get("learning_rate"), float)
                     else _num(h.get("learning_rate")), "seconds": _num(h.get("seconds"), 1)} for h in history],
        # --tta_each_epoch off: each epoch's validation scored one view, the final evaluation all of --tta's.
        "history_single_view": metrics.get("tta", "none") != "none"
        and any(h.get("eval_tta") == "none" for h in history),
        "epochs_trained": metrics.get("epochs_trained", len(history) or None),
        "best_epoch": metrics.get("best_epoch"),
        "train_time": _duration(metrics.get("train_seconds")) if "train_seconds" in metrics else None,
        "hardware": metrics.get("hardware"),
        "num_processes": metrics.get("num_processes"),
        "mixed_precision": metrics.get("mixed_precision"),
    }


def _card_data(ctx: dict[str, Any], metrics: dict):
    """The YAML metadata: ModelCardData with the test metrics as model-index EvalResults."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset_type = ctx["dataset_id"] if ctx["dataset_on_hub"] else ctx["dataset_name"]
    eval_results = [
        EvalResult(task_type="image-classification", task_name="Image Classification",
                   dataset_type=dataset_type, dataset_name=ctx["dataset_name"], dataset_split="test",
                   dataset_config=ctx["dataset_config"], metric_type=metric, metric_name=name,
                   metric_value=round(float(metrics[f"test_{metric}"]), 4),
                   metric_args=None if metric == "accuracy" else {"average": "macro"})
        for metric, name in [("accuracy", "Accuracy"), ("precision", "Precision (macro)"),
                             ("recall", "Recall (macro)"), ("f1", "F1 (macro)")]
        if metrics.get(f"test_{metric}") is not None
    ]
    tags = ["image-classification", "pytorch", ctx["model_type"].replace("_", "-")]
    if ctx["timm_architecture"]:
        tags += ["timm", "transformers"]
    if ctx["preset"] and ctx["preset"] != ctx["model_type"]:
        tags.append(str(ctx["preset"]).replace("/", "-"))
    if ctx["custom_code"]:
        tags.append("custom_code")
    if ctx["dataset_known"]:
        tags.append(re.sub(r"[^\w.-]+", "-", ctx["dataset_name"].split("/")[-1].lower()))
    return ModelCardData(
        library_name="timm" if ctx["timm_architecture"] else "transformers", pipeline_tag="image-classification",
        license="apache-2.0", base_model=ctx["base_model"] if ctx["base_model_on_hub"] else None,
        tags=tags, datasets=[ctx["dataset_id"]] if ctx["dataset_on_hub"] else None,
        metrics=["accuracy", "precision", "recall", "f1"],
        model_name=ctx["model_name"] if eval_results else None, eval_results=eval_results or None,
    )


def render_model_card(output_dir: str | os.PathLike, hub_model_id: Optional[str] = None,
                      template_path: Optional[str | os.PathLike] = None):
    """The model card of the run in `output_dir` as a `huggingface_hub.ModelCard` (nothing written).

    `hub_model_id` ("USER/NAME") goes into the usage snippets and the citation; without it they
    name the folder.
    """
    from huggingface_hub import ModelCard

    out = Path(output_dir)
    if template_path is None:
        template_path = next((p for p in (TEMPLATE_PATH, _PACKAGED_TEMPLATE) if p.is_file()), TEMPLATE_PATH)
    if not Path(template_path).is_file():
        raise FileNotFoundError(f"model card template {template_path} not found")
    ctx = _card_context(out, hub_model_id)
    card_data = _card_data(ctx, folder.read_json(out, folder.METRICS, {}))
    # ModelCardData consumes model_name when eval_results are set: pass it again for the template.
    return ModelCard.from_template(card_data, template_path=str(template_path), **ctx)


def write_model_card(output_dir: str | os.PathLike, hub_model_id: Optional[str] = None) -> Path:
    """Render the card into OUTPUT_DIR/README.md (atomically) and return its path."""
    path = Path(output_dir) / folder.CARD
    write_text(path, str(render_model_card(output_dir, hub_model_id)))
    return path
