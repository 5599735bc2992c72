"""Build an image folder of N JPEG "photos" of mixed sizes from the CIFAR-10 copy, so the photo-path figures
(bench/data_throughput.py, the README's "Your own photos") can be reproduced anywhere.

    python bench/make_photo_folder.py /tmp/photos2k --num_images 2000
    python bench/make_photo_folder.py /tmp/photos20k --num_images 20000 --workers 2
    python bench/make_photo_folder.py /tmp/photos2k-parquet --num_images 2000 --parquet   # the Hub's layout

Each photo is one CIFAR-10 train image (the first N rows, in the copy's fixed shuffled order) upscaled
(bicubic) to a size drawn from SIZES (landscape 4:3 from 500x375 to 1024x768, a quarter of them portrait),
with seeded sensor-like noise so the JPEGs are not unrealistically small, saved at quality 85 as
OUT/<class>/<row>.jpg. About 30 kB a photo. Deterministic: the same N gives the same files.

With --parquet the same photos go into the Hub's parquet layout instead (what `--streaming` reads from the Hub):
OUT/data/train-KKKKK-of-NNNNN.parquet, --rows_per_file rows each in CIFAR's row order (classes mixed), columns
image (the JPEG bytes) and label (ClassLabel); no test split, so a run carves validation and test from train.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"
SIZES = [(500, 375), (640, 480), (800, 600), (1024, 768)]     # (width, height), landscape
NOISE = 2.0                                                   # std of the added noise, in 0..255 levels


def _encode(job: tuple[int, bytes]) -> bytes:
    """Upscale one CIFAR image (PNG/JPEG bytes) to a photo; its JPEG bytes."""
    row, data = job
    rng = np.random.default_rng(row)
    width, height = SIZES[rng.integers(len(SIZES))]
    if rng.random() < 0.25:
        width, height = height, width                         # portrait
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, NOISE, size=(height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=85)
    return out.getvalue()


def _write(job: tuple[int, bytes, str, str]) -> int:
    """One photo saved as OUT/<class>/<row>.jpg; returns the bytes written."""
    row, data, folder, name = job
    (Path(folder) / name / f"{row:06d}.jpg").write_bytes(photo := _encode((row, data)))
    return len(photo)


def _write_parquet(train, out: Path, rows_per_file: int, workers: int) -> int:
    """The photos as parquet files of `rows_per_file` rows (the Hub's layout); returns the bytes of JPEG data."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": train.features["label"]})
    files = (len(train) + rows_per_file - 1) // rows_per_file
    (out / "data").mkdir(parents=True, exist_ok=True)
    written = 0
    with multiprocessing.Pool(workers) as pool:
        for k in range(files):
            part = train.select(range(k * rows_per_file, min(len(train), (k + 1) * rows_per_file)))
            jobs = [(k * rows_per_file + i, row["img"]["bytes"]) for i, row in enumerate(part)]
            photos = pool.map(_encode, jobs, chunksize=64)
            written += sum(len(photo) for photo in photos)
            rows = [{"image": {"bytes": photo, "path": f"{row:06d}.jpg"}, "label": label}
                    for (row, _), photo, label in zip(jobs, photos, part["label"])]
            datasets.Dataset.from_list(rows, features=features).to_parquet(
                str(out / "data" / f"train-{k:05d}-of-{files:05d}.parquet"))
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="the image folder to create (one subfolder per class)")
    p.add_argument("--num_images", type=int, default=2000, help="photos to write (the first N CIFAR-10 train rows)")
    p.add_argument("--dataset", default=str(DEFAULT_DATASET), help="the CIFAR-10 copy (default: ../shared/datasets)")
    p.add_argument("--workers", type=int, default=2, help="processes encoding JPEGs")
    p.add_argument("--parquet", action="store_true", help="write the Hub's parquet layout instead of a folder")
    p.add_argument("--rows_per_file", type=int, default=1000, help="with --parquet: photos per parquet file")
    args = p.parse_args()
    import datasets

    if not Path(args.dataset).is_dir():
        sys.exit(f"no CIFAR-10 copy at {args.dataset}: pass --dataset (a local copy of uoft-cs/cifar10)")
    train = datasets.load_dataset(args.dataset, split="train")
    if args.num_images > len(train):
        sys.exit(f"--num_images {args.num_images} is more than the {len(train)} CIFAR-10 train images")
    train = train.select(range(args.num_images)).cast_column("img", datasets.Image(decode=False))
    names = train.features["label"].names
    out = Path(args.output)
    started = time.perf_counter()
    if args.parquet:
        written = _write_parquet(train, out, args.rows_per_file, args.workers)
        print(f"wrote {args.num_images} photos ({written / 1e6:.1f} MB of JPEG) as parquet to {out / 'data'} in "
              f"{time.perf_counter() - started:.1f}s")
        return
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    jobs = ((i, row["img"]["bytes"], str(out), names[row["label"]]) for i, row in enumerate(train))
    with multiprocessing.Pool(args.workers) as pool:
        written = sum(pool.imap_unordered(_write, jobs, chunksize=64))
    print(f"wrote {args.num_images} photos ({written / 1e6:.1f} MB) to {out} in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
