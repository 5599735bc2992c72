"""The model folder: the one place that names its files, writes it, finds finished ones and reads them back.

A run's OUTPUT_DIR is a model folder in the Hub's `save_pretrained` format plus the run's evidence:

    config.json, model.safetensors, preprocessor_config.json   the model (and its code, for the small CNN)
    training_config.json, data_summary.json, model_summary.txt  what went in
    metrics.json, history.json                                  what came out; metrics.json marks a finished model
    results.csv                                                 history.json as a table: one row per epoch
    robustness.json                                             optional: accuracy under corruptions
    plots/NAME.png, examples/CLASS_I.png, README.md             optional: a failure there is a warning
    checkpoints/step_NNNNNNNN                                   Accelerate states (--resume_from_checkpoint)

`write_model_folder` writes the weights into a temporary `.save-*` folder and moves them into place,
writes metrics.json at once after them, and only then the optional artefacts, so a finished run is
never lost to a plot or a card.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .files import atomic_path, looks_like_local_path, remove_leftovers, replace_dir, write_json
from .images import IMAGE_SUFFIXES, read_image

__all__ = ["CONFIG", "WEIGHTS", "WEIGHT_FILES", "PROCESSOR", "TRAINING_CONFIG", "DATA_SUMMARY", "MODEL_SUMMARY",
           "METRICS", "HISTORY", "RESULTS_CSV", "ROBUSTNESS", "CARD", "PLOTS", "EXAMPLES", "CHECKPOINTS", "PLOT_NAMES", "plot_file",
           "is_local_model", "is_finished", "read_json", "saved_architecture", "find_latest_model", "find_examples", "write_model_folder",
           "write_results_csv", "save_examples", "clean_leftovers", "clear_finished_run"]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHT_FILES = (WEIGHTS, "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
PROCESSOR = "preprocessor_config.json"
TRAINING_CONFIG = "training_config.json"
DATA_SUMMARY = "data_summary.json"
MODEL_SUMMARY = "model_summary.txt"
METRICS = "metrics.json"            # the finished marker: written right after the weights
HISTORY = "history.json"
RESULTS_CSV = "results.csv"         # the history as a spreadsheet opens it
ROBUSTNESS = "robustness.json"      # --robustness_report: accuracy under corruptions (robustness.py)
CARD = "README.md"
PLOTS = "plots"
EXAMPLES = "examples"
CHECKPOINTS = "checkpoints"
SAVE_PREFIX = ".save-"              # the temporary folder the weights are written into before they move into place
# plots/NAME.png: the exploration's three, the evaluation's three (and calibration's), then what the network looks at.
PLOT_NAMES = ("samples", "class_distribution", "augmentation", "learning_curves", "confusion_matrix", "reliability",
              "robustness", "top_losses", "gradcam", "filters")


def plot_file(out: str | os.PathLike, name: str) -> Path:
    """OUT/plots/NAME.png for one of PLOT_NAMES."""
    if name not in PLOT_NAMES:
        raise ValueError(f"unknown plot {name!r}; one of {', '.join(PLOT_NAMES)}")
    return Path(out) / PLOTS / f"{name}.png"


# --------------------------------------------------------------------------------------------
# Reading and finding
# --------------------------------------------------------------------------------------------


def is_local_model(model_dir_or_id: str | os.PathLike) -> bool:
    """True when the argument names an existing folder (otherwise it is taken as a Hub id)."""
    return Path(model_dir_or_id).expanduser().is_dir()


def is_finished(out: str | os.PathLike) -> bool:
    """Whether the folder holds a finished model (its metrics.json)."""
    return (Path(out) / METRICS).is_file()


def read_json(model_dir_or_id: str | os.PathLike, name: str, default: Any = None, **hub_kwargs) -> Any:
    """The JSON file `name` of a local model folder or a Hub repo; `default` when missing or unreadable."""
    try:
        if is_local_model(model_dir_or_id):
            path = Path(model_dir_or_id).expanduser() / name
            if not path.is_file():
                return default
        elif looks_like_local_path(model_dir_or_id):
            return default
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(os.fspath(model_dir_or_id), name, **hub_kwargs)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except Exception:       # missing file, no network, bad JSON: the caller's default stands
        return default


def saved_architecture(source: Optional[str]) -> Optional[str]:
    """For a model folder (or Hub id) this project wrote, the model whose recipe it trains further with: 'cnn-fast'
    for a small CNN with a whitening stem (the airbench nets), 'cnn-basic' for another small CNN, 'timm/ARCH' for a
    timm model. None for anything else: a preset or timm name, a folder that holds no such model."""
    if not source or source.startswith("timm/") or ("/" not in source and not is_local_model(source)):
        return None
    config = read_json(source, CONFIG)
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind == "small_cnn":
        return "cnn-fast" if config.get("stem") == "whiten" else "cnn-basic"
    if kind == "timm_wrapper" and config.get("architecture"):
        return f"timm/{config['architecture']}"
    return None


def find_latest_model(root: str | os.PathLike = "outputs", max_depth: int = 3) -> Optional[Path]:
    """The most recently finished model folder under `root`: one holding metrics.json and config.json.

    "Most recent" is the modification time of metrics.json. Hidden folders and the checkpoint, plot and
    example folders are skipped. Returns None when there is none.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    best: Optional[tuple[float, Path]] = None
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in (CHECKPOINTS, PLOTS, EXAMPLES)]
        if len(here.parts) - base_depth >= max_depth:
            dirs[:] = []
        if METRICS in files and CONFIG in files:
            mtime = (here / METRICS).stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, here)
    return best[1] if best else None


