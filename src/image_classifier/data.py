"""The data stage: load a dataset, find its columns, split it, then decode it once into uint8 tensors (the
resident path) or wrap it for per-sample decoding in DataLoader workers (the streaming path, for photos).

`open_source` (steps 1-4 and a sample of headers; the run's defaults follow its `traits`), then `load_data`:

1. `_load_source`: a Hub id or alias, a local folder of parquet/arrow files, a `save_to_disk`
   folder, or an image folder (one subfolder per class) becomes a `DatasetDict`.
2. `_find_columns`: the image and label columns, by feature type unless named.
3. `_normalize_source`: keep those two columns as `image` (Image) and `label` (ClassLabel).
4. `_plan_splits`: train/validation/test as row indices into the source splits; missing ones are
   carved from train (stratified, seeded); then the seeded `--max_*_samples` subsets.
5. The path (--data_path, else `recipes.choose_data_path`): resident, `_decode_splits`: every image decoded
   once by `images.read_image` (the app's decoder too) into a uint8 (N, C, S, S) tensor, cached on disk;
   corrupt images are skipped with a warning (or fail: --strict_images). Streaming, `_stream_splits`:
   `streaming.EncodedImages` per split, decoded by the same `read_image` at each access, with transforms.py's
   photo transforms; nothing is cached.
6. Mean/std per channel of the train images (all, or a sample when streaming); `summary` for data_summary.json.

`build_image_processor` is the transformers image processor saved with the model, which gives the same
numbers as `images.decode_image` followed by `Normalize`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from PIL import Image

from .config import DataArguments, training_on_cuda
from .files import atomic_path, looks_like_local_path
from .images import IMAGE_SUFFIXES, CorruptImageWarning, image_tensor, read_image, resize_square
from .recipes import DataTraits, choose_data_path, photo_image_size

__all__ = [
    "DataError",
    "CorruptImageWarning",
    "ALIASES",
    "resolve_dataset",
    "load_data",
    "build_image_data",
    "open_source",
    "DataSource",
    "ImageData",
    "ImageTensors",
    "decoded_images",
    "predicted_view",
    "PredictedView",
    "build_image_processor",
]

ALIASES: dict[str, str] = {
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "mnist": "ylecun/mnist",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
}

# Bump when decoding changes: old cache files are then never read again.
DECODE_VERSION = 2               # 2: images.read_image (photos over MAX_SIDE shrunk first, as the app does)
DATA_FILE_SUFFIXES = {".parquet", ".arrow", ".csv", ".json", ".jsonl"}
SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
IMAGE_COLUMN_NAMES = ("image", "img", "images", "pixel_values", "picture", "photo")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target", "category", "y")
GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
DEFAULTS_SAMPLE = 1000          # train images whose headers decide the default size and channels
SKIPPED_SHOWN = 5               # skipped rows named in the warning and the summary
STATS_SAMPLE = 256              # streaming path: train images whose pixels give the mean and std
# --streaming: MB of encoded images (the evaluation splits and the train stream's first rows) a process holds in
# memory; more go to Arrow files in the cache folder, memory-mapped and shared by the processes (ImageNet-1k's
# validation split, 6.4 GB, would otherwise be held by every process).
STREAM_ROWS_IN_MEMORY_MB = 256


class DataError(ValueError):
    """A dataset problem the user can fix; the message says what is wrong, what was found, and the fix."""


# --------------------------------------------------------------------------------------------
# Public values
# --------------------------------------------------------------------------------------------


class ImageTensors(torch.utils.data.Dataset):
    """Decoded images of one split: `images` uint8 (N, C, H, W), `labels` int64 (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def images_at(self, positions) -> torch.Tensor:
        """uint8 (n, C, H, W) of the given positions."""
        return self.images[torch.as_tensor(list(positions), dtype=torch.int64)]


@dataclass
class ImageData:
    """Everything the later stages need from the data stage."""

    splits: Any                            # datasets.DatasetDict: train/validation/test, columns image, label
    # Same keys: the model's input per split, (uint8 (C, S, S), label) per item, row i = row i of its split.
    # ImageTensors on the resident path; streaming.EncodedImages (decoded per access) on the streaming path,
    # the train split's with the random training transforms (`eval_views` holds its evaluation view).
    tensors: dict[str, Any]
    class_names: list[str]
    image_size: int
    num_channels: int
    mean: list[float]                      # 3 values in [0, 1] units (a gray value repeated for 1 channel)
    std: list[float]
    summary: dict                          # what data_summary.json holds
    cache: dict = field(default_factory=dict)   # cache folder, files, which splits were hits, seconds
    path: str = "resident"                 # "resident" or "streaming"
    crop_pct: Optional[float] = None       # streaming: the evaluation crop (transforms.build_eval_transform)
    eval_views: dict[str, Any] = field(default_factory=dict)    # streaming: train split, evaluation transform

    def eval_view(self, split: str):
        """The split as evaluation sees it (no random transforms): for plots, examples and statistics."""
        return self.eval_views.get(split, self.tensors[split])


class PredictedView:
    """The images of an evaluation view in the order of its predictions, which leave out the undecodable ones
    (engine.predict): `images_at(i)` is the image of prediction i, not of row i."""

    def __init__(self, view, positions: np.ndarray):
        self.view, self.positions = view, positions

    def __len__(self) -> int:
        return len(self.positions)

    def images_at(self, index) -> torch.Tensor:
        return self.view.images_at(self.positions[np.asarray(index, dtype=np.int64)])


def predicted_view(view, num_predictions: int):
    """`view` itself when every row was predicted; else a PredictedView over its decodable rows (found by decoding
    each row again: only a split with an undecodable image pays for it), so the plots of the top losses and the
    Grad-CAM grid show the image each prediction was made on."""
    if num_predictions == len(view):
        return view
    with warnings.catch_warnings():          # each was warned about when evaluation skipped it
        warnings.simplefilter("ignore", CorruptImageWarning)
        positions = np.array([i for i in range(len(view)) if view[i][1] >= 0], dtype=np.int64)
    if len(positions) != num_predictions:
        raise ValueError(f"{num_predictions} predictions for {len(positions)} decodable images of {len(view)}")
    return PredictedView(view, positions)


def decoded_images(view, count: Optional[int] = None) -> tuple[torch.Tensor, np.ndarray]:
    """The first `count` images of an evaluation view, each decoded once: uint8 (N, C, S, S) and int64 labels (N,),
    without the undecodable ones (the streaming path's, labelled -1)."""
    items = [view[i] for i in range(min(len(view), count or len(view)))]
    items = [(image, label) for image, label in items if label >= 0]
    return torch.stack([image for image, _ in items]), np.array([label for _, label in items], dtype=np.int64)


@dataclass
class _Headers:
    """Image headers (size and mode, no pixels) of a sample of train images."""

    sides: Counter                         # side length (px) -> count, width and height both counted
    short_sides: list                      # each image's shorter side (px)
    sizes: Counter                         # "WxH" -> count
    modes: Counter                         # PIL mode -> count
    gray: int                              # grayscale images among them
    seen: int                              # images whose header could be read
    description: str                       # "1000 sampled train images" / "all 72 train images"


@dataclass
class DataSource:
    """A dataset loaded, its columns found, its splits planned and a sample of its headers read, before any
    image is decoded: what `load_data` then decodes or streams, and what the run's defaults follow (`traits`)."""

    args: DataArguments
    kind: str                              # "hub", "imagefolder", "data files", "save_to_disk", "in memory"
    resolved: Optional[str]
    image_column: str
    label_column: str
    normalized: Any                        # DatasetDict: the source splits, columns image and label
    class_names: list[str]
    labels: dict                           # source split -> int64 labels
    plans: dict                            # train/validation/test -> _SplitPlan
    splits: Any                            # DatasetDict: train/validation/test rows of the source
    headers: _Headers
    notes: list
    seed: int
    stream: Any = None                     # --streaming: the train rows as a datasets.IterableDataset
    head: Optional["_SplitPlan"] = None    # --streaming: the rows of train that `splits["train"]` holds in memory

    def traits(self) -> DataTraits:
        counts = list(_class_counts(self.labels[self.plans["train"].source][self.plans["train"].rows],
                                    self.class_names).values())
        side = max(self.headers.sides.items(), key=lambda kv: (kv[1], kv[0]))[0]
        return DataTraits(side=int(side), short_side=int(np.median(self.headers.short_sides)),
                          num_images=sum(len(p.rows) for p in self.plans.values()),
                          gray=self.headers.gray == self.headers.seen,
                          imbalance_ratio=round(max(counts) / min(counts), 2) if min(counts) > 0 else None)


def resolve_dataset(name: str) -> str:
    """Map an alias (cifar10, cifar100, mnist, fashion_mnist) to its Hub id; other names are returned as given.

    An existing local folder of the same name wins over the alias.
    """
    name = name.strip()
    key = name.lower().replace("-", "_")
    if key in ALIASES and not os.path.isdir(name):
        return ALIASES[key]
    return name


# --------------------------------------------------------------------------------------------
# Decoding: PIL image -> uint8 (C, S, S)
# --------------------------------------------------------------------------------------------


def build_image_processor(image_size: int, mean: Iterable[float], std: Iterable[float]):
    """The transformers image processor saved with the model: RGB -> resize -> /255 -> normalize.

    A `ViTImageProcessor` (torchvision backend in transformers 5, which `AutoImageProcessor` loads
    back): it composites transparency on white, resizes to `image_size` square (bilinear, antialias)
    and normalizes with 3-value `mean`/`std` in [0, 1] units, so its `pixel_values` equal
    `Normalize(mean, std)(decode_image(image, 3, image_size))`. 1-channel models get 3 equal channels
    and reduce them with luminance weights that sum to 1.
    """
    from transformers import ViTImageProcessor

    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return ViTImageProcessor(
        do_resize=True, size={"height": int(image_size), "width": int(image_size)}, resample=2,  # 2: BILINEAR
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=mean, image_std=std,
        do_convert_rgb=True,
    )


# --------------------------------------------------------------------------------------------
# Loading the source
# --------------------------------------------------------------------------------------------


def _folder_kind(path: Path) -> str:
    """'save_to_disk', 'data files' or 'imagefolder', by what the folder holds."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "save_to_disk"
    data_files = images = 0
    for i, item in enumerate(path.rglob("*")):
        if item.is_file() and not any(part.startswith(".") for part in item.relative_to(path).parts):
            suffix = item.suffix.lower()
            # An image folder may carry metadata.csv/jsonl beside its images: that does not make it data files.
            data_files += suffix in DATA_FILE_SUFFIXES and item.stem != "metadata"
            images += suffix in IMAGE_SUFFIXES
        if i > 20000:            # enough to tell the kind of a large image folder
            break
    if data_files:
        return "data files"
    if images:
        return "imagefolder"
    found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise DataError(
        f"The folder {path} holds no dataset: expected parquet/arrow/csv/json files, a `save_to_disk` folder "
        f"(dataset_dict.json or state.json), or an image folder with one subfolder of images per class; "
        f"found {found}. Point --dataset at one of those.")


def _check_classes_in_image_folder(raw, path: Path) -> None:
    """datasets' imagefolder adds no label column when all images share one folder: say that, not 'no label'."""
    import datasets

    features = next(iter(raw.values())).features
    if any(isinstance(f, datasets.ClassLabel) for f in features.values()):
        return
    folders = sorted({p.parent for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                      and not any(part.startswith(".") for part in p.relative_to(path).parts)})
    names = sorted({folder.name for folder in folders if folder != path})
    where = (f"one class ({names[0]}/)" if len(names) == 1 else "images with no class subfolders" if not names
             else f"images with no class subfolders inside its split folders ({', '.join(names[:5])})")
    raise DataError(f"The image folder {path} holds {where}; classification needs at least two classes. Put "
                    f"each class's images in a subfolder of its own ({path}/CLASS_A/..., {path}/CLASS_B/...), "
                    f"or name a label column of its metadata.csv with --label_column.")


def _load_source(args: DataArguments, streaming: bool = False):
    """Load whatever --dataset names; return (DatasetDict, kind, resolved name). `streaming`: datasets' streaming
    mode (an IterableDatasetDict; nothing is downloaded or converted first)."""
    import datasets

    resolved = resolve_dataset(args.dataset)
    path = Path(resolved).expanduser()
    config = args.dataset_config_name
    if config and path.is_dir() and (path / config).is_dir():
        path, config = path / config, None          # a local copy keeps each configuration in its own subfolder
    try:
        if path.is_dir():
            kind = _folder_kind(path)
            if kind == "save_to_disk" and streaming:
                raise DataError(f"--streaming reads data files or a Hub dataset as a stream; {path} is a "
                                "`save_to_disk` folder, already local and memory-mapped: drop --streaming.")
            if kind == "save_to_disk":
                raw = datasets.load_from_disk(str(path))
            elif kind == "imagefolder":
                raw = datasets.load_dataset("imagefolder", data_dir=str(path), streaming=streaming)
                if args.label_column is None:
                    _check_classes_in_image_folder(raw, path)
            else:
                raw = datasets.load_dataset(str(path), config, streaming=streaming)
            resolved = str(path.resolve())
        elif path.is_file():
            suffix = path.suffix.lower().lstrip(".")
            builder = {"jsonl": "json"}.get(suffix, suffix)
            if f".{suffix}" not in DATA_FILE_SUFFIXES:
                raise DataError(
                    f"--dataset {args.dataset} is a single file of a kind that cannot be loaded ({path.suffix}). "
                    f"Pass a parquet/arrow/csv/json file, or a folder (data files, `save_to_disk`, or an image "
                    f"folder).")
            kind, resolved = "data files", str(path.resolve())
            raw = datasets.load_dataset(builder, data_files=resolved, streaming=streaming)
        elif looks_like_local_path(resolved, DATA_FILE_SUFFIXES | IMAGE_SUFFIXES):
            parent = path.parent
            hint = (f"its parent folder {parent} exists and holds: "
                    f"{', '.join(sorted(p.name for p in parent.iterdir())[:10]) or 'nothing'}"
                    if parent.is_dir() else f"its parent folder {parent} does not exist either")
            raise DataError(
                f"The dataset path {path} does not exist ({hint}). Pass an existing local folder (parquet/arrow "
                f"files, a `save_to_disk` folder, or an image folder), a Hub dataset id such as uoft-cs/cifar10, "
                f"or an alias ({', '.join(ALIASES)}) with --dataset.")
        else:
            kind = "hub"
            raw = datasets.load_dataset(resolved, config, streaming=streaming)
    except DataError:
        raise
    except Exception as error:          # datasets raises many types: report them as one fixable problem
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = ("from the Hugging Face Hub" if not path.exists() else f"from {path}")
        advice = ("Check the id (and --dataset_config_name) and the network connection, or pass a local folder "
                  "(parquet/arrow files, a `save_to_disk` folder, or an image folder) with --dataset."
                  if not path.exists() else
                  "Check that the folder holds a dataset in one of the supported layouts and that "
                  "--dataset_config_name (if given) names one of its configurations.")
        raise DataError(f"Could not load dataset {args.dataset!r} ({resolved}) {where}: "
                        f"{type(error).__name__}: {first_line}. {advice}") from error
    if isinstance(raw, (datasets.Dataset, datasets.IterableDataset)):
        raw = (datasets.IterableDatasetDict if streaming else datasets.DatasetDict)({"train": raw})
    if not isinstance(raw, (datasets.DatasetDict, datasets.IterableDatasetDict)) or len(raw) == 0:
        raise DataError(f"Dataset {args.dataset!r} loaded as {type(raw).__name__} with no splits; "
                        f"pass a dataset with at least a train split.")
    return raw, kind, resolved


# --------------------------------------------------------------------------------------------
# Columns and labels
# --------------------------------------------------------------------------------------------


def _describe_feature(feature) -> str:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return f"ClassLabel, {feature.num_classes} classes"
    if isinstance(feature, datasets.Image):
        return "Image"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    return type(feature).__name__


def _describe_columns(features) -> str:
    return ", ".join(f"{name} ({_describe_feature(f)})" for name, f in features.items()) or "none"


def _is_label_feature(feature) -> bool:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return True
    return isinstance(feature, datasets.Value) and (
        feature.dtype.startswith(("int", "uint")) or feature.dtype in ("string", "large_string", "bool"))


def _is_image_feature(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.Image) or (
        isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "binary", "large_binary"))


