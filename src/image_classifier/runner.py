"""One run, top to bottom: data → model → fit → evaluate → model folder (→ Hub).

Each stage is a call into its module; values pass between them, nothing global. Every process
runs this; only the main process writes files or pushes.
"""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset

from . import data as data_stage
from . import engine, hub, metrics, models, plots
from .augment import BatchAugment, Normalize, build_batch_mix
from .config import Config, ConfigError, save_config
from .files import (atomic_path, check_writable, disk_full_is_an_error, read_json, remove_leftovers, replace_dir,
                    write_json, write_text)
from .interrupt import StopOnSignal, resume_command

__all__ = ["run", "build_model", "train_model", "predict_float32", "check_output_dir", "clear_output_dir",
           "clean_leftovers", "describe_hardware", "save_model_folder", "save_examples"]

# Files that mark a folder as holding a finished model (written right after the weights by `save_model_folder`).
FINISHED_MARKER = "metrics.json"
SAVE_PREFIX = ".save-"      # the temporary folder the weights are written into before they move into place


def check_output_dir(config: Config) -> None:
    """Refuse an output folder that cannot be written, or that already holds a finished model or another run's
    checkpoints unless told to replace it, or that has no checkpoint to resume: before any data is loaded."""
    out = Path(config.train.output_dir)
    problem = check_writable(out)
    if problem:
        raise ConfigError("output_dir", f"{out} cannot be written: {problem}. Choose a folder you can write to "
                                        "with --output_dir (a new one is created).")
    if config.train.resume_from_checkpoint:
        engine.find_checkpoint(out, config.train.resume_from_checkpoint)    # a missing one is an error now
    fresh = not (config.train.overwrite_output_dir or config.train.resume_from_checkpoint)
    if (out / FINISHED_MARKER).is_file() and fresh:
        raise ConfigError("output_dir", f"{out} already holds a finished model ({FINISHED_MARKER} exists). "
                                        "Pass --overwrite_output_dir to replace it, or choose another --output_dir.")
    # A fresh run's checkpoints would mix with these, and 'latest' could then pick the old run's.
    checkpoints = sorted((out / engine.CHECKPOINT_DIR).glob("step_*"))
    if checkpoints and fresh:
        raise ConfigError("output_dir", f"{out} holds checkpoints of an unfinished run (newest: {checkpoints[-1].name}). "
                                        "Pass --resume_from_checkpoint latest to continue it, --overwrite_output_dir to "
                                        "start over, or choose another --output_dir.")
    # The default net, batch and resizing schedule follow the device, so a run resumed on other hardware could
    # change them.
    saved = out / "training_config.json"
    if config.train.resume_from_checkpoint and not config.train.overwrite_output_dir and saved.is_file():
        trained = read_json(saved)
        now = {"model": config.model.model, "per_device_train_batch_size": config.train.per_device_train_batch_size,
               "progressive_resize_epochs": config.train.progressive_resize_epochs}
        for flag, value in now.items():
            if trained.get(flag) not in (None, value):
                raise ConfigError(flag, f"the run in {out} trains with --{flag} {trained[flag]}, not {value} (the "
                                        "defaults of --model, --per_device_train_batch_size and "
                                        "--progressive_resize_epochs follow the device: a CUDA GPU or not). "
                                        f"Pass --{flag} {trained[flag]} to resume it.")


def clear_output_dir(out: Path) -> None:
    """For --overwrite_output_dir: drop the old run's checkpoints and its finished marker (main process only).

    Called only once the new run's flags, data and model have been checked, right before it writes.
    """
    shutil.rmtree(out / engine.CHECKPOINT_DIR, ignore_errors=True)
    (out / FINISHED_MARKER).unlink(missing_ok=True)


def clean_leftovers(out: Path) -> None:
    """What a killed save left behind: a half-written model folder (.save-*) or file (.NAME.*.tmp)."""
    for path in remove_leftovers(out, f"{SAVE_PREFIX}*") + remove_leftovers(out, ".*.tmp"):
        print(f"Removed {path.name} from {out}: a save that was cut short left it")


def describe_hardware(accelerator: Accelerator) -> str:
    """'1x NVIDIA H100 80GB HBM3' or '1x CPU (2 threads, x86_64)', per process count."""
    n = accelerator.num_processes
    if accelerator.device.type == "cuda":
        return f"{n}x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{n}x CPU ({torch.get_num_threads()} threads, {platform.machine()})"


