"""Inference over many images: `python -m image_classifier predict` with files, folders, glob patterns, text files
of paths (`paths.txt`, one per line) or a dataset split (`--dataset D --split test`), streamed in batches to the
terminal, a CSV file or JSON lines.

Images are decoded in a pool of threads (`load_image`, the decoder training uses) while the `Predictor`'s worker
runs the model on the batch before, so the CPU does both at once. An unreadable file is a row with an `error`
column, reported on stderr and skipped; the rest go on. The output file is written atomically at the end.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, TextIO

from .images import ImageError, ImageLike, load_image

__all__ = ["Input", "Row", "list_inputs", "classify_inputs", "write_rows", "add_predict_command", "predict_command",
           "OUTPUT_FORMATS"]

OUTPUT_FORMATS = (".csv", ".jsonl", ".json")       # --output suffixes: a table, or one JSON object per line
CHUNK = 64                                         # images decoded per task; the Predictor batches them itself


@dataclass
class Input:
    """One image to classify: its name in the output, what to decode, and its true class when known."""

    name: str
    image: ImageLike
    true_label: Optional[str] = None


@dataclass
class Row:
    """One output row: the top-k (label, probability) pairs, or the error that kept the image out."""

    name: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: Optional[str] = None
    true_label: Optional[str] = None


def list_inputs(items: Sequence[str], dataset: Optional[str] = None, split: str = "test") -> list[Input]:
    """The images named on the command line (`inference.expand_image_paths`; a .txt file lists paths, one per
    line, # comments and blank lines skipped), then the rows of a dataset split (named 'SPLIT/ROW', with
    their class)."""
    from .inference import expand_image_paths

    paths: list[str] = []
    for item in items:
        if item.endswith(".txt") and os.path.isfile(item):
            lines = Path(item).read_text(encoding="utf-8").splitlines()
            paths += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        else:
            paths.append(item)
    inputs = [Input(path, path) for path in expand_image_paths(paths)] if paths else []
    if dataset:
        inputs += _dataset_inputs(dataset, split)
    return inputs


def _dataset_inputs(dataset: str, split: str) -> list[Input]:
    """The rows of `split` as the trainer plans it (train/validation/test, default seed), images still encoded."""
    import datasets

    from .config import DataArguments
    from .data import open_source

    source = open_source(DataArguments(dataset=dataset), seed=0)
    if split not in source.splits:
        raise FileNotFoundError(f"{dataset} has no {split!r} split (it has {', '.join(source.splits)})")
    rows = source.splits[split].cast_column("image", datasets.Image(decode=False))
    names = source.class_names
    return [Input(f"{split}/{i}", image, names[label]) for i, (image, label) in
            enumerate(zip(rows["image"], rows["label"]))]


def _encoded(image: Any) -> ImageLike:
    """A datasets Image feature left encoded ({'bytes', 'path'}) as something `load_image` reads."""
    if isinstance(image, dict):
        return image.get("bytes") or image.get("path")
    return image


def classify_inputs(predictor, inputs: Sequence[Input], top_k: int, workers: int = 2) -> Iterator[Row]:
    """A Row per input, in order: chunks of `CHUNK` images decoded by `workers` threads, classified by `predictor`."""
    def classify(chunk: Sequence[Input]) -> list[Row]:
        rows, images = [], []
        for item in chunk:
            try:
                images.append(load_image(_encoded(item.image)))
                rows.append(Row(item.name, true_label=item.true_label))
            except (ImageError, OSError) as error:
                rows.append(Row(item.name, error=str(error), true_label=item.true_label))
        probs = iter(predictor.forward(predictor.preprocess(images)))
        for row in rows:
            if row.error is None:
                row.top = predictor.top_k(next(probs), top_k)
        return rows

    chunks = [inputs[i:i + CHUNK] for i in range(0, len(inputs), CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for rows in pool.map(classify, chunks):     # map keeps the order and decodes ahead
            yield from rows


def _csv_rows(rows: Iterable[Row], top_k: int, with_truth: bool) -> Iterator[list]:
    header = ["path", *(["true_label"] if with_truth else [])]
    for k in range(1, top_k + 1):
        header += [f"label_{k}", f"probability_{k}"]
    yield header + ["error"]
    for row in rows:
        cells: list = [row.name, *([row.true_label or ""] if with_truth else [])]
        for k in range(top_k):
            label, p = row.top[k] if k < len(row.top) else ("", "")
            cells += [label, p if p == "" else f"{p:.6f}"]
        yield cells + [row.error or ""]


def _json_line(row: Row) -> str:
    value: dict[str, Any] = {"file": row.name, "predictions": [{"label": label, "score": round(p, 6)}
                                                               for label, p in row.top]}
    if row.true_label is not None:
        value["true_label"] = row.true_label
    if row.error is not None:
        value["error"] = row.error
    return json.dumps(value)


def write_rows(rows: Iterable[Row], stream: TextIO, style: str, top_k: int, with_truth: bool = False) -> None:
    """Rows to `stream` as 'csv', 'jsonl' or 'text' (tab-separated: path, then 'label probability' pairs; rows
    that failed are left out of text)."""
    if style == "csv":
        csv.writer(stream).writerows(_csv_rows(rows, top_k, with_truth))
        return
    for row in rows:
        if style == "jsonl":
            stream.write(_json_line(row) + "\n")
        elif row.error is None:
            stream.write(f"{row.name}\t" + "\t".join(f"{label} {p:.3f}" for label, p in row.top) + "\n")


def _watched(rows: Iterable[Row], total: int, failed: list[Row], progress: bool) -> Iterator[Row]:
    """`rows` with a progress bar on stderr; each failed row reported there and kept in `failed`."""
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="img", desc="Classifying", disable=not progress, file=sys.stderr) as bar:
        for row in rows:
            if row.error is not None:
                failed.append(row)
                tqdm.write(f"error: {row.name}: {row.error}", file=sys.stderr)
            bar.update(1)
            yield row


def add_predict_command(subparsers) -> None:
    """Add the `predict` sub-command to an argparse sub-parsers object (see `image_classifier.__main__`)."""
    parser = subparsers.add_parser(
        "predict", help="classify images with a trained model (to the terminal, CSV or JSON lines)",
        description="Classify images with a trained model folder or Hub id: files, folders, glob patterns, .txt "
                    "files listing paths, or a dataset split (--dataset). Prints the top classes of each, or writes "
                    "them to --output (.csv: a header row, then path, label_1, probability_1, ..., error; .jsonl: one "
                    "JSON object per image). Unreadable files are reported on stderr and skipped.")
    from .inference import add_model_arguments

    add_model_arguments(parser, nargs="*")
    parser.add_argument("--dataset", default=None,
                        help="also classify a split of this dataset (any --dataset train.py accepts); rows are "
                             "named SPLIT/ROW and carry their true_label")
    parser.add_argument("--split", default="test", help="the --dataset split (train, validation or test; default test)")
    parser.add_argument("--top_k", type=int, default=3, help="classes to show per image (default 3)")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="write the rows to FILE.csv or FILE.jsonl (atomically) with a progress bar, and report "
                             "images/s; default: print them")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object per image: {"file", "predictions": [{"label", "score"}]}')
    parser.set_defaults(run=predict_command)


def predict_command(args) -> int:
    """Run `predict` for parsed arguments; return the exit status: 0, or 1 when a file could not be read and the
    rows went to the terminal (with --output, failures are rows of the file), 2 without a model."""
    from .files import atomic_path
    from .inference import open_predictor

    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
        raise FileNotFoundError(f"--output {output}: name a .csv file (a table) or a .jsonl file (JSON lines)")
    inputs = list_inputs(args.images, args.dataset, args.split)
    if not inputs:
        raise FileNotFoundError("nothing to classify: name image files, folders, glob patterns or .txt lists of "
                                "paths, or --dataset")
    predictor = open_predictor(args)
    if predictor is None:
        return 2
    failed: list[Row] = []
    started = time.perf_counter()
    with predictor:
        rows = _watched(classify_inputs(predictor, inputs, args.top_k), len(inputs), failed, output is not None)
        with_truth = any(item.true_label is not None for item in inputs)
        if output is None:
            write_rows(rows, sys.stdout, "jsonl" if args.json else "text", args.top_k, with_truth)
        else:
            with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as stream:
                write_rows(rows, stream, "csv" if output.suffix.lower() == ".csv" else "jsonl", args.top_k,
                           with_truth)
    seconds = time.perf_counter() - started
    if output is not None:
        print(f"wrote {output}: {len(inputs) - len(failed):,} images classified, {len(failed):,} unreadable, in "
              f"{seconds:.1f} s ({(len(inputs) - len(failed)) / seconds:,.0f} images/s)", file=sys.stderr)
    return 1 if failed and output is None else 0