def _pick(candidates: list[str], preferred: tuple[str, ...]) -> Optional[str]:
    for name in preferred:
        for candidate in candidates:
            if candidate.lower() == name:
                return candidate
    return candidates[0] if candidates else None


def _find_columns(features, image_column: Optional[str], label_column: Optional[str]) -> tuple[str, str]:
    """(image column, label column): the named ones, checked, or found by feature type."""
    import datasets

    columns = _describe_columns(features)
    for flag, name, check, what in (("image_column", image_column, _is_image_feature, "images (Image, or file paths)"),
                                    ("label_column", label_column, _is_label_feature,
                                     "labels (ClassLabel, integers or strings)")):
        if name is None:
            continue
        if name not in features:
            raise DataError(f"--{flag} {name!r} is not a column of this dataset; the columns are: {columns}. "
                            f"Pass one of them with --{flag}, or leave --{flag} out to find it by feature type.")
        if not check(features[name]):
            raise DataError(f"--{flag} {name!r} holds {_describe_feature(features[name])}, not {what}; "
                            f"the columns are: {columns}. Pass the right one with --{flag}.")
    if image_column is None:
        found = [n for n, f in features.items() if isinstance(f, datasets.Image)]
        image_column = _pick(found, IMAGE_COLUMN_NAMES)
        if image_column is None:
            raise DataError(f"No image column found: no column has the Image feature type; the columns are: "
                            f"{columns}. Name the column holding images (or image file paths) with --image_column.")
    if label_column is None:
        class_labels = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
        plain = [n for n, f in features.items() if n != image_column and _is_label_feature(f)
                 and n.lower() in LABEL_COLUMN_NAMES]
        label_column = _pick(class_labels, LABEL_COLUMN_NAMES) or _pick(plain, LABEL_COLUMN_NAMES)
        if label_column is None:
            raise DataError(f"No label column found: no column is a ClassLabel, and none of the integer or string "
                            f"columns has a label-like name ({', '.join(LABEL_COLUMN_NAMES)}); the columns are: "
                            f"{columns}. Name the column holding the classes with --label_column.")
    if image_column == label_column:
        raise DataError(f"The image and label columns are both {image_column!r}; the columns are: {columns}. "
                        f"Pass different --image_column and --label_column.")
    return image_column, label_column


