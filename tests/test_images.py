"""images.py, the one decoder: training (the data stage, from a dataset's stored bytes) and the app (an
uploaded file through `load_image`, then the saved image processor) see identical pixels for every PIL mode
the project accepts and for a photo larger than MAX_SIDE; and `load_image` on every kind of input."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image
from image_classifier.augment import Normalize
from image_classifier.config import DataArguments
from image_classifier.data import build_image_data, build_image_processor
from image_classifier.images import (MAX_SIDE, ImageError, decode_image, image_tensor, load_image, read_image,
                                     resize_square)

MODES = ["1", "L", "P", "PA", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"]


def mode_image(mode: str, size=(20, 20), seed: int = 0) -> Image.Image:
    """make_image's modes, plus PA (palette with alpha) and YCbCr; F with values 0..1000 (the old disagreement)."""
    if mode == "PA":
        image = make_image("P", size, seed).convert("PA")
        alpha = np.random.default_rng(seed).integers(0, 256, size[::-1], dtype=np.uint8)
        image.putalpha(Image.fromarray(alpha, "L"))
        return image
    if mode == "YCbCr":
        return make_image("RGB", size, seed).convert("YCbCr")
    if mode == "F":
        return Image.fromarray(np.random.default_rng(seed).uniform(0, 1000, size[::-1]).astype(np.float32))
    image = make_image(mode, size, seed)
    assert image.mode == mode
    return image


