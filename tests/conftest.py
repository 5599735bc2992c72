"""Shared fixtures: small generated image folders and datasets, and the real datasets in ../shared/datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """After each test, forget Accelerate's per-process state (device, precision), as its own AccelerateTestCase
    does: a run with another --mixed_precision in the same process would otherwise be refused."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# The local copies of CIFAR-10 and MNIST (see ../shared/datasets/README.md), beside the repository.
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def tiny_flags(cache_dir, *extra) -> list[str]:
    """train.py flags for a small, quick recipe on tiny_image_folder: a narrow cnn-fast on 16x16 images, two
    epochs (6 steps), then `extra`.

    Under the default muon, rates that learn the colours in 6 steps whatever the seed (test accuracy
    0.79-1.0 over seeds 0-3, where a Muon rate of 0.05 gave 0.29-0.71)."""
    muon = [] if "--optimizer" in map(str, extra) else ["--learning_rate", "0.2", "--sgd_learning_rate", "30"]
    return ["--widths", "8", "16", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16",
            "--num_train_epochs", "2", "--learning_rate", "0.05", "--cache_dir", str(cache_dir),
            "--validation_split_fraction", "0.2", "--test_split_fraction", "0.2", *muon, *map(str, extra)]


# tiny_image_folder: class -> base RGB colour.
TINY_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder holding cifar10/ and mnist/; skips the test when it is absent."""
    if not (SHARED_DATASETS / "cifar10").is_dir() or not (SHARED_DATASETS / "mnist").is_dir():
        pytest.skip(f"real datasets not found: {SHARED_DATASETS}/cifar10 and /mnist are needed "
                    f"(local copies of uoft-cs/cifar10 and ylecun/mnist, see DESIGN.md)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """An image folder of 3 classes (blue, green, red) x 24 RGB 16x16 PNGs, learnable from the colour.

    Each image is its class colour plus per-pixel noise and a random bright square, so images
    differ but a small CNN separates the classes within an epoch or two.
    """
    root = tmp_path_factory.mktemp("tiny_image_folder")
    rng = np.random.default_rng(0)
    for name, colour in TINY_COLOURS.items():
        (root / name).mkdir()
        for i in range(24):
            pixels = np.array(colour, dtype=np.int16) + rng.integers(-30, 31, size=(16, 16, 3))
            top, left = rng.integers(0, 12, size=2)
            pixels[top:top + 4, left:left + 4] += 40
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(root / name / f"{i:02d}.png")
    return root


def make_image(mode: str, size: tuple[int, int] = (20, 20), seed: int = 0) -> Image.Image:
    """A random image in any PIL mode, with the traits that mode is about (alpha, palette, 16-bit range)."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    if mode == "RGB":
        return Image.fromarray(rgb, "RGB")
    if mode == "L":
        return Image.fromarray(rgb[:, :, 0], "L")
    if mode == "1":
        return Image.fromarray(rgb[:, :, 0] > 127).convert("1")
    if mode == "RGBA":
        alpha = rng.integers(0, 256, size=(h, w, 1), dtype=np.uint8)
        alpha[0, 0] = 0                                     # one fully transparent pixel
        return Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA")
    if mode == "LA":
        alpha = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        alpha[0, 0] = 0
        return Image.fromarray(np.stack([rgb[:, :, 0], alpha], axis=2), "LA")
    if mode == "P":
        return Image.fromarray(rgb, "RGB").quantize(colors=16)
    if mode == "P-transparent":
        image = Image.fromarray(rgb, "RGB").quantize(colors=16)
        image.info["transparency"] = image.getpixel((0, 0))   # that palette entry is transparent
        return image
    if mode == "CMYK":
        return Image.fromarray(rgb, "RGB").convert("CMYK")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, size=(h, w), dtype=np.uint16))          # mode I;16
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, size=(h, w)).astype(np.int32))         # mode I
    if mode == "F":
        return Image.fromarray(rng.random(size=(h, w)).astype(np.float32))                   # mode F
    raise ValueError(mode)


ALL_MODES = ["RGB", "L", "1", "RGBA", "LA", "P", "P-transparent", "CMYK", "I;16", "I", "F"]