def run(config: Config) -> Optional[dict[str, Any]]:
    """Explore the data, train, evaluate and save the model folder; return the metrics (None for --explore_only)."""
    check_output_dir(config)
    accelerator = engine.build_accelerator(config)
    out = Path(config.train.output_dir)
    if accelerator.is_main_process:
        clean_leftovers(out)
    set_seed(config.train.seed)    # splits and model initialisation: identical on every process
    for note in models.prepare_model_config(config):   # timm: RGB input, --pretrained checked now, not after the data
        accelerator.print(note)

    # Data: the main process decodes first and fills the cache that the others then read.
    with accelerator.main_process_first():
        data = data_stage.load_data(config.data, seed=config.train.seed)
    model, normalize = (None, None) if config.data.explore_only else build_model(config, data)
    # Everything that can fail on the user's input has passed: only now may an old run's files go.
    if accelerator.is_main_process and config.train.overwrite_output_dir and not config.train.resume_from_checkpoint:
        clear_output_dir(out)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        data_stage.explore(data, config.data, out)
        save_config(config, out / "training_config.json")
    if config.data.explore_only:
        return None

    summary = models.summarize_model(model, (data.num_channels, data.image_size, data.image_size))
    if accelerator.is_main_process:
        accelerator.print(summary)
        write_text(out / "model_summary.txt", summary + "\n")
    if config.train.report_to != "none":
        accelerator.init_trackers("image_classifier", config=_scalars(config.to_dict()))

    # SIGINT/SIGTERM during training: checkpoint at the next step, then `TrainingInterrupted` (see interrupt.py).
    with StopOnSignal() as stop:
        result = train_model(model, normalize, data, data.tensors["train"], data.tensors["validation"], config,
                             accelerator, stop=stop)

    # Evaluate the best weights on validation and test, every sample exactly once, in float32: the network as it
    # is saved and as pipeline() and the app run it (bf16 logits differ in the last digits).
    model = engine.plain_model(accelerator, result.model)
    results: dict[str, Any] = {}
    predictions = {}
    for split, prefix in (("validation", "eval"), ("test", "test")):
        logits, labels = predict_float32(model, data.tensors[split], normalize, accelerator, config, result.tta)
        results.update(metrics.compute_metrics(logits, labels, data.class_names, prefix=prefix))
        predictions[split] = (logits, labels)
    results["tta"] = result.tta
    if result.tta != "none":    # what pipeline() and the app see: one view per image
        logits, labels = predict_float32(model, data.tensors["test"], normalize, accelerator, config)
        results["test_accuracy_without_tta"] = metrics.compute_metrics(logits, labels, data.class_names)["accuracy"]
    state = result.state
    results.update(train_seconds=round(state.train_seconds, 2), num_parameters=models.count_parameters(model),
                   epochs_trained=state.epoch, best_epoch=state.best_epoch, global_steps=state.global_step,
                   hardware=describe_hardware(accelerator), num_processes=accelerator.num_processes,
                   mixed_precision=accelerator.mixed_precision)
    accelerator.print(
        f"test accuracy {results['test_accuracy']:.4f}  f1 {results['test_f1']:.4f}  loss {results['test_loss']:.4f}  "
        f"({results['test_num_samples']} images; best epoch {state.best_epoch}; {state.train_seconds:.1f}s training)")

    if accelerator.is_main_process:
        save_model_folder(model, data, state, results, predictions["test"], out)
    accelerator.wait_for_everyone()
    if config.train.report_to != "none":
        accelerator.end_training()
    if config.hub.push_to_hub and accelerator.is_main_process:
        hub.push_to_hub(out, config.hub.hub_model_id, private=config.hub.hub_private_repo, token=config.hub.hub_token)
    return results


def build_model(config: Config, data: "data_stage.ImageData") -> tuple[torch.nn.Module, Normalize]:
    """The --model for this data, and the normalisation it takes (timm models bring their own: `data` is updated).

    A patch-whitening stem is fit to the first 5,000 normalised training images here.
    """
    try:
        model = models.create_model(config.model.model, class_names=data.class_names, num_channels=data.num_channels,
                                    image_size=data.image_size, overrides=config.model.overrides(),
                                    pretrained=config.model.pretrained)
    except ValueError as error:
        raise ConfigError("model", str(error)) from error
    data.mean, data.std = models.input_normalization(model, data.mean, data.std)
    normalize = Normalize(data.mean, data.std)
    models.init_from_data(model, normalize(data.tensors["train"].images[:5000]))
    return model, normalize


