"""Decoding: any image people send -> a safe float32 grayscale array in [0, 1].

Images are decoded by content (never by file name) with Pillow, from an explicit list of
formats; decompression bombs are refused from the header before any pixel is decoded; the
first frame of an animation is used; the EXIF orientation is applied; transparency is
composited; 8- and 16-bit data are scaled. NumPy arrays and Pillow images are accepted as
they are. Where the digit is, and what it looks like to the model, is ``locate.py``'s job.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from typing import NamedTuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Register exactly the decoders we accept (Pillow loads the rarer ones lazily otherwise).
from PIL import (  # noqa: F401  isort: skip
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

# Images with more pixels than this are refused from their header, before any decoding: a
# 50 kB PNG can claim 100,000 x 100,000 pixels and would need 10 GB once decoded. 40 MP is
# more than any phone camera produces.
MAX_PIXELS = 40_000_000

# Formats decoded by content. Pillow can open more (EPS, for one, runs Ghostscript), so the
# list is explicit. The JPEG decoder also opens MPO, what many phone cameras write.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]  # noqa: UP007 (runtime alias)


class ImageError(ValueError):
    """An image that cannot be turned into a model input. ``code`` is machine-readable."""

    code = "image_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedImageError(ImageError):
    """Not an image, corrupt, truncated, or in a format we do not decode."""

    code = "unsupported_image"


class ImageTooLargeError(ImageError):
    """The image has more pixels than the cap (checked from the header, before decoding)."""

    code = "image_too_large"


class NoDigitError(ImageError):
    """The image is empty or nearly empty: there is no digit to classify."""

    code = "no_digit"


# --------------------------------------------------------------------------- decoding


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UnsupportedImageError(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; scale it down first"
        )


def _array_to_gray(array: np.ndarray, max_pixels: int) -> np.ndarray:
    """A NumPy image (H, W), (H, W, 1), (H, W, 2: gray+alpha), (H, W, 3) or (H, W, 4)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise UnsupportedImageError(
            f"expected an array of shape (H, W) or (H, W, C) with C in 1..4, got {a.shape}"
        )
    _check_pixels(a.shape[1], a.shape[0], max_pixels)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif a.dtype.kind in "iu":
        top = int(a.max()) if a.size else 0
        if int(a.min()) < 0 or top > 65535:
            raise UnsupportedImageError("integer pixel values must lie in 0..255 or 0..65535")
        # uint16 arrays are 16-bit; other integer arrays are 8-bit unless a value says not.
        scale = 65535.0 if a.dtype == np.uint16 or top > 255 else 255.0
        a = a.astype(np.float32) / scale
    elif a.dtype.kind == "f":
        a = a.astype(np.float32)
        if not np.isfinite(a).all() or a.min() < 0:
            raise UnsupportedImageError("float pixel values must be finite and non-negative")
        # Floats are taken as [0, 1]; arrays on a 0..255 scale are common enough to accept.
        if a.max() > 1.0:
            if a.max() > 255.0:
                raise UnsupportedImageError("float pixel values must lie in [0, 1] or [0, 255]")
            a = a / 255.0
    else:
        raise UnsupportedImageError(f"unsupported array dtype {a.dtype}")
    if a.ndim == 2:
        return np.ascontiguousarray(a)
    channels = a.shape[2]
    color = a[:, :, : (1 if channels == 2 else 3)]
    # ITU-R 601 luma, as Pillow's convert("L") uses.
    gray = color[:, :, 0] if channels == 2 else color @ np.float32([0.299, 0.587, 0.114])
    if channels in (2, 4):
        gray = _composite(gray, a[:, :, -1])
    return np.ascontiguousarray(gray, dtype=np.float32)


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite a grayscale image with alpha onto a plain background.

    The background is white, as a transparent canvas shows on a web page, unless what is
    opaque has no dark pixels at all (white strokes on a transparent canvas), which would
    vanish on white: then it is black.
    """
    opaque = gray[alpha > 0.5]
    background = 1.0
    if opaque.size and (alpha < 0.5).any() and np.percentile(opaque, 2) > 0.6:
        background = 0.0
    return gray * alpha + background * (1.0 - alpha)


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image of any mode -> float32 (H, W) in [0, 1]."""
    mode = img.mode
    if mode.startswith("I;16"):
        # 16-bit grayscale: scale the full 0..65535 range (clipping to 8 bits would turn a
        # typical scan, whose values all lie above 255, into a white page).
        return np.asarray(img, dtype=np.float32) / 65535.0
    if mode == "I":
        a = np.asarray(img, dtype=np.float32)
        top = float(a.max()) if a.size else 0.0
        return np.clip(a / (65535.0 if top > 255 else 255.0), 0.0, 1.0)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float32))
        top = float(a.max()) if a.size else 0.0
        return np.clip(a / top if top > 1.0 else a, 0.0, 1.0)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float32) / 255.0
        return np.ascontiguousarray(_composite(la[:, :, 0], la[:, :, 1]))
    if mode != "L":
        # Palette, bilevel, RGB, CMYK, YCbCr, LAB...: Pillow knows each mode's conversion.
        img = img.convert("RGB").convert("L") if mode not in ("1", "P", "RGB") else img.convert("L")
    gray = np.asarray(img, dtype=np.float32)
    gray *= 1.0 / 255.0  # in place: one full-size array fewer per image
    return gray