def _normalize_source(raw, image_column: str, label_column: str):
    """Keep the two columns, as `image` (Image) and `label` (ClassLabel); return (splits, class_names, labels).

    Class names come from the ClassLabel; else sorted unique strings; else str(value) of the sorted
    unique integers. `labels[split]` is the int64 label array; -1 marks an unlabeled row.
    """
    import datasets

    features = {name: split.features for name, split in raw.items()}
    for name, feats in features.items():
        missing = [c for c in (image_column, label_column) if c not in feats]
        if missing:
            raise DataError(f"Split {name!r} lacks column(s) {', '.join(missing)}; its columns are: "
                            f"{_describe_columns(feats)}. Every split needs the same image and label columns.")
    first = next(iter(features.values()))[label_column]
    values: dict[str, list] = {}
    if isinstance(first, datasets.ClassLabel):
        class_names = [str(n) for n in first.names]
        for name, feats in features.items():
            if feats[label_column] != first:
                raise DataError(f"The label column {label_column!r} has different classes in split {name!r} "
                                f"({feats[label_column]}) than in {next(iter(features))!r} ({first}); "
                                f"the splits must share one set of classes.")
    else:
        for name, split in raw.items():
            values[name] = split.select_columns([label_column])[:][label_column]
        unique = {v for vals in values.values() for v in vals if v is not None}
        try:
            ordered = sorted(unique)
        except TypeError:            # mixed types: sort by their text
            ordered = sorted(unique, key=str)
        class_names = [str(v) for v in ordered]
        if len(set(class_names)) != len(class_names):
            raise DataError(f"The labels of column {label_column!r} do not map to distinct class names "
                            f"({ordered[:10]}); pass another --label_column.")
    out, labels = {}, {}
    for name, split in raw.items():
        split = split.select_columns([image_column, label_column])
        if not isinstance(split.features[image_column], datasets.Image):
            split = split.cast_column(image_column, datasets.Image())       # file paths or bytes
        if not isinstance(first, datasets.ClassLabel):                    # strings / plain ints -> ClassLabel
            index = {v: i for i, v in enumerate(ordered)}
            ids = np.array([index.get(v, -1) if v is not None else -1 for v in values[name]], dtype=np.int64)
            split = split.remove_columns([label_column]).add_column(
                "__label__", ids.tolist(), feature=datasets.ClassLabel(names=class_names))
            split = split.rename_column("__label__", "label")
        elif label_column != "label":
            split = split.rename_column(label_column, "label")
        if image_column != "image":
            split = split.rename_column(image_column, "image")
        out[name] = split
        labels[name] = np.asarray(split.select_columns(["label"]).with_format("numpy")[:]["label"], dtype=np.int64)
    return datasets.DatasetDict(out), class_names, labels


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


