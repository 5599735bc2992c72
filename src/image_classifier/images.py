"""The one image decoder: bytes, a path, a file object, a PIL image or an array, of any mode -> model pixels.

Training (`data`), evaluation, the app and the command line all read images here, so the model sees
the same pixels everywhere:

1. `open_image`: refuse what is not an image, and decompression bombs, with a readable `ImageError`.
2. `read_image`: EXIF rotation; transparency composited on white; palette, 1-bit, CMYK, YCbCr... -> RGB;
   16/32-bit and float images scaled to 8 bits (`scale_to_uint8`); the result is RGB (or L for a
   1-channel model); photos longer than `MAX_SIDE` are shrunk early (JPEGs while decoding).
3. `decode_image`: that image as a uint8 tensor (C, S, S), resized as the saved image processor resizes.

The saved image processor (`data.build_image_processor`) then rescales and normalises the same way in
training, `pipeline()`, the app and the CLI.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "CorruptImageWarning", "ImageLike", "IMAGE_SUFFIXES", "MAX_SIDE", "open_image", "read_image", "load_image",
           "decode_image", "image_tensor", "scale_to_uint8", "resize_square"]

# Longest side an image is shrunk to as soon as it is read. The models look at 32-224 pixel squares; 1024
# keeps enough detail for any of them and bounds memory and resize time.
MAX_SIDE = 1024
# Files taken as images wherever a folder is searched (image folders, examples, predict's inputs).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                            ".pbm"})

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]


class ImageError(ValueError):
    """The input is not an image this project can read (or is one it refuses to decode)."""


class CorruptImageWarning(UserWarning):
    """Some images of a dataset could not be decoded and were skipped."""


def load_image(image: ImageLike, max_side: Optional[int] = MAX_SIDE, max_pixels: Optional[int] = None) -> Image.Image:
    """`image` as the RGB PIL image the model's processor takes (see `read_image`). Raises `ImageError`."""
    return read_image(image, 3, max_side, max_pixels)[0]


def decode_image(image: ImageLike, num_channels: int, image_size: int,
                 max_side: Optional[int] = MAX_SIDE) -> torch.Tensor:
    """Any image -> uint8 tensor (num_channels, image_size, image_size): `read_image`, then a square bilinear
    antialiased resize, exactly what the saved image processor does before rescaling and normalizing."""
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
    return resize_square(image_tensor(read_image(image, num_channels, max_side)[0]), image_size).contiguous()


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB or L PIL image -> uint8 tensor (C, H, W), its own copy (PIL's arrays are read-only)."""
    array = np.array(image, dtype=np.uint8, copy=True)
    return torch.from_numpy(array.reshape(image.height, image.width, -1)).permute(2, 0, 1)


def resize_square(tensor: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 (C, S, S): torchvision v2 bilinear with antialias, as the image processor."""
    from torchvision.transforms.v2 import functional as F

    if tensor.shape[-2:] == (image_size, image_size):
        return tensor
    return F.resize(tensor, [image_size, image_size], interpolation=F.InterpolationMode.BILINEAR, antialias=True)


def read_image(image: ImageLike, num_channels: int = 3, max_side: Optional[int] = MAX_SIDE,
               max_pixels: Optional[int] = None,
               min_short_side: Optional[int] = None) -> tuple[Image.Image, tuple[int, int], str]:
    """(8-bit RGB image, or L for num_channels=1; the source's (width, height); the source's mode).

    Images with more than `max_pixels` pixels (default: PIL's `Image.MAX_IMAGE_PIXELS`, about 89
    megapixels) are refused before decoding; images longer than `max_side` are shrunk (LANCZOS; JPEGs
    opened here decode at 1/2, 1/4 or 1/8 scale first, never below `max_side`); `max_side=None` keeps the size.
    `min_short_side` (training on photos): a JPEG decodes at the smallest of those scales whose shorter side
    is still at least that many pixels (a 1024x768 photo for a 160-px crop: 1/4 scale, 4x fewer pixels to
    decode and resize).
    """
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    opened_here = not isinstance(image, (Image.Image, np.ndarray))
    img = open_image(image, limit)
    size, mode = img.size, img.mode
    try:
        if opened_here and img.format == "JPEG":
            _draft(img, max_side, min_short_side)                  # same mode, a smaller scale
        img.load()
        try:
            img = ImageOps.exif_transpose(img)      # camera JPEGs: pixels as the viewer shows them
        except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored rather than refuse
            pass
        img = _to_model_mode(img, num_channels)
        if max_side and max(img.size) > max_side:
            img = img.copy() if img is image else img
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(_bomb_message(str(e))) from e
    except (OSError, ValueError, SyntaxError, TypeError, EOFError) as e:
        raise ImageError(f"could not decode the image ({_describe(image)}): {e}") from e
    if img.width < 1 or img.height < 1:
        raise ImageError(f"the image is empty ({img.width}x{img.height} pixels)")
    return img, size, mode


def open_image(source: Any, max_pixels: Optional[int] = None) -> Image.Image:
    """A PIL image (not yet decoded) from a path, bytes, a file object, a `{"bytes", "path"}` dict (datasets'
    undecoded Image value, Gradio's file data), a PIL image or an array; `ImageError` for anything else."""
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    if isinstance(source, Image.Image):
        return _check_pixels(source, limit)
    if isinstance(source, np.ndarray):
        return _check_pixels(_array_to_image(source), limit)
    if source is None:
        raise ImageError("no image here (the value is empty)")
    name = _describe(source)
    if isinstance(source, dict):
        source = source["bytes"] if source.get("bytes") is not None else source.get("path")
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("the file is empty, not an image")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no such image file: {path}")
        if path.stat().st_size == 0:
            raise ImageError(f"{path.name} is empty, not an image")
    elif not hasattr(source, "read"):
        raise ImageError(f"cannot read an image from a {type(source).__name__}; pass a path, bytes, "
                         "a file object, a PIL image or a NumPy array")
    try:
        img = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:   # the warning when raised as error
        raise ImageError(_bomb_message(str(e))) from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name} is not an image that can be read; use a PNG, JPEG, WebP, BMP, GIF or TIFF "
                         "file (or another format Pillow reads)") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"could not read {name} as an image: {e}") from e
    return _check_pixels(img, limit)


