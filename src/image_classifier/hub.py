"""The Hub stage: render the model card of a finished run and push the model folder to the Hub.

`write_model_card(OUTPUT_DIR)` fills the `model_card.md` template (Jinja2, through
`huggingface_hub.ModelCard.from_template`) from the run's own files only: config.json,
preprocessor_config.json, training_config.json, metrics.json, history.json, data_summary.json,
model_summary.txt and plots/. `push_to_hub(OUTPUT_DIR, "USER/NAME")` creates the repository and
uploads the folder (never checkpoints/ or runs/) in one commit with a card that names the repo.

A failed push raises `HubError`: one paragraph saying what went wrong and the command that retries
it, with the token scrubbed out; the local folder is left as it was. The token is never logged,
written to a file, or put in a message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

from .files import write_text

__all__ = [
    "HubError",
    "add_token_argument",
    "IGNORE_PATTERNS",
    "TEMPLATE_PATH",
    "render_model_card",
    "write_model_card",
    "push_to_hub",
    "retry_command",
]

logger = logging.getLogger(__name__)

# The card template lives at the repository root (see DESIGN.md), two folders above this package; an
# installed (non-editable) package may carry a copy beside this file instead.
TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "model_card.md"
_PACKAGED_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"

# Never pushed: Accelerate states, TensorBoard logs, hidden and temporary files, Python caches.
# (fnmatch semantics as huggingface_hub applies them: "*" also crosses "/".)
IGNORE_PATTERNS = [
    "checkpoints/*", "*/checkpoints/*", "runs/*", "*/runs/*",
    ".*", "*/.*", "*.tmp", "*~", "*.lock", "__pycache__/*", "*/__pycache__/*", "*.pyc",
]
# Files a run owns in the repo: a re-push deletes stale ones (a plot a new run did not make,
# shards of an earlier, bigger model whose index would shadow the new weights).
STALE_PATTERNS = ["plots/*", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                  "pytorch_model.bin.index.json"]
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PLOT_FILES = ("learning_curves", "confusion_matrix", "misclassified", "samples", "class_distribution", "augmentation")


class HubError(RuntimeError):
    """A push that failed: the message is one paragraph with the cause and the retry command."""

    def __init__(self, message: str, *, repo_id: Optional[str] = None, status: Optional[int] = None,
                 retry: Optional[str] = None):
        super().__init__(message)
        self.repo_id, self.status, self.retry = repo_id, status, retry


# ------------------------------------------------------------------------------------------------
# Reading the run's files
# ------------------------------------------------------------------------------------------------


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


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


def _is_hub_id(name: Optional[str]) -> bool:
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
        from .models import timm_pretrained_source

        return timm_pretrained_source(str(training["model"]))
    except Exception:  # noqa: BLE001 - timm missing or changed: the card names the model as given
        return str(training["model"])


def _summary_totals(summary: str) -> list[str]:
    """The totals lines of model_summary.txt (parameters, FLOPs)."""
    return [line.strip() for line in summary.splitlines()
            if re.match(r"\s*(Total parameters|Trainable parameters|Forward FLOPs|FLOPs|MACs)", line)]


# Hyperparameters shown in the card's table, in this order: (flag, label).
_HYPERPARAMETERS = [
    ("model", "Model preset"), ("seed", "Seed"), ("num_train_epochs", "Epochs (configured)"),
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
        if key in skip or value is None or (key in ("mixup_alpha", "cutmix_alpha", "max_grad_norm", "ema_decay", "lookahead") and not value):
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


def _confusions(matrix: list[list[int]], names: list[str], top: int = 3) -> list[dict]:
    """The most frequent (true, predicted) mistakes; rows are true classes, columns predictions."""
    pairs = [(count, i, j) for i, row in enumerate(matrix or []) for j, count in enumerate(row) if i != j and count]
    pairs.sort(reverse=True)
    return [{"true": names[i] if i < len(names) else i, "predicted": names[j] if j < len(names) else j,
             "count": count} for count, i, j in pairs[:top]]


def _card_context(out: Path, hub_model_id: Optional[str]) -> dict[str, Any]:
    """Everything the template needs, read from the run's files (missing files leave sections out)."""
    from huggingface_hub import constants

    config = _read_json(out / "config.json", None)
    if config is None:
        raise FileNotFoundError(f"{out} is not a model folder: it has no config.json (train a model first)")
    processor = _read_json(out / "preprocessor_config.json", {})
    training = {k: v for k, v in _read_json(out / "training_config.json", {}).items() if "token" not in k.lower()}
    metrics = _read_json(out / "metrics.json", {})
    history = _read_json(out / "history.json", [])
    data = _read_json(out / "data_summary.json", {})
    summary_path = out / "model_summary.txt"
    summary = summary_path.read_text(encoding="utf-8").rstrip() if summary_path.is_file() else ""

    id2label = config.get("id2label") or {}
    class_names = (data.get("class_names") or [id2label[k] for k in sorted(id2label, key=int)]
                   or [str(name) for name in config.get("label_names") or []])     # timm configs: label_names
    timm_arch = config.get("architecture") if config.get("model_type") == "timm_wrapper" else None
    base_model = _timm_base_model(training) if timm_arch else None
    dataset_given = data.get("dataset") or training.get("dataset")
    # data.py writes dataset_resolved (the Hub id an alias stands for, or the absolute local path) and source.
    dataset_id = data.get("dataset_id") or data.get("dataset_resolved") or dataset_given or ""
    on_hub = data["source"] == "hub" if data.get("source") else _is_hub_id(dataset_id)
    dataset_name = dataset_id if on_hub else Path(str(dataset_id).rstrip("/")).name or "an unrecorded dataset"
    endpoint = constants.ENDPOINT.rstrip("/")

    splits = data.get("splits") or {}
    class_rows = [{"name": name, "counts": [(splits[s].get("class_counts") or {}).get(name, 0) for s in splits]}
                  for name in class_names] if splits else []

    per_class = [{"name": name, **{k: _num(v.get(k)) for k in ("precision", "recall", "f1")},
                  "support": _num(v.get("support"))}
                 for name, v in (metrics.get("test_per_class") or {}).items()]
    weakest = sorted(((v.get("f1", 0.0), name) for name, v in (metrics.get("test_per_class") or {}).items()))[:3]

    overall = []
    for key, label in [("accuracy", "Accuracy"), ("precision", "Precision (macro)"), ("recall", "Recall (macro)"),
                       ("f1", "F1 (macro)"), ("precision_weighted", "Precision (weighted)"),
                       ("recall_weighted", "Recall (weighted)"), ("f1_weighted", "F1 (weighted)"),
                       ("top5_accuracy", "Top-5 accuracy"), ("loss", "Cross-entropy loss"),
                       ("num_samples", "Images")]:
        if f"test_{key}" in metrics or f"eval_{key}" in metrics:
            overall.append({"label": label, "eval": _num(metrics.get(f"eval_{key}")),
                            "test": _num(metrics.get(f"test_{key}"))})

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
    repo_name = (hub_model_id or out.resolve().name).split("/")[-1]
    model_ref = hub_model_id or str(out)
    year = datetime.fromtimestamp((out / "metrics.json").stat().st_mtime if (out / "metrics.json").exists()
                                  else (out / "config.json").stat().st_mtime, tz=timezone.utc).year
    plots = {name: f"plots/{name}.png" for name in PLOT_FILES if (out / "plots" / f"{name}.png").is_file()}

    return {
        "model_name": repo_name,
        "repo_id": hub_model_id,
        "model_ref": model_ref,
        "model_url": f"{endpoint}/{hub_model_id}" if hub_model_id else None,
        "custom_code": bool(config.get("auto_map")),
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "model_type": config.get("model_type") or "?",
        "preset": training.get("model"),
        "architecture_description": _describe_architecture(config),
        "timm_architecture": timm_arch,
        "base_model": base_model,
        "base_model_on_hub": bool(base_model) and _is_hub_id(base_model),
        "base_model_url": f"{endpoint}/{base_model}" if base_model and _is_hub_id(base_model) else None,
        "timm_ref": (f"hf-hub:{hub_model_id}" if hub_model_id else f"local-dir:{out}") if timm_arch else None,
        "summary_totals": _summary_totals(summary),
        "model_summary": summary,
        "num_parameters": _num(metrics.get("num_parameters")) if metrics.get("num_parameters") else None,
        "class_names": class_names,
        "num_labels": len(class_names),
        "image_side": side,
        "num_channels": channels,
        "dataset": dataset_given,
        "dataset_known": bool(dataset_id),
        "dataset_id": dataset_id,
        "dataset_name": dataset_name,
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
        "class_rows": [{"name": r["name"], "counts": [_num(c) for c in r["counts"]]} for r in class_rows],
        "processor_type": processor.get("image_processor_type"),
        "preprocessing": ", ".join(steps),
        "augmentation": data.get("augmentation") or [],
        "hyperparameters": _hyperparameters(training, metrics, history),
        "training_config_json": json.dumps(training, indent=2) if training else None,
        "overall": overall,
        "per_class": per_class,
        "weakest": [{"name": name, "f1": _num(f1)} for f1, name in weakest] if len(per_class) > 3 else [],
        "confusions": _confusions(metrics.get("test_confusion_matrix"), class_names),
        "test_accuracy": _num(metrics.get("test_accuracy")) if "test_accuracy" in metrics else None,
        "test_f1": _num(metrics.get("test_f1")) if "test_f1" in metrics else None,
        "tta": TTA_NAMES.get(metrics.get("tta") or "none"),
        "test_accuracy_without_tta": _num(metrics["test_accuracy_without_tta"])
        if "test_accuracy_without_tta" in metrics else None,
        "test_samples": _num(metrics.get("test_num_samples")) if metrics.get("test_num_samples") else None,
        "history": [{"epoch": h.get("epoch"), **{k: _num(h.get(k)) for k in
                     ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy")},
                     "learning_rate": f"{h['learning_rate']:.3g}" if isinstance(h.get("learning_rate"), float)
                     else _num(h.get("learning_rate")), "seconds": _num(h.get("seconds"), 1)} for h in history],
        # --tta_each_epoch off: each epoch's validation scored one view, the final evaluation all of --tta's.
        "history_single_view": metrics.get("tta", "none") != "none" and any(h.get("eval_tta") == "none" for h in history),
        "epochs_trained": metrics.get("epochs_trained", len(history) or None),
        "best_epoch": metrics.get("best_epoch"),
        "train_time": _duration(metrics.get("train_seconds")) if "train_seconds" in metrics else None,
        "hardware": metrics.get("hardware"),
        "num_processes": metrics.get("num_processes"),
        "mixed_precision": metrics.get("mixed_precision"),
        "plots": plots,
        "citation_key": re.sub(r"\W+", "_", repo_name).strip("_").lower() or "model",
        "citation_author": hub_model_id.split("/")[0] if hub_model_id else "The authors",
        "year": year,
    }


def _card_data(ctx: dict[str, Any], metrics: dict, training: dict):
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
    metrics = _read_json(out / "metrics.json", {})
    training = _read_json(out / "training_config.json", {})
    card_data = _card_data(ctx, metrics, training)
    # ModelCardData consumes model_name when eval_results are set: pass it again for the template.
    return ModelCard.from_template(card_data, template_path=str(template_path), **ctx)


def write_model_card(output_dir: str | os.PathLike, hub_model_id: Optional[str] = None) -> Path:
    """Render the card into OUTPUT_DIR/README.md (atomically) and return its path."""
    path = Path(output_dir) / "README.md"
    write_text(path, str(render_model_card(output_dir, hub_model_id)))
    return path


# ------------------------------------------------------------------------------------------------
# Pushing
# ------------------------------------------------------------------------------------------------


def retry_command(output_dir: str | os.PathLike, hub_model_id: str, private: bool = False) -> str:
    """The command line that retries a push (never with the token: it comes from HF_TOKEN or the login)."""
    command = f"python -m image_classifier push {shlex.quote(str(output_dir))} --hub_model_id {hub_model_id}"
    return command + (" --hub_private_repo" if private else "")


def add_token_argument(parser) -> None:
    """Add `--hub_token` to an argparse (sub-)parser: the one wording for every command that writes to the Hub."""
    parser.add_argument("--hub_token", default=None, metavar="TOKEN",
                        help="Hub token with write access; default: HF_TOKEN, else the cached `hf auth login`. "
                             "Prefer HF_TOKEN: a token on the command line shows in the process list and history.")


def _token_source(token: Optional[str]) -> str:
    if token:
        return "the token that was passed in (--hub_token)"
    if os.environ.get("HF_TOKEN"):
        return "the token in HF_TOKEN"
    return "the token of the cached login (`hf auth login`)"


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception classes of the HTTP stacks huggingface_hub may use (httpx2 in 2.x, httpx in 1.x, requests)."""
    classes: list[type[BaseException]] = []
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            classes.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def _scrub(text: str, secrets: Iterable[Optional[str]]) -> str:
    """Remove tokens from text: the known ones verbatim, and anything shaped like a Hub token."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"hf_[A-Za-z0-9]{20,}", "hf_***", text)


def _explain(error: BaseException, repo_id: str, namespace: str, endpoint: str,
             token_source: str) -> tuple[str, Optional[int]]:
    """What went wrong, in words a user can act on, and the HTTP status if there was one."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError

    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    detail = " ".join(str(error).split())
    if isinstance(error, LocalTokenNotFoundError):
        return ("no Hub token was found. Pass --hub_token, set the HF_TOKEN environment variable, or log in "
                "once with `hf auth login`"), None
    if isinstance(error, HfHubHTTPError) and status is not None:
        server = getattr(error, "server_message", None) or ""
        if status == 401:
            return (f"the Hub refused {token_source} (401 Unauthorized): it is invalid, expired or revoked. Create a "
                    f"token with write access at https://huggingface.co/settings/tokens and pass it with "
                    f"--hub_token or HF_TOKEN, or log in again with `hf auth login --force`"), status
        if status == 403:
            return (f"the token may not write to {repo_id} (403 Forbidden: {server or 'no permission'}). It must "
                    f"be a token with write access, and {namespace} must be your user name or an organisation "
                    f"you may write to"), status
        if isinstance(error, RepositoryNotFoundError) or status == 404:
            return (f"the repository {repo_id} was not found after it was created ({status}); check the name "
                    f"and that the token may see it"), status
        if status == 429:
            return "the Hub is rate-limiting requests (429 Too Many Requests); wait a few minutes", status
        return f"the Hub answered {status}: {server or detail}", status
    if isinstance(error, _network_errors()) or isinstance(error, ConnectionError):
        return (f"the Hub at {endpoint} could not be reached ({type(error).__name__}: {detail}). Check the "
                f"network connection, a proxy, or HF_ENDPOINT if you use a mirror"), None
    return f"{type(error).__name__}: {detail}", status


def _commit_message(metrics: dict) -> str:
    accuracy = metrics.get("test_accuracy")
    return f"Upload model: test accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else "Upload model"


def _commit_description(metrics: dict, training: dict, data: dict) -> str:
    parts = []
    if metrics.get("test_f1") is not None:
        parts.append(f"test F1 (macro) {metrics['test_f1']:.4f}")
    if metrics.get("test_loss") is not None:
        parts.append(f"test loss {metrics['test_loss']:.4f}")
    if data.get("dataset") or training.get("dataset"):
        parts.append(f"dataset {data.get('dataset') or training.get('dataset')}")
    if training.get("model"):
        parts.append(f"model {training['model']}")
    if metrics.get("epochs_trained") is not None:
        parts.append(f"{metrics['epochs_trained']} epochs")
    return "; ".join(parts)


def _stage(out: Path, stage: Path, card: str) -> None:
    """Mirror the pushable files of `out` into `stage` (hard links where possible) plus the new card."""
    from huggingface_hub.utils import filter_repo_objects

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for rel in filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS + ["README.md"]):
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(out / rel, target)  # no copy of the weights; the upload only reads
        except OSError:
            shutil.copy2(out / rel, target)
    (stage / "README.md").write_text(card, encoding="utf-8")


def push_to_hub(output_dir: str | os.PathLike, hub_model_id: str, private: bool = False,
                token: Optional[str] = None, commit_message: Optional[str] = None) -> str:
    """Push the model folder to the Hub repository `hub_model_id` ("USER/NAME"); return the repo URL.

    Creates the repo when missing (private when asked; a public repo that exists is not pushed to
    when `private` is set), uploads everything but checkpoints/, runs/ and hidden or temporary files
    in one commit whose message carries the test accuracy, with a card that names the repo. The
    token comes from `token`, else HF_TOKEN, else the cached login. Any failure raises `HubError`;
    the local card is only rewritten (with the repo id) once the push succeeded.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    out = Path(output_dir)
    repo_id = str(hub_model_id or "").strip()
    token = token or None  # an empty --hub_token means "the default token"
    try:
        secrets = [token, get_token() if token is None else None]  # scrubbed from every message
    except Exception:  # get_token raises only for a misconfigured OIDC exchange; whoami reports it below
        secrets = [token]
    retry = retry_command(output_dir, repo_id or "USER/NAME", private)

    def fail(what: str, status: Optional[int] = None) -> HubError:
        message = (f"Pushing {out} to the Hub as {repo_id or '(no repo id)'} failed: {what}. The local folder was "
                   f"not changed. Fix the cause, then retry with: {retry}"
                   + (" (with the token in HF_TOKEN, or --hub_token)" if token else ""))
        return HubError(_scrub(message, secrets), repo_id=repo_id, status=status, retry=_scrub(retry, secrets))

    if not (out / "config.json").is_file() or not any((out / name).is_file() for name in WEIGHT_FILES):
        raise fail(f"{out} is not a finished model folder (it needs config.json and model weights); train "
                   f"first with `python train.py --output_dir {out}`")
    if not repo_id or repo_id.count("/") > 1:
        raise fail("--hub_model_id must be USER/NAME (or NAME, to use the token's user name)")

    # A fresh client reads the endpoint now (HF_ENDPOINT, or huggingface_hub.constants.ENDPOINT).
    api = HfApi(token=token)
    endpoint = api.endpoint
    namespace = repo_id.split("/")[0] if "/" in repo_id else "?"
    try:
        metrics = _read_json(out / "metrics.json", {})
        user = api.whoami()  # fails early, with a clear message, on a missing or refused token
        if "/" not in repo_id:
            repo_id = f"{user['name']}/{repo_id}"
            retry = retry_command(output_dir, repo_id, private)
        namespace = repo_id.split("/")[0]
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        repo_id = repo_url.repo_id or repo_id
        if private and not api.repo_info(repo_id, repo_type="model").private:
            raise fail(f"{repo_id} already exists and is public, but a private repository was asked for; make it "
                       f"private on the Hub first, or push without --hub_private_repo")
        card = str(render_model_card(out, hub_model_id=repo_id))
        message = commit_message or _commit_message(metrics)
        description = _commit_description(metrics, _read_json(out / "training_config.json", {}),
                                          _read_json(out / "data_summary.json", {}))
        # The card with the repo id goes up from a staging copy: the folder itself changes only
        # after the push succeeded.
        with tempfile.TemporaryDirectory(prefix="image-classifier-push-") as tmp:
            _stage(out, Path(tmp), card)
            commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=tmp,
                                       commit_message=message, commit_description=description,
                                       ignore_patterns=list(IGNORE_PATTERNS), delete_patterns=STALE_PATTERNS)
    except HubError:
        raise
    except (OSError, ValueError, *_network_errors()) as error:  # HfHubHTTPError is an OSError
        what, status = _explain(error, repo_id, namespace, endpoint, _token_source(token))
        raise fail(what, status) from None  # from None: the original text could carry secrets
    write_text(out / "README.md", card)
    logger.info("Pushed %s to %s (%s)", out, repo_url, getattr(commit, "commit_url", ""))
    return str(repo_url)