@dataclass
class _SplitPlan:
    source: str                 # name of the source split the rows come from
    rows: np.ndarray            # row indices into that source split (int64, sorted)
    origin: str                 # how it was made, for the summary
    rows_before_limit: int = 0


def _stratified_split(labels: np.ndarray, n_holdout: int, seed: int | list[int],
                      notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Positions (kept, holdout) of a seeded split, stratified by label when every class allows it.

    The same indices as `Dataset.train_test_split(test_size=n_holdout, stratify_by_column="label",
    seed=seed)` (its own stratification routine with the same generator), without its row-by-row
    read of the label column, which takes ~20 s for 50,000 rows in datasets 5.
    """
    from datasets.utils.stratify import stratified_shuffle_split_generate_indices

    n_train = len(labels) - n_holdout
    try:
        kept, holdout = next(stratified_shuffle_split_generate_indices(
            labels, n_train, n_holdout, rng=np.random.default_rng(seed)))
    except ValueError as error:      # a class with one image, or fewer rows on a side than classes
        reason = ("a class has only one image" if "Minimum class count" in str(error) else str(error))
        notes.append(f"split not stratified: {reason}")
        warnings.warn(f"Could not stratify the split ({reason}); splitting at random instead.", stacklevel=3)
        permutation = np.random.default_rng(seed).permutation(len(labels))
        holdout, kept = permutation[:n_holdout], permutation[n_holdout:]
    return np.sort(np.asarray(kept, dtype=np.int64)), np.sort(np.asarray(holdout, dtype=np.int64))


def _name_splits(names: list[str], notes: list[str]) -> dict[str, str]:
    """{train/validation/test: the source split that plays it} by SPLIT_NAMES (the only split is train)."""
    found: dict[str, str] = {}
    for canonical, aliases in SPLIT_NAMES.items():
        for name in names:
            if name.lower() in aliases and canonical not in found:
                found[canonical] = name
    if "train" not in found:
        if len(names) == 1:
            found["train"] = names[0]
            notes.append(f"the only split, {names[0]!r}, is used as train")
        else:
            raise DataError(f"No train split: the dataset's splits are {', '.join(names)}. Expected one named "
                            f"train (and optionally validation/valid/val and test); rename the splits or the "
                            f"folders (train/, validation/, test/).")
    ignored = [n for n in names if n not in found.values()]
    if ignored:
        notes.append(f"splits not used: {', '.join(ignored)}")
    return found


def _limit_splits(plans: dict[str, _SplitPlan], labels: dict[str, np.ndarray], args: DataArguments, seed: int,
                  notes: list[str]) -> dict[str, _SplitPlan]:
    """--max_train_samples / --max_eval_samples: a stratified subset of each split (each class keeps its share)."""
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_eval_samples}
    for i, s in enumerate(("train", "validation", "test")):
        plan = plans[s]
        plan.rows_before_limit = len(plan.rows)
        limit = limits[s]
        if limit is not None and limit < len(plan.rows):
            kept, _ = _stratified_split(labels[plan.source][plan.rows], len(plan.rows) - limit, [seed, i], notes)
            plan.rows = plan.rows[kept]
            plan.origin += f"; {limit} of {plan.rows_before_limit} (stratified, seed {seed})"
    return {s: plans[s] for s in ("train", "validation", "test")}


def _labeled_splits(found: dict[str, str], labels: dict[str, np.ndarray], notes: list[str]) -> dict[str, _SplitPlan]:
    """The labeled rows (label >= 0) of each split found: unlabeled rows are dropped, and a validation or test split
    without any labels is left out (carved from train instead), each with a note."""
    plans: dict[str, _SplitPlan] = {}
    for canonical, name in found.items():
        rows = np.flatnonzero(labels[name] >= 0)
        if len(rows) < len(labels[name]):
            notes.append(f"{len(labels[name]) - len(rows)} unlabeled rows of {name!r} dropped")
        if len(rows) == 0 and canonical != "train":
            notes.append(f"split {name!r} has no labels: {canonical} is carved from train instead")
            continue
        plans[canonical] = _SplitPlan(name, rows, name if name == canonical else f"{name} (as {canonical})")
    if "train" not in plans or len(plans["train"].rows) == 0:
        raise DataError(f"The train split {found['train']!r} has no labeled rows; pass a dataset whose train split "
                        f"has labels, or another --label_column.")
    return plans


def _plan_splits(names: list[str], labels: dict[str, np.ndarray], args: DataArguments, seed: int,
                 class_names: list[str], notes: list[str]) -> dict[str, _SplitPlan]:
    """train/validation/test as rows of source splits; carve what is missing from train; subset."""
    plans = _labeled_splits(_name_splits(names, notes), labels, notes)
    train = plans["train"]
    missing = [s for s in ("validation", "test") if s not in plans]
    if missing:
        n = len(train.rows)
        fractions = {"validation": args.validation_split_fraction, "test": args.test_split_fraction}
        counts = {s: max(1, int(round(fractions[s] * n))) for s in missing}
        if sum(counts.values()) >= n:
            raise DataError(f"The train split has only {n} labeled images: too few to carve "
                            f"{' and '.join(missing)} from it ({counts}). Add images, lower "
                            f"--validation_split_fraction/--test_split_fraction, or provide those splits.")
        train_labels = labels[train.source][train.rows]
        kept, holdout = _stratified_split(train_labels, sum(counts.values()), seed, notes)
        source_rows = train.rows
        if len(missing) == 2:           # split the holdout again into validation and test
            val_pos, test_pos = _stratified_split(train_labels[holdout], counts["test"], seed, notes)
            parts = {"validation": holdout[val_pos], "test": holdout[test_pos]}
        else:
            parts = {missing[0]: holdout}
        for s, positions in parts.items():
            share = 100 * len(positions) / n
            plans[s] = _SplitPlan(train.source, source_rows[positions],
                                  f"carved from {train.source} ({share:.1f}%, stratified, seed {seed})")
        plans["train"] = _SplitPlan(train.source, source_rows[kept],
                                    f"{train.source} minus the carved {' and '.join(missing)}")

    return _limit_splits(plans, labels, args, seed, notes)


# --------------------------------------------------------------------------------------------
# Decoding splits, with a disk cache
# --------------------------------------------------------------------------------------------


def _is_gray(image: Image.Image) -> bool:
    if image.mode in GRAY_MODES:
        return True
    if image.mode in ("P", "PA"):
        palette = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
        return bool(len(palette)) and bool((palette == palette[:, :1]).all())
    return False


def _read_headers(split) -> _Headers:
    """Sizes and modes of up to DEFAULTS_SAMPLE train images, spread over the split (headers only, no pixels)."""
    n = len(split)
    positions = np.unique(np.linspace(0, n - 1, num=min(n, DEFAULTS_SAMPLE)).astype(np.int64)).tolist()
    values = split.select(positions)["image"][:]
    headers = _Headers(Counter(), [], Counter(), Counter(), 0, 0, "")
    for value in values:
        try:
            source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
            with Image.open(source) as image:                    # reads the header only: size and mode
                headers.sides.update(image.size)
                headers.short_sides.append(min(image.size))
                headers.sizes["{}x{}".format(*image.size)] += 1
                headers.modes[image.mode] += 1
                headers.gray += _is_gray(image)
        except Exception:
            continue                                             # reported when decoding
        headers.seen += 1
    if headers.seen == 0:
        raise DataError(f"None of the {len(positions)} sampled train images could be opened; the image column "
                        f"holds no readable images. Check the files, or pass another --image_column.")
    headers.description = f"{headers.seen} sampled train images" if headers.seen < n else f"all {headers.seen} train images"
    return headers


def _choose_size(source: DataSource, args: DataArguments) -> tuple[int, int, str, str]:
    """(image_size, num_channels, how each was chosen): the flags, else from the sampled train headers."""
    traits, headers = source.traits(), source.headers
    if args.image_size is not None:
        size, size_from = args.image_size, "--image_size"
    elif traits.photos:
        size = photo_image_size(traits, training_on_cuda())
        size_from = f"photos: the default for this device, at most the median shorter side among {headers.description}"
    else:
        size, size_from = traits.side, f"most common side among {headers.description}"
    if args.num_channels is not None:
        channels, channels_from = args.num_channels, "--num_channels"
    else:
        channels = 1 if traits.gray else 3
        channels_from = (f"all {headers.description} are grayscale" if channels == 1
                         else f"{headers.seen - headers.gray} of {headers.description} are in colour")
    return size, channels, size_from, channels_from


def _cache_root(args: DataArguments) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "image_classifier"


def _cache_file(root: Path, dataset: str, split: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(dataset.rstrip("/")).name)[:40] or "data"
    return root / f"{slug}-{split}-{digest}.pt"


def _describe_row(value, split: str, source: str, row: int) -> str:
    """'train row 17 (path)', or 'validation (train row 17)' for a carved split; row: index in the source split."""
    path = (value or {}).get("path")
    where = f"{source} row {row}" if split == source else f"{split} ({source} row {row})"
    return where + (f" ({path})" if path else "")


class _RowNames:
    """(position in a split, undecoded value) -> 'train row 17 (path)': picklable, for loader worker processes."""

    def __init__(self, split: str, plan: _SplitPlan):
        self.split, self.source, self.rows = split, plan.source, plan.rows

    def __call__(self, position: int, value) -> str:
        return _describe_row(value, self.split, self.source, int(self.rows[position]))


def _decode_split(split, name: str, plan: _SplitPlan, labels: np.ndarray, num_channels: int, image_size: int,
                  strict: bool) -> dict:
    """Decode every image of one split: uint8 images, labels, kept positions, skipped rows, sizes, modes."""
    import datasets
    from tqdm.auto import tqdm

    n = len(split)
    size, channels = image_size, num_channels
    out = np.empty((n, size, size, channels), dtype=np.uint8)       # channels-last while filling: cheap copies
    kept: list[int] = []
    skipped: list[str] = []
    sizes: Counter = Counter()
    modes: Counter = Counter()
    raw = split.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
    position = 0
    with tqdm(total=n, desc=f"Decoding {name}", unit="img", leave=False, dynamic_ncols=True) as bar:
        for batch in raw.iter(batch_size=2048):
            for value in batch["image"]:
                try:
                    image, source_size, source_mode = read_image(value, channels)
                    array = resize_square(image_tensor(image), size).permute(1, 2, 0).numpy()
                except Exception as error:                 # PIL raises OSError, SyntaxError, ValueError, ...
                    where = _describe_row(value, name, plan.source, int(plan.rows[position]))
                    if strict:
                        raise DataError(
                            f"Image {where} cannot be decoded ({type(error).__name__}: "
                            f"{error}). Remove or replace the file, or drop --strict_images to skip undecodable "
                            f"images with a warning.") from error
                    skipped.append(f"{where}: {type(error).__name__}: {str(error)[:120]}")
                else:
                    out[len(kept)] = array
                    kept.append(position)
                    sizes["{}x{}".format(*source_size)] += 1
                    modes[source_mode] += 1
                position += 1
            bar.update(len(batch["image"]))
    # A compact copy: a view of `out` would make torch.save write the rows of skipped images too.
    images = torch.from_numpy(out[: len(kept)]).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
    kept_t = torch.tensor(kept, dtype=torch.int64)
    mean, std = _channel_stats(images)
    return {"version": DECODE_VERSION, "images": images, "labels": torch.from_numpy(labels[kept_t.numpy()]),
            "kept": kept_t, "skipped": skipped, "sizes": dict(sizes), "modes": dict(modes), "mean": mean, "std": std}


def _load_or_decode(split, name: str, plan: _SplitPlan, labels: np.ndarray, key: dict, path: Path,
                    args: DataArguments, image_size: int, num_channels: int) -> tuple[dict, bool]:
    """The decoded split from the cache file when present and valid, else decoded and cached."""
    if path.is_file():
        try:
            entry = torch.load(path, weights_only=True)
            if entry.get("key") == key and entry["images"].shape[1:] == (num_channels, image_size, image_size):
                return entry, True
        except Exception as error:      # a cache written by another version, or a damaged file: decode again
            warnings.warn(f"Ignoring unreadable cache file {path} ({error}).", stacklevel=2)
    started = time.perf_counter()
    entry = _decode_split(split, name, plan, labels, num_channels, image_size, args.strict_images)
    entry["key"] = key
    print(f"Decoded {len(entry['kept']):,} {name} images to {num_channels}x{image_size}x{image_size} uint8 "
          f"in {time.perf_counter() - started:.1f}s; caching them in {path}")
    try:
        with atomic_path(path) as tmp:
            torch.save(entry, tmp)
    except OSError as error:            # a read-only or full cache folder costs time, not the run
        warnings.warn(f"Could not write the decoded-image cache {path} ({error}); the next run decodes again. "
                      f"Set --cache_dir to a writable folder.", stacklevel=2)
    return entry, False


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images in [0, 1] units, exact, from 256-bin histograms."""
    mean, std = [], []
    levels = np.arange(256, dtype=np.float64) / 255.0
    for c in range(images.shape[1]):
        counts = np.zeros(256, dtype=np.float64)
        for start in range(0, images.shape[0], 8192):        # chunks keep the temporary copy small
            counts += np.bincount(images[start:start + 8192, c].numpy().ravel(), minlength=256)
        total = counts.sum()
        if total == 0:
            mean.append(0.5), std.append(0.25)
            continue
        m = float((counts * levels).sum() / total)
        v = float((counts * (levels - m) ** 2).sum() / total)
        mean.append(m), std.append(max(v ** 0.5, 1e-3))      # a constant channel must not divide by 0
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return [round(m, 6) for m in mean], [round(s, 6) for s in std]


# --------------------------------------------------------------------------------------------
# load_data
# --------------------------------------------------------------------------------------------


def open_source(args: DataArguments, seed: int, raw=None, *, kind: str = "in memory",
                resolved: Optional[str] = None) -> DataSource:
    """Load what --dataset names (or take `raw`, a `DatasetDict`/`Dataset` in hand), find the columns, plan the
    splits and read a sample of train headers; no image is decoded yet."""
    import datasets

    if raw is None and args.streaming:
        return open_stream(args, seed)
    if raw is None:
        raw, kind, resolved = _load_source(args)
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({"train": raw})
    first = next(iter(raw.values()))
    image_column, label_column = _find_columns(first.features, args.image_column, args.label_column)
    normalized, class_names, labels = _normalize_source(raw, image_column, label_column)
    if len(class_names) < 2:
        raise DataError(f"The label column {label_column!r} has {len(class_names)} class(es) "
                        f"({', '.join(class_names) or 'none'}); classification needs at least 2. "
                        f"Pass another --label_column or a dataset with more classes.")
    notes: list[str] = []
    plans = _plan_splits(list(normalized.keys()), labels, args, seed, class_names, notes)
    splits = datasets.DatasetDict({
        s: normalized[p.source].select(p.rows, keep_in_memory=True) for s, p in plans.items()})
    headers = _read_headers(splits["train"].cast_column("image", datasets.Image(decode=False)))
    return DataSource(args, kind, resolved, image_column, label_column, normalized, class_names, labels, plans,
                      splits, headers, notes, seed)


def open_stream(args: DataArguments, seed: int) -> DataSource:
    """--streaming: what `open_source` does, on the dataset in datasets' streaming mode. One pass over each split's
    label column (nothing else is read) gives its labels and rows; validation and test come from the dataset's own
    splits, else are carved from train (`_plan_stream_splits`) and read once, still encoded (`_hold_rows`); train stays
    a stream of the other rows (`DataSource.stream`), whose first DEFAULTS_SAMPLE (`DataSource.head`, in memory too)
    give the headers, the statistics and the plots."""
    import datasets

    from .streaming import KeyFilter, image_key

    raw, kind, resolved = _load_source(args, streaming=True)
    features = next(iter(raw.values())).features
    image_column, label_column = _find_columns(features, args.image_column, args.label_column)
    if not isinstance(features[label_column], datasets.ClassLabel):
        raise DataError(f"--streaming needs a ClassLabel label column (its class names are known before the stream "
                        f"is read); {label_column!r} holds {_describe_feature(features[label_column])}. Drop "
                        "--streaming, or cast the column to ClassLabel in the dataset.")
    streams = {name: split.select_columns([image_column, label_column]).rename_columns(
        {c: n for c, n in ((image_column, "image"), (label_column, "label")) if c != n})
        .cast_column("image", datasets.Image(decode=False)) for name, split in raw.items()}
    labels = {name: np.concatenate([np.asarray(batch["label"], dtype=np.int64) for batch in
                                    split.select_columns(["label"]).iter(batch_size=10_000)] or [np.zeros(0, np.int64)])
              for name, split in streams.items()}
    notes: list[str] = []
    plans = _plan_stream_splits(list(streams), labels, args, seed, notes)
    train = plans["train"]
    head = _SplitPlan(train.source, train.rows[:DEFAULTS_SAMPLE], "the first rows of the train stream")
    features = datasets.Features({"image": datasets.Image(decode=False), "label": features[label_column]})
    wanted = {s: p for s, p in plans.items() if s != "train"} | {"train": head}
    splits = _hold_rows(streams, wanted, features, args, resolved, labels, notes)
    # The carved rows leave the train stream by content, not by position: datasets splits a skip() between the
    # parts it gives processes and loader workers (each skips its share of its own files), which would train on
    # validation images.
    carved = [image_key(value) for s, p in plans.items() if s != "train" and p.source == train.source
              for value in splits[s]["image"]]
    stream = streams[train.source]
    if train.rows_before_limit > len(train.rows):      # --max_train_samples: its rows, by content (a pass to read)
        keys = _read_rows(streams, {"train": train}, lambda row: image_key(row["image"]))["train"]
        stream = stream.filter(KeyFilter(keys, keep=True))
    else:
        if carved:
            stream = stream.filter(KeyFilter(carved, keep=False))
        if (labels[train.source] < 0).any():       # unlabeled rows (-1): dropped from train as from the plan
            stream = stream.filter(_is_labeled, input_columns="label")
    source = DataSource(args, kind, resolved, image_column, label_column, datasets.IterableDatasetDict(streams),
                        [str(n) for n in features["label"].names], labels, plans, splits,
                        _read_headers(splits["train"]), notes, seed)
    source.stream, source.head = stream, head
    return source


def _read_rows(streams: dict, plans: dict[str, "_SplitPlan"], pick: Callable[[dict], Any] = lambda row: row,
               max_bytes: Optional[int] = None) -> Optional[dict[str, list]]:
    """pick(row) of the rows each plan names (positions in its source stream), read in one pass per source stream,
    which stops after the last row wanted; `pick` keeps what is needed of a row (the whole of it by default).
    None once the rows' encoded image bytes pass `max_bytes`."""
    out: dict[str, list] = {s: [] for s in plans}
    held = 0
    for source in {p.source for p in plans.values()}:
        mine = {s: set(p.rows.tolist()) for s, p in plans.items() if p.source == source}
        wanted = np.concatenate([p.rows for p in plans.values() if p.source == source])
        for position, row in _rows_at(streams[source], wanted):
            for s, rows in mine.items():
                if position in rows:
                    out[s].append(pick(row))
                    held += len((row["image"] or {}).get("bytes") or b"") if max_bytes is not None else 0
            if max_bytes is not None and held > max_bytes:
                return None
    return out


def _hold_rows(streams: dict, plans: dict[str, "_SplitPlan"], features, args: DataArguments, resolved: str,
               labels: dict[str, np.ndarray], notes: list[str]) -> Any:
    """The rows each plan names as a datasets.DatasetDict, still encoded: in memory while they hold at most
    STREAM_ROWS_IN_MEMORY_MB of image bytes; else each split is written once to an Arrow file in the cache folder
    (atomically, by the first process to get there) and memory-mapped: every process of the run, and later runs on
    the same data, rows and files, read that one file (and nothing of the stream)."""
    import datasets

    stamps = _file_stamps(resolved)            # one walk of a local dataset's folders, for every split's key
    files = {split: _rows_file(args, resolved, split, plan, labels, stamps) for split, plan in plans.items()}
    if not all(path.is_file() for path in files.values()):
        rows = _read_rows(streams, plans, max_bytes=STREAM_ROWS_IN_MEMORY_MB * 2**20)
        if rows is not None:
            return datasets.DatasetDict({s: datasets.Dataset.from_list(r, features=features) for s, r in rows.items()})
        from datasets.arrow_writer import ArrowWriter

        for split, path in files.items():
            if not path.is_file():
                with atomic_path(path) as tmp, ArrowWriter(features=features, path=str(tmp)) as writer:
                    for _, row in _rows_at(streams[plans[split].source], plans[split].rows):   # one at a time
                        writer.write(row)
                    writer.finalize()
    held = {split: datasets.Dataset.from_file(str(path)) for split, path in files.items()}
    mb = sum(path.stat().st_size for path in files.values()) / 1e6
    what = ", ".join(f"{len(d):,} {'first train rows' if s == 'train' else s + ' images'}" for s, d in held.items())
    notes.append(f"Streaming: the {what} hold {mb:,.0f} MB of encoded images, over {STREAM_ROWS_IN_MEMORY_MB} MB: "
                 f"kept in memory-mapped files in {next(iter(files.values())).parent}, written once, shared by the "
                 "processes and reused by later runs on the same data, not held in each process's memory")
    return datasets.DatasetDict(held)


def _rows_file(args: DataArguments, resolved: str, split: str, plan: "_SplitPlan", labels: dict[str, np.ndarray],
               stamps: list) -> Path:
    """The cache file of a plan's streamed rows: named by the dataset, its columns, the rows, the labels of their
    split and (a local dataset) its files' `_file_stamps`, so that any change there names another file."""
    key = {"kind": "streamed rows", "dataset": resolved, "config": args.dataset_config_name,
           "columns": [args.image_column, args.label_column], "source": plan.source,
           "rows": hashlib.sha256(plan.rows.astype(np.int64).tobytes()).hexdigest(),
           "labels": hashlib.sha256(labels[plan.source].tobytes()).hexdigest(), "files": stamps}
    return _cache_file(_cache_root(args), resolved, split, key).with_suffix(".arrow")


def _is_labeled(label: int) -> bool:
    """A stream filter (module-level, so loader workers can unpickle it): rows with a label (not -1)."""
    return label >= 0


def _rows_at(stream, positions: np.ndarray) -> Iterable[tuple[int, dict]]:
    """(position, row) of the rows at these positions of a stream, in stream order, in one pass that stops after
    the last."""
    wanted, last = set(positions.tolist()), int(positions.max()) if len(positions) else -1
    for position, row in enumerate(stream.take(last + 1)):
        if position in wanted:
            yield position, row


def _file_stamps(resolved: str) -> list:
    """What changes when a local dataset does: (path, bytes, mtime ns) of its data files (parquet, arrow, ...) and
    mtime ns of its folders (an image added or removed); without a stat per image of a large image folder. [] for
    a Hub dataset (its label pass and its name, in the key too, stand in)."""
    path = Path(resolved)
    if path.is_file():
        return [(str(path), path.stat().st_size, path.stat().st_mtime_ns)]
    stamps: list = []
    for folder, _, names in sorted(os.walk(path)) if path.is_dir() else []:
        stamps.append((folder, os.stat(folder).st_mtime_ns))
        for name in sorted(n for n in names if Path(n).suffix.lower() in DATA_FILE_SUFFIXES):
            stat = os.stat(os.path.join(folder, name))
            stamps.append((os.path.join(folder, name), stat.st_size, stat.st_mtime_ns))
    return stamps


def _plan_stream_splits(names: list[str], labels: dict[str, np.ndarray], args: DataArguments, seed: int,
                        notes: list[str]) -> dict[str, _SplitPlan]:
    """train/validation/test as positions in the source streams. A missing validation or test split is carved from
    the first rows of train (only they are read twice) when those rows hold every class train has; else (a stream
    ordered by class, as image folders are) by the stratified split of the other data path, which reads the train
    stream once more, up to the last carved row. --max_*_samples keep a stratified subset of each."""
    plans = _labeled_splits(_name_splits(names, notes), labels, notes)
    source, labeled = plans["train"].source, plans["train"].rows     # positions of train's labeled rows
    every = labels[source][labeled]
    n = len(every)
    missing = [s for s in ("validation", "test") if s not in plans]
    fractions = {"validation": args.validation_split_fraction, "test": args.test_split_fraction}
    counts = {s: min(max(1, int(round(fractions[s] * n))), args.max_eval_samples or n) for s in missing}
    if sum(counts.values()) >= n:
        raise DataError(f"The train split has only {n} labeled images: too few to carve {' and '.join(missing)} from "
                        f"it ({counts}). Add images, lower --validation_split_fraction/--test_split_fraction, or "
                        "provide those splits.")
    start, which = 0, "labeled rows" if n < len(labels[source]) else "rows"
    for s in missing:
        plans[s] = _SplitPlan(source, labeled[start:start + counts[s]],
                              f"the first {counts[s]} {which} of the {source} stream (--streaming)")
        start += counts[s]
    plans["train"] = _SplitPlan(source, labeled[start:], f"{source} without the carved {' and '.join(missing)}"
                                if missing else source)
    classes = len(set(every.tolist()))
    if missing and any(len(set(labels[source][p.rows].tolist())) < classes for s, p in plans.items() if s != "train"):
        kept, holdout = _stratified_split(every, start, seed, notes)
        parts = ({"validation": holdout} if missing == ["validation"] else {"test": holdout} if missing == ["test"]
                 else dict(zip(("test", "validation"), _stratified_split(every[holdout], counts["validation"], seed,
                                                                         notes))))
        for s in missing:
            rows = np.sort(labeled[holdout[parts[s]]] if len(missing) == 2 else labeled[parts[s]])
            plans[s] = _SplitPlan(source, rows, f"carved from {source} ({len(rows)}, stratified, seed {seed})")
        plans["train"].rows = np.sort(labeled[kept])
        notes.append(f"the first rows of the {source} stream miss classes (it is ordered by class): "
                     f"{' and '.join(missing)} carved stratified instead, read in a pass over the stream")
    return _limit_splits(plans, labels, args, seed, notes)


def load_data(args: DataArguments, seed: int, source: Optional[DataSource] = None) -> ImageData:
    """Load, find columns, split, then decode (resident path, cached) or wrap for per-sample decoding (streaming
    path) and summarize the dataset that --dataset names (or `source`, already opened with these args)."""
    source = source or open_source(args, seed)
    started = time.perf_counter()
    image_size, num_channels, size_from, channels_from = _choose_size(source, args)
    path = (args.data_path or ("streaming" if args.streaming else None)
            or choose_data_path(source.traits(), image_size, num_channels, args.resident_max_gib)[0])
    build = _stream_splits if path == "streaming" else _decode_splits
    data = build(source, args, image_size, num_channels)
    data.summary = _summarize(source, data, size_from, channels_from)
    data.cache["seconds"] = round(time.perf_counter() - started, 3)
    return data


def build_image_data(raw, args: DataArguments, seed: int, *, source: str = "in memory",
                     resolved: Optional[str] = None) -> ImageData:
    """Everything of `load_data` after loading, for a `DatasetDict` (or `Dataset`) already in hand."""
    return load_data(args, seed, open_source(args, seed, raw, kind=source, resolved=resolved))


def _decode_splits(source: DataSource, args: DataArguments, image_size: int, num_channels: int) -> ImageData:
    """The resident path: every split decoded once into uint8 tensors (cached on disk), skips reported."""
    estimate = sum(len(s) for s in source.splits.values()) * num_channels * image_size ** 2
    if estimate > 8 * 2 ** 30:
        warnings.warn(f"The decoded images take about {estimate / 2 ** 30:.1f} GiB in memory "
                      f"({image_size}x{image_size}x{num_channels}); pass --data_path streaming, a smaller "
                      f"--image_size or --max_train_samples if that is too much.", stacklevel=3)
    root = _cache_root(args)
    splits, tensors, entries = dict(source.splits), {}, {}
    cache = {"dir": str(root), "files": {}, "hits": {}}
    for s, plan in source.plans.items():
        key = {"version": DECODE_VERSION, "fingerprint": source.normalized[plan.source]._fingerprint,
               "source_split": plan.source, "rows": hashlib.sha256(plan.rows.tobytes()).hexdigest(),
               "label_column": source.label_column, "image_column": source.image_column,
               "classes": source.class_names, "image_size": image_size, "num_channels": num_channels}
        path = _cache_file(root, source.resolved or args.dataset, s, key)
        entry, hit = _load_or_decode(splits[s], s, plan, source.labels[plan.source][plan.rows], key, path, args,
                                     image_size, num_channels)
        if args.strict_images and entry["skipped"]:
            raise DataError(f"{len(entry['skipped'])} image(s) of the {s} split cannot be decoded, first: "
                            f"{entry['skipped'][0]}. Remove or replace them, or drop --strict_images to skip "
                            f"undecodable images with a warning.")
        if len(entry["kept"]) < len(splits[s]):             # keep row i of the split = row i of the tensor
            splits[s] = splits[s].select(entry["kept"].tolist(), keep_in_memory=True)
        if len(entry["kept"]) == 0:
            raise DataError(f"No image of the {s} split could be decoded ({len(entry['skipped'])} failed, first: "
                            f"{entry['skipped'][0] if entry['skipped'] else 'none'}). Check the image files.")
        tensors[s], entries[s] = ImageTensors(entry["images"], entry["labels"]), entry
        cache["files"][s], cache["hits"][s] = str(path), hit
    skipped = [row for s in source.plans for row in entries[s]["skipped"]]
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} image(s) that could not be decoded; first: "
                      f"{'; '.join(skipped[:SKIPPED_SHOWN])}. Pass --strict_images to stop on them instead.",
                      CorruptImageWarning, stacklevel=3)
    sizes, modes = Counter(), Counter()
    for entry in entries.values():
        sizes.update(entry["sizes"])
        modes.update(entry["modes"])
    total = sum(len(t) for t in tensors.values())
    counted = {"images_counted": f"all {total} decoded images of train, validation and test",
               "image_sizes": dict(sizes.most_common(20)), "image_modes": dict(modes.most_common()),
               "skipped_images": {"count": len(skipped), "first": skipped[:SKIPPED_SHOWN]}}
    import datasets

    return ImageData(splits=datasets.DatasetDict(splits), tensors=tensors, class_names=source.class_names,
                     image_size=image_size, num_channels=num_channels, mean=list(entries["train"]["mean"]),
                     std=list(entries["train"]["std"]), summary=counted, cache=cache)