# --------------------------------------------------------------------------------------------
# Modes: one rule for every PIL mode and array type
# --------------------------------------------------------------------------------------------


def _to_model_mode(image: Image.Image, num_channels: int) -> Image.Image:
    """Any PIL mode -> RGB (num_channels=3) or L (1), 8 bits.

    Transparency is composited on white (as transformers' convert_to_rgb does); gray -> RGB repeats the
    value; RGB -> gray uses PIL's ITU-R 601 luminance (0.299, 0.587, 0.114), the weights the 1-channel
    model applies to RGB input; high-depth single-band images go through `scale_to_uint8`.
    """
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = Image.fromarray(scale_to_uint8(np.asarray(image), mode), "L")
        return gray if num_channels == 1 else gray.convert("RGB")
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
        return rgb.convert("L") if num_channels == 1 else rgb
    if mode in ("L", "1"):
        gray = image.convert("L") if mode == "1" else image
        return gray if num_channels == 1 else gray.convert("RGB")
    rgb = image if mode == "RGB" else image.convert("RGB")      # RGB, P (no transparency), CMYK, YCbCr, LAB, HSV
    return rgb.convert("L") if num_channels == 1 else rgb


def scale_to_uint8(array: np.ndarray, mode: str = "") -> np.ndarray:
    """Scale, rather than clip, an array of any numeric type to uint8.

    bool: 0/255. uint16 (or a PIL I;16* image): 0..65535 -> 0..255 (divide by 257, rounded). Other
    integers (PIL I): 16-bit scaling when any value exceeds 255, else taken as 8-bit values (clipped to
    0..65535 first). Floats (PIL F): taken as [0, 1] when the maximum is <= 1, else as 0..255 (clipped).
    """
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if mode.startswith("I;16") or a.dtype == np.uint16:
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        a = np.clip(a.astype(np.int64), 0, 65535)
        if a.max(initial=0) > 255:
            return ((a * 255 + 32767) // 65535).astype(np.uint8)
        return a.astype(np.uint8)
    a = np.nan_to_num(a.astype(np.float64))
    if a.max(initial=0.0) <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _has_transparency(image: Image.Image) -> bool:
    return "A" in image.getbands() or "a" in image.getbands() or image.info.get("transparency") is not None


def _array_to_image(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)                                        # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {tuple(array.shape)}")
    if a.size == 0:
        raise ImageError(f"the image array is empty (shape {tuple(array.shape)})")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ImageError(f"an image array must hold numbers, not {a.dtype}")
    a = scale_to_uint8(a)
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[-1] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(a), mode=mode)


# --------------------------------------------------------------------------------------------
# Limits and messages
# --------------------------------------------------------------------------------------------


def _check_pixels(img: Image.Image, limit: Optional[int]) -> Image.Image:
    if limit and img.width * img.height > limit:
        raise ImageError(_bomb_message(f"{img.width}x{img.height} = {img.width * img.height:,} pixels, "
                                       f"more than the limit of {limit:,}"))
    return img


def _bomb_message(detail: str) -> str:
    return (f"refusing to decode this image: it is too large to be a normal photo and may be a "
            f"decompression bomb ({detail}). Shrink it below {Image.MAX_IMAGE_PIXELS // 1_000_000} "
            f"megapixels and try again.")


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    if isinstance(source, dict) and source.get("path"):
        return Path(source["path"]).name
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return Path(name).name
    return "the input"


def _draft(img: Image.Image, max_side: Optional[int], min_short_side: Optional[int]) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale: never below `max_side` on the longer side nor below
    `min_short_side` on the shorter one (PIL picks the smallest scale at least the requested size)."""
    w, h = img.size
    scale = 1.0
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
    if min_short_side and min(w, h) > min_short_side:
        scale = min(scale, min_short_side / min(w, h))
    if scale < 1.0:
        img.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