def train_model(model: torch.nn.Module, normalize: Normalize, data: "data_stage.ImageData",
                train: "data_stage.ImageTensors", heldout: "data_stage.ImageTensors", config: Config,
                accelerator: Accelerator, stop: Optional[StopOnSignal] = None) -> "engine.FitResult":
    """`engine.fit` with this data's augmentation and metrics, scoring `heldout` after every epoch."""
    def evaluate_fn(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        return metrics.compute_metrics(logits, labels, data.class_names)

    return engine.fit(model, train, heldout, augment=BatchAugment(config.data, data.class_names, data.mean, data.std),
                      normalize=normalize, mix=build_batch_mix(config.data, len(data.class_names)), config=config,
                      accelerator=accelerator, evaluate_fn=evaluate_fn, stop=stop)


def predict_float32(model: torch.nn.Module, split: Dataset, normalize: Normalize, accelerator: Accelerator,
                    config: Config, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """engine.predict over every image of `split` once, in float32 whatever the training's precision: pass the
    network `engine.plain_model` returned. Returns logits (N, K) and labels (N,)."""
    loader = accelerator.prepare(DataLoader(split, batch_size=config.train.per_device_eval_batch_size))
    return engine.predict(model, loader, normalize, accelerator, tta, mixed_precision=False)


def save_model_folder(model, data: "data_stage.ImageData", state: "engine.TrainerState", results: dict[str, Any],
                      test_predictions: tuple[np.ndarray, np.ndarray], out: Path) -> None:
    """Write the Hub-format model folder: weights, configs, code and evidence, then plots, examples and card.

    The weights and processor are saved into a temporary folder and renamed into place file by file;
    metrics.json, which marks a finished model, follows them at once. What comes after is optional: a
    failure there is a warning naming the file, never the loss of a finished run. A full disk is a
    `DiskFullError` that says how to finish the run from its last checkpoint.
    """
    kept = (f"Nothing saved before is lost: the newest checkpoint in {out / engine.CHECKPOINT_DIR} holds the "
            f"trained weights. Free some space, then finish the run with:\n  {resume_command()}")
    with disk_full_is_an_error("the model files", out, kept):
        with tempfile.TemporaryDirectory(dir=out, prefix=SAVE_PREFIX) as tmp:
            models.save_pretrained(model, tmp)     # timm models: a folder stock timm loads too, with its processor
            if not models.is_timm_model(model):
                data_stage.build_image_processor(data.image_size, data.mean, data.std).save_pretrained(tmp)
            replace_dir(tmp, out)
        write_json(out / "history.json", state.history)
        write_json(out / FINISHED_MARKER, results)
    logits, labels = test_predictions
    optional = [   # (path in the folder, writer of that path)
        ("plots/learning_curves.png", lambda path: plots.plot_learning_curves(state.history, path)),
        ("plots/confusion_matrix.png", lambda path: plots.plot_confusion_matrix(
            np.asarray(results["test_confusion_matrix"]), data.class_names, path)),
        ("plots/misclassified.png", lambda path: plots.plot_misclassified(
            data.tensors["test"].images.numpy(), labels, metrics.softmax(logits), data.class_names, path)),
        ("examples", lambda path: save_examples(data, path)),
        ("README.md", lambda path: hub.write_model_card(out)),       # the card, filled from the files above
    ]
    for name, write in optional:
        try:
            write(out / name)
        except Exception as error:  # noqa: BLE001 - an optional artefact never costs the finished run
            print(f"warning: could not write {out / name} ({type(error).__name__}: {error}); the model, "
                  f"{FINISHED_MARKER} and the other files are saved.", file=sys.stderr, flush=True)


def save_examples(data: "data_stage.ImageData", folder: Path, per_class: int = 2) -> None:
    """A few test images per class as PNG (`<class>_<i>.png`), so the app and a Space have examples.

    Each is saved as the model sees it (`data.model_view`: RGB or grayscale, 8 bits), so any source mode
    (CMYK, 16-bit, palette with transparency) becomes a PNG the app reads back to the same pixels.
    """
    counts: dict[int, int] = {}
    split = data.splits["test"]
    for row in split.select(range(min(len(split), 50 * len(data.class_names)))):
        label = row["label"]
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in data.class_names[label])
        with atomic_path(folder / f"{name}_{counts[label]}.png") as tmp:
            data_stage.model_view(row["image"], data.num_channels).save(tmp, format="PNG")
        if len(counts) == len(data.class_names) and min(counts.values()) >= per_class:
            break


def _scalars(flat: dict[str, Any]) -> dict[str, Any]:
    """Tracker hyperparameters must be scalars: lists become strings, None is dropped."""
    return {k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in flat.items() if v is not None}