class Decoded(NamedTuple):
    """A decoded image: float32 (H, W) gray in [0, 1], and its scale against the file's own
    pixels (below 1 when a JPEG was decoded at a reduced size)."""

    gray: np.ndarray
    scale: float


def _decode(img: Image.Image, max_pixels: int, max_side: int | None, owned: bool = True) -> Decoded:
    _check_pixels(img.width, img.height, max_pixels)
    full_width = img.width
    if max_side and img.format in ("JPEG", "MPO") and max(img.size) > max_side:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for a fraction of the cost; Pillow picks
        # the smallest scale that keeps the requested size.
        f = max_side / max(img.size)
        img.draft("L", (max(1, math.ceil(img.width * f)), max(1, math.ceil(img.height * f))))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.seek(0)  # the first frame of an animation
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image is too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise UnsupportedImageError(
            f"the image data is corrupt or truncated ({str(exc) or type(exc).__name__})"
        ) from exc
    scale = img.width / full_width  # before the EXIF turn, which may swap the sides
    try:
        # Turn our own decoded image in place; never a caller's.
        if owned:
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
        return Decoded(_pil_to_gray(img), scale)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnsupportedImageError(f"could not read the image ({exc})") from exc


def _open(fp: io.BufferedIOBase | io.BytesIO, what: str, max_pixels: int) -> Image.Image:
    try:
        return Image.open(fp, formats=FORMATS)
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError(
            f"{what} is not an image in a supported format ({', '.join(FORMATS)})"
        ) from exc
    except Image.DecompressionBombError as exc:
        # Pillow's own check, for headers that claim far more than any cap.
        raise ImageTooLargeError(
            f"the image is over the limit of {max_pixels:,} pixels ({exc})"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise UnsupportedImageError(f"{what} is corrupt ({exc})") from exc


def load_image(
    source: ImageSource, max_pixels: int = MAX_PIXELS, max_side: int | None = None
) -> np.ndarray:
    """Decode any image into float32 (H, W) grayscale in [0, 1], as the eye would see it.

    ``source`` is a file path, the file's bytes, a Pillow image or a NumPy array (uint8,
    uint16, bool or float in [0, 1]; (H, W) or (H, W, C) with gray+alpha, RGB or RGBA).
    Files are decoded by content; only the first frame of an animation is used; the EXIF
    orientation is applied; transparency is composited onto white; 16-bit data is scaled.
    With ``max_side``, JPEGs may be decoded at a reduced scale that keeps at least
    ``max_side`` pixels on the longest side (the result is then smaller than the file;
    ``decode`` says by how much).

    Raises ``ImageTooLargeError`` (over ``max_pixels``, checked before decoding),
    ``UnsupportedImageError`` (not an image, corrupt, truncated) and ``OSError`` when a
    path cannot be read.
    """
    return decode(source, max_pixels, max_side).gray


def decode(
    source: ImageSource, max_pixels: int = MAX_PIXELS, max_side: int | None = None
) -> Decoded:
    """``load_image``, with the scale of the result against the file's own pixels."""
    if isinstance(source, np.ndarray):
        return Decoded(_array_to_gray(source, max_pixels), 1.0)
    if isinstance(source, Image.Image):
        return _decode(source.copy() if source.readonly else source, max_pixels, None, False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise UnsupportedImageError("the file is empty")
        with _open(io.BytesIO(data), "the data", max_pixels) as img:
            return _decode(img, max_pixels, max_side)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise UnsupportedImageError("the file is empty")
            with _open(f, "the file", max_pixels) as img:
                return _decode(img, max_pixels, max_side)
    raise TypeError(
        f"an image must be a path, bytes, a PIL image or a NumPy array, not {type(source).__name__}"
    )