@pytest.fixture(scope="session")
def mixed_image_folder(tmp_path_factory) -> Path:
    """An image folder of 2 classes with every PIL mode, two sizes, and one corrupt file (square/broken.png).

    Per class: 2 images of each mode in ALL_MODES (PNG, CMYK as JPEG, I and F as TIFF), mostly 20x20,
    the RGB ones 24x18.
    """
    root = tmp_path_factory.mktemp("mixed_image_folder")
    seed = 0
    for name in ("circle", "square"):
        (root / name).mkdir()
        for mode in ALL_MODES:
            for i in range(2):
                seed += 1
                image = make_image(mode, (24, 18) if mode == "RGB" else (20, 20), seed)
                suffix = {"CMYK": "jpg", "I": "tif", "F": "tif"}.get(mode, "png")
                kwargs = {"transparency": image.info["transparency"]} if mode == "P-transparent" else {}
                image.save(root / name / f"{mode.replace(';', '')}-{i}.{suffix}", **kwargs)
    (root / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    return root


@pytest.fixture(scope="session")
def gray_dataset_dir(tmp_path_factory) -> Path:
    """A `save_to_disk` DatasetDict (train 60, test 15) of 12x12 grayscale digits-like images, int labels 0..2.

    Labels are a plain int64 column (no ClassLabel), so class names become "0", "1", "2".
    """
    import datasets

    rng = np.random.default_rng(1)

    def split(n: int) -> datasets.Dataset:
        labels = np.arange(n) % 3
        images = [Image.fromarray(np.clip(rng.normal(60 + 70 * y, 20, (12, 12)), 0, 255).astype(np.uint8), "L")
                  for y in labels]
        return datasets.Dataset.from_dict(
            {"image": images, "label": labels.tolist()},
            features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))

    root = tmp_path_factory.mktemp("gray_dataset") / "gray"
    datasets.DatasetDict({"train": split(60), "test": split(15)}).save_to_disk(str(root))
    return root


@pytest.fixture(scope="session")
def numbered_dataset_dir(tmp_path_factory) -> Path:
    """A `save_to_disk` Dataset (one split) of 200 RGB 8x8 images whose pixel (0, 0) encodes the row id.

    Columns `picture` (Image), `kind` (string: bird 100, cat 60, dog 40) and `id` (int64): no
    ClassLabel and no label-like name, so the label column must be named. Decoded images tell
    which source row they are: id = R + 256 * G of pixel (0, 0).
    """
    import datasets

    rng = np.random.default_rng(2)
    kinds = ["bird"] * 100 + ["cat"] * 60 + ["dog"] * 40
    order = rng.permutation(len(kinds))
    images = []
    for row in range(len(kinds)):
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        pixels[0, 0] = (row % 256, row // 256, 0)
        images.append(Image.fromarray(pixels, "RGB"))
    table = datasets.Dataset.from_dict(
        {"picture": images, "kind": [kinds[i] for i in order], "id": list(range(len(kinds)))},
        features=datasets.Features({"picture": datasets.Image(), "kind": datasets.Value("string"),
                                    "id": datasets.Value("int64")}))
    root = tmp_path_factory.mktemp("numbered_dataset") / "numbered"
    table.save_to_disk(str(root))
    return root


# photo_folder: class -> base RGB colour; sizes (width, height) the photos take in turn (landscape and portrait).
PHOTO_COLOURS = {"sky": (70, 120, 210), "grass": (60, 170, 70), "sand": (220, 190, 120)}
PHOTO_SIZES = [(120, 90), (96, 72), (72, 96), (150, 100)]


def write_photo(path: Path, colour, size, rng, exif_rotated: bool = False) -> None:
    """A JPEG "photo" of `size`: the colour with noise and a darker band, so crops of it keep the class."""
    w, h = size
    pixels = np.array(colour, dtype=np.int16) + rng.integers(-25, 26, size=(h, w, 3))
    band = rng.integers(0, h - h // 4)
    pixels[band:band + h // 4] -= 40
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    exif = Image.Exif()
    if exif_rotated:                   # stored sideways, shown upright: EXIF orientation 6 (rotate 90 CW)
        exif[0x0112] = 6
    image.save(path, quality=90, exif=exif)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """An image folder of 3 classes x 20 JPEG photos of four sizes (72-150 px, 4:3 and 3:2, some portrait, one
    EXIF-rotated per class): the streaming path's data, learnable from the colour."""
    root = tmp_path_factory.mktemp("photo_folder")
    rng = np.random.default_rng(0)
    for name, colour in PHOTO_COLOURS.items():
        (root / name).mkdir()
        for i in range(20):
            write_photo(root / name / f"{i:02d}.jpg", colour, PHOTO_SIZES[i % len(PHOTO_SIZES)], rng,
                        exif_rotated=i == 0)
    return root


@pytest.fixture(scope="session")
def tiny_parquet_folder(tiny_image_folder, tmp_path_factory) -> Path:
    """tiny_image_folder's 72 images in the Hub's parquet layout, rows shuffled: data/train-0000{0,1}-of-00002.parquet
    (26 and 34 rows: two files of different lengths, as a stream's parts can be) and data/test-00000-of-00001.parquet
    (12 rows); columns image (Image) and label (ClassLabel blue/green/red)."""
    import datasets

    root = tmp_path_factory.mktemp("tiny_parquet") / "data"
    names = sorted(TINY_COLOURS)
    files = sorted((p for p in tiny_image_folder.rglob("*.png")), key=str)
    order = np.random.default_rng(1).permutation(len(files))
    rows = [{"image": {"bytes": files[i].read_bytes(), "path": files[i].name}, "label": names.index(files[i].parent.name)}
            for i in order]                 # the bytes inside the files, as the Hub's parquet holds them
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    for name, part in (("train-00000-of-00002", rows[:26]), ("train-00001-of-00002", rows[26:60]),
                       ("test-00000-of-00001", rows[60:])):
        datasets.Dataset.from_list(part, features=features).to_parquet(str(root / f"{name}.parquet"))
    return root.parent