def _stream_splits(source: DataSource, args: DataArguments, image_size: int, num_channels: int) -> ImageData:
    """The streaming path: each split stays encoded and is decoded per access (streaming.EncodedImages); the
    train split with random-resized crops and flips, the others with the evaluation resize and centre crop."""
    from .augment import flip_enabled
    from .streaming import EncodedImages, StreamedImages
    from .transforms import DEFAULT_CROP_PCT, build_eval_transform, build_train_transform, eval_resize_size

    crop_pct = args.crop_pct or DEFAULT_CROP_PCT
    evaluation = build_eval_transform(image_size, crop_pct)
    # Training photos (random crops) may decode at a reduced JPEG scale that keeps this shorter side; evaluation
    # decodes them whole, exactly as the app and pipeline() do (a weak model's test accuracy moved by 3 of 12
    # images on 72-150 px photos when evaluation decoded at half scale).
    draft = eval_resize_size(image_size, crop_pct)
    plans = dict(source.plans, train=source.head) if source.stream is not None else source.plans
    sets = {s: EncodedImages(source.splits[s], source.labels[plan.source][plan.rows], num_channels, image_size,
                             evaluation, _RowNames(s, plan), None, args.strict_images)
            for s, plan in plans.items()}
    train_view = sets["train"]
    if args.augment:
        sets["train"] = train_view.with_transform(build_train_transform(
            image_size, args.crop_scale, flip_enabled(args, source.class_names), args.auto_augment), draft)
    if source.stream is not None:          # --streaming: train is the stream; its head stands in where rows are read
        train = source.plans["train"]
        sets["train"] = StreamedImages(source.stream, source.labels[train.source][train.rows], sets["train"],
                                       args.shuffle_buffer_size, source.seed)
    rng = np.random.default_rng(source.seed)
    sample = np.sort(rng.choice(len(train_view), size=min(STATS_SAMPLE, len(train_view)), replace=False))
    items = [(image, label) for image, label in (train_view[int(i)] for i in sample) if label >= 0]
    if not items:
        raise DataError(f"None of the {len(sample)} sampled train images could be decoded (each was warned about "
                        "above); check the image files.")
    mean, std = _channel_stats(torch.stack([image for image, _ in items]))
    headers = source.headers
    counted = {"images_counted": f"headers of {headers.description} (the streaming path decodes images as it "
                                 f"reads them); mean and std of {len(sample)} sampled train images",
               "image_sizes": dict(headers.sizes.most_common(20)), "image_modes": dict(headers.modes.most_common()),
               "skipped_images": {"count": None, "first": [],
                                  "note": "counted while training and evaluating (the streaming path)"}}
    return ImageData(splits=source.splits, tensors=sets, class_names=source.class_names, image_size=image_size,
                     num_channels=num_channels, mean=mean, std=std, summary=counted, path="streaming",
                     crop_pct=crop_pct, eval_views={"train": train_view})