def save(image: Image.Image, path) -> None:
    """In a format that keeps the mode: TIFF for I, F and YCbCr (JPEG), CMYK as JPEG, the rest PNG."""
    fmt = {"I": "TIFF", "F": "TIFF", "CMYK": "JPEG", "YCbCr": "JPEG"}.get(image.mode, "PNG")
    image.save(path, format=fmt)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file per mode that a file format holds (20x20; all but PA) and a 2048x1536 JPEG photo, the photo last."""
    root = tmp_path_factory.mktemp("modes")
    paths = []
    for i, mode in enumerate(MODES):
        if mode == "PA":          # no format Pillow writes holds it: checked in memory below
            continue
        path = root / f"{i:02d}-{mode.replace(';', '')}.img"
        save(mode_image(mode, seed=i), path)
        paths.append(path)
    y, x = np.mgrid[0:1536, 0:2048]
    smooth = np.stack([x / 8, y / 6, (x + y) / 14], -1) % 256
    noise = np.random.default_rng(0).integers(0, 40, (1536, 2048, 3))
    Image.fromarray((smooth + noise).clip(0, 255).astype(np.uint8)).save(root / "photo.jpg", quality=90)
    return paths + [root / "photo.jpg"]


@pytest.mark.parametrize("image_size", [16, 48])
def test_training_and_the_app_decode_every_mode_and_a_large_photo_to_identical_pixels(files, tmp_path, image_size):
    import datasets

    table = datasets.Dataset.from_dict(
        {"image": [str(p) for p in files], "label": [i % 2 for i in range(len(files))]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}))
    raw = datasets.DatasetDict({"train": table, "validation": table, "test": table})
    args = DataArguments(dataset="modes", image_size=image_size, num_channels=3, cache_dir=str(tmp_path))
    data = build_image_data(raw, args, seed=0)
    trained = data.tensors["test"].images                     # what training and evaluation see, uint8
    assert len(trained) == len(files)
    processor = build_image_processor(image_size, data.mean, data.std)
    normalize = Normalize(data.mean, data.std)
    for path, pixels in zip(files, trained):
        app = load_image(path)                                # what the app and predict hand the processor
        assert torch.equal(resize_square(image_tensor(app), image_size), pixels), path.name
        served = processor(images=[app], return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(served, normalize(pixels.unsqueeze(0))[0], rtol=0, atol=2e-5, msg=path.name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_an_image_in_memory_decodes_the_same_for_training_and_the_app(mode, channels):
    image = mode_image(mode, size=(24, 18), seed=3)
    app = image_tensor(load_image(image))
    if channels == 1:        # the 1-channel model weighs RGB by ITU-R 601, as PIL's L conversion does
        app = image_tensor(load_image(image).convert("L"))
    assert torch.equal(decode_image(image, channels, 12), resize_square(app, 12))


def test_a_large_photo_is_shrunk_to_max_side_before_the_resize_in_both(files):
    photo = files[-1]
    image, size, mode = read_image(photo)
    assert size == (2048, 1536) and mode == "RGB" and max(image.size) == MAX_SIDE
    assert torch.equal(decode_image(photo, 3, 64), resize_square(image_tensor(load_image(photo)), 64))


def test_float_images_above_one_are_8_bit_values_clipped_everywhere():
    # mode F, 0..1000: taken as 0..255 and clipped, by training and the app alike (the app used to divide by 257)
    image = Image.fromarray(np.array([[0.0, 100.0, 255.0, 1000.0]], np.float32))
    assert np.asarray(load_image(image))[0, :, 0].tolist() == [0, 100, 255, 255]
    assert decode_image(image, 1, 4)[0, 0].tolist() == [0, 100, 255, 255]
    assert np.asarray(load_image(np.array([[0.0, 100.0, 1000.0]])))[0, :, 0].tolist() == [0, 100, 255]


# --------------------------------------------------------------------------------------------
# load_image: what the app, predict and training all read images with
# --------------------------------------------------------------------------------------------

def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _gradient(mode_size=(24, 16)) -> Image.Image:
    w, h = mode_size
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 10, y * 15, (x + y) * 5], -1).astype(np.uint8), "RGB")


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV",
                                  "I", "F", "I;16", "I;16B"])
def test_load_image_every_mode_becomes_rgb_of_the_same_size(mode):
    src = _gradient()
    if mode in ("I;16", "I;16B"):
        img = Image.fromarray((np.asarray(src.convert("L"), np.uint16) * 257))
        img = img if mode == "I;16" else Image.frombytes("I;16B", img.size, np.asarray(img).astype(">u2").tobytes())
    elif mode == "PA":
        img = src.convert("P").convert("PA")
    else:
        img = src.convert(mode)
    assert img.mode == mode
    out = load_image(img)
    assert out.mode == "RGB" and out.size == src.size


def test_load_image_gray_and_palette_values():
    src = _gradient()
    gray = np.asarray(src.convert("L"))
    out = np.asarray(load_image(src.convert("L")))
    assert (out == gray[..., None]).all()
    pal = src.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    assert np.array_equal(np.asarray(load_image(pal)), np.asarray(pal.convert("RGB")))
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))      # pure red in CMYK
    assert np.asarray(load_image(cmyk))[0, 0].tolist() == [255, 0, 0]


def test_load_image_composites_transparency_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 255                       # red everywhere
    rgba[0, 0, 3] = 255                      # opaque red
    rgba[0, 1, 3] = 0                        # fully transparent -> white
    rgba[0, 2, 3] = 128                      # half transparent -> pink
    rgba[1, :, 3] = 0
    out = np.asarray(load_image(Image.fromarray(rgba, "RGBA"))).astype(int)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 2, 0] == 255 and abs(out[0, 2, 1] - 127) <= 1 and abs(out[0, 2, 2] - 127) <= 1
    # the same through a PNG file, and LA, and a palette image with a transparent index
    png = _encode(Image.fromarray(rgba, "RGBA"), "PNG")
    assert np.asarray(load_image(png))[1, 0].tolist() == [255, 255, 255]
    la = Image.fromarray(np.stack([np.zeros((2, 2), np.uint8), np.array([[255, 0], [0, 0]], np.uint8)], -1), "LA")
    assert np.asarray(load_image(la)).tolist() == [[[0, 0, 0], [255, 255, 255]], [[255, 255, 255]] * 2]
    p = Image.new("P", (2, 1), 0)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p2 = Image.open(io.BytesIO(_encode(p, "PNG")))
    assert p2.mode == "P" and "transparency" in p2.info
    assert np.asarray(load_image(p2)).tolist() == [[[255, 255, 255], [10, 20, 30]]]


def test_load_image_scales_16_bit_instead_of_clipping(tmp_path):
    values = np.array([[0, 256, 32768, 65535]], np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    expected = [0, 1, 128, 255]                   # clipping would give 0, 255, 255, 255
    assert np.asarray(load_image(img))[0, :, 0].tolist() == expected
    # a 16-bit PNG on disk (Pillow opens it as I;16 or I depending on the version)
    img.save(tmp_path / "deep.png")
    assert np.asarray(load_image(tmp_path / "deep.png"))[0, :, 0].tolist() == expected
    # 16-bit values held in a 32-bit "I" image, and a uint16 array
    assert np.asarray(load_image(img.convert("I")))[0, :, 0].tolist() == expected
    assert np.asarray(load_image(values))[0, :, 0].tolist() == expected


def test_load_image_arrays():
    hwc = np.zeros((5, 7, 3), np.uint8)
    hwc[..., 1] = 200
    assert load_image(hwc).size == (7, 5) and load_image(hwc).getpixel((0, 0)) == (0, 200, 0)
    assert load_image(np.moveaxis(hwc, -1, 0)).size == (7, 5)                  # CHW
    assert load_image(np.full((5, 7), 0.5, np.float32)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.zeros((5, 7, 1), np.uint8)).mode == "RGB"
    assert load_image(np.ones((3, 3), bool)).getpixel((1, 1)) == (255, 255, 255)
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)                 # transparent -> white
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((0, 4, 3), np.uint8))


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, 10, 20))          # a blue band on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6                                  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)
    assert Image.open(path).size == (40, 20)
    out = load_image(path)
    assert out.size == (20, 40)                       # transposed
    top = np.asarray(out)[:3].mean(axis=(0, 1))
    assert top[2] > top[0]                            # the left band is now on top
    assert load_image(path.read_bytes()).size == (20, 40)
    with open(path, "rb") as f:
        assert load_image(f).size == (20, 40)


def test_load_image_one_pixel():
    out = load_image(Image.new("RGB", (1, 1), (1, 2, 3)))
    assert out.size == (1, 1) and out.getpixel((0, 0)) == (1, 2, 3)
    assert load_image(_encode(Image.new("L", (1, 1), 7), "PNG")).getpixel((0, 0)) == (7, 7, 7)


def test_load_image_downscales_large_photos_early(tmp_path, monkeypatch):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), np.uint8), "RGB")
    path = tmp_path / "big.jpg"
    big.save(path, "JPEG", quality=80)
    decoded_sizes = []
    original_load = Image.Image.load

    def spy_load(self):
        decoded_sizes.append(self.size)
        return original_load(self)

    monkeypatch.setattr(Image.Image, "load", spy_load)
    out = load_image(path)
    monkeypatch.undo()
    assert max(out.size) == MAX_SIDE and out.size == (1024, 768)
    assert decoded_sizes[0] == (2000, 1500)          # libjpeg decoded at 1/2 scale (draft), not 4000x3000
    for mode in ("L", "CMYK"):                       # draft keeps the JPEG's own mode
        big.convert(mode).save(tmp_path / f"big-{mode}.jpg", "JPEG")
        assert load_image(tmp_path / f"big-{mode}.jpg").size == (1024, 768)
    wide = Image.new("L", (5000, 100), 9)
    assert load_image(wide).size == (1024, 20)
    assert load_image(wide, max_side=None).size == (5000, 100)
    assert load_image(Image.new("RGB", (300, 200)), max_side=100).size == (100, 67)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims to be width x height: decoding it would allocate the whole image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_load_image_refuses_decompression_bombs(tmp_path):
    # above 2x PIL's limit: PIL itself raises DecompressionBombError when opening
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_header_only(30_000, 30_000))
    # between 1x and 2x the limit: PIL only warns; we refuse as well, before decoding
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(10_000, 10_000))
    with pytest.raises(ImageError, match="decompression bomb") as err:
        load_image(path)
    assert "100,000,000 pixels" in str(err.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # also when warnings are errors
        with pytest.raises(ImageError, match="decompression bomb"):
            load_image(path)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(Image.new("L", (100, 100)), max_pixels=5_000)
    assert issubclass(ImageError, ValueError)


def test_load_image_rejects_what_is_not_an_image(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageError, match="notes.png is not an image"):
        load_image(text)
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"GIF89a but not really")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    png = _encode(_gradient((64, 64)), "PNG")
    with pytest.raises(ImageError):
        load_image(png[: len(png) // 2])            # truncated
    with pytest.raises(ImageError, match="cannot read an image from a int"):
        load_image(42)