def find_examples(model_dir_or_id: str | os.PathLike, limit: Optional[int] = None,
                  revision: Optional[str] = None, token: Optional[str] = None) -> list[Path]:
    """Example images shipped with a model (its examples/ folder), one per class first; [] when none.

    Files are named `examples/<class>_<i>.png`; the list is interleaved so that the first entries cover
    different classes.
    """
    try:
        if is_local_model(model_dir_or_id):
            folder = Path(model_dir_or_id).expanduser() / EXAMPLES
        elif looks_like_local_path(model_dir_or_id):
            return []
        else:
            from huggingface_hub import snapshot_download

            snap = snapshot_download(os.fspath(model_dir_or_id), allow_patterns=[f"{EXAMPLES}/*"], revision=revision,
                                     token=token)
            folder = Path(snap) / EXAMPLES
    except Exception:
        return []
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    by_class: dict[str, list[Path]] = {}
    for p in files:
        cls, sep, idx = p.stem.rpartition("_")
        by_class.setdefault(cls if sep and idx.isdigit() else p.stem, []).append(p)
    ordered: list[Path] = []
    for i in range(max((len(v) for v in by_class.values()), default=0)):
        ordered += [v[i] for v in by_class.values() if i < len(v)]
    return ordered[:limit] if limit else ordered


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_model_folder(out: Path, save_weights: Callable[[str], None], results: dict[str, Any],
                       history: list[dict[str, Any]],
                       optional: Iterable[tuple[str, Callable[[Path], Any]]] = ()) -> None:
    """Write a finished model into `out`: `save_weights(tmp)` fills a temporary folder whose files are then moved
    into place one by one; history.json and metrics.json follow at once. Then each `(relative path, writer)` of
    `optional` runs; its failure is a warning naming the file, never the loss of the finished run."""
    with tempfile.TemporaryDirectory(dir=out, prefix=SAVE_PREFIX) as tmp:
        save_weights(tmp)
        replace_dir(tmp, out)
    write_json(out / HISTORY, history)
    write_json(out / METRICS, results)
    for name, write in [(RESULTS_CSV, lambda path: write_results_csv(path, history)), *optional]:
        try:
            write(out / name)
        except Exception as error:  # noqa: BLE001 - an optional artefact never costs the finished run
            print(f"warning: could not write {out / name} ({type(error).__name__}: {error}); the model, "
                  f"{METRICS} and the other files are saved.", file=sys.stderr, flush=True)


def write_results_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """history.json's records as CSV (atomically): a header of their keys, one row per epoch; lists (the per-step
    learning rates) left out."""
    import csv

    columns = list(dict.fromkeys(k for record in history for k, v in record.items() if not isinstance(v, list)))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as stream:
        writer = csv.DictWriter(stream, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def save_examples(split, class_names: list[str], num_channels: int, folder: Path, per_class: int = 2) -> None:
    """A few images per class of a `datasets` split (columns image, label) as `<class>_<i>.png`, for the app.

    Each is saved as the model sees it (`images.read_image`: RGB or grayscale, 8 bits), so any source mode
    (CMYK, 16-bit, palette with transparency) becomes a PNG the app reads back to the same pixels.
    """
    counts: dict[int, int] = {}
    for row in split.select(range(min(len(split), 50 * len(class_names)))):
        label = row["label"]
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in class_names[label])
        with atomic_path(folder / f"{name}_{counts[label]}.png") as tmp:
            read_image(row["image"], num_channels)[0].save(tmp, format="PNG")
        if len(counts) == len(class_names) and min(counts.values()) >= per_class:
            break


def clean_leftovers(out: Path) -> None:
    """Remove what a killed save left behind: a half-written model folder (.save-*) or file (.NAME.*.tmp)."""
    for path in remove_leftovers(out, f"{SAVE_PREFIX}*") + remove_leftovers(out, ".*.tmp"):
        print(f"Removed {path.name} from {out}: a save that was cut short left it")


def clear_finished_run(out: Path) -> None:
    """For --overwrite_output_dir: drop the old run's checkpoints and its finished marker."""
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    (out / METRICS).unlink(missing_ok=True)