def _class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels[labels >= 0], minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts)}


def _summarize(source: DataSource, data: ImageData, size_from: str, channels_from: str) -> dict:
    args, plans, labels, class_names = source.args, source.plans, source.labels, source.class_names
    train_counts = _class_counts(data.tensors["train"].labels.numpy(), class_names)
    smallest = min(train_counts.values())
    return {
        "dataset": args.dataset,
        "dataset_resolved": source.resolved or args.dataset,
        "dataset_config_name": args.dataset_config_name,
        "source": source.kind,
        "image_column": source.image_column,
        "label_column": source.label_column,
        "num_classes": len(class_names),
        "class_names": class_names,
        "source_splits": {name: {"rows": int(len(labels[name])),
                                 "class_counts": _class_counts(labels[name], class_names)} for name in source.normalized},
        "splits": {s: {"rows": len(data.tensors[s]), "from": plans[s].origin,
                       "rows_before_limit": plans[s].rows_before_limit,
                       "class_counts": _class_counts(data.tensors[s].labels.numpy(), class_names)} for s in data.tensors},
        "imbalance_ratio": round(max(train_counts.values()) / smallest, 4) if smallest > 0 else None,
        **data.summary,
        "data_path": data.path,
        "image_size": data.image_size,
        "image_size_from": size_from,
        "num_channels": data.num_channels,
        "num_channels_from": channels_from,
        **({"crop_pct": data.crop_pct} if data.crop_pct else {}),
        "mean": data.mean,
        "std": data.std,
        "seed": source.seed,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "notes": source.notes,
    }
