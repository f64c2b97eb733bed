"""Decoding: any image people send -> a safe float32 grayscale array in [0, 1].

Images are decoded by content (never by file name) with Pillow, from an explicit list of
formats; decompression bombs are refused from the header before any pixel is decoded; the
first frame of an animation is used; the EXIF orientation is applied; transparency is
composited; 8- and 16-bit data are scaled. NumPy arrays and Pillow images are accepted as
they are. Where the digit is, and what it looks like to the model, is ``locate.py``'s job.

Memory is bounded per image, because a small file can hold a large image (a 77 kB PNG of
6300x6300 pixels): the pixel cap and a memory budget are checked from the header, before
any pixel is decoded, and when only a small copy is wanted (``max_side``: the model's
preprocessing works at 320 pixels) the image is never converted at full size. A JPEG is
decoded at 1/2, 1/4 or 1/8 scale by the JPEG decoder itself; other formats are decoded in
their own mode (1 to 4 bytes a pixel) and shrunk tile by tile, so that the float copies
and colour conversions only ever exist for a tile. Measured on 6300x6300 PNGs, as a
request's whole decode-and-locate (peak RSS growth, one idle core): RGBA 913 MB and 2.3-3.1 s
before, 189 MB and 0.8-0.9 s now; grayscale 227 MB before, 48 MB and 0.2 s now.
``estimate_decode_bytes`` says what a file will cost without decoding it.

Paths are checked before they are opened: a FIFO, a device or a directory is refused, as
opening a FIFO blocks until a writer comes and a device can be read forever.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from typing import NamedTuple, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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

# What decoding one image may hold in memory at once, in bytes, checked from the header.
# Every 40 MP PNG, GIF, BMP or JPEG fits (Pillow keeps at most 4 bytes a pixel: 160 MB);
# a WebP fits up to 16 MP and a TIFF up to 32 MP (RGB) or 40 MP (grayscale): their decoders
# hold copies of their own (DECODER_COPIES). Two workers decoding at once stay well inside
# a 1.5 GB server.
MAX_DECODE_BYTES = 256 * 1024 * 1024

# How many full frames a format's decoder holds at its peak, Pillow's own included
# (measured with ru_maxrss on 6300x6300 files: libwebp keeps its canvas and hands Pillow a
# copy, 16 bytes a pixel for RGB; libtiff reads a strip, which may be the whole image, into
# a buffer before unpacking it). Other decoders work a row or a block at a time.
DECODER_COPIES = {"WEBP": 4, "TIFF": 2}

# Above this many pixels, a reduced decode (``max_side``) of a format that cannot shrink
# while decoding is converted tile by tile at the reduced size, never at full size. Below
# it the full-size conversion costs at most ~100 MB and gives what it always gave.
TILED_ABOVE_PIXELS = 4_000_000

# Pixels per tile of that conversion: its copies (the tile, its LA conversion, float gray
# and alpha) then take about 30 MB. Smaller tiles take less, but each tile is a dozen
# Python steps that each re-take the GIL, and in a server that also answers other requests
# meanwhile, each re-take can wait a few milliseconds: 512k-pixel tiles made a 40 MP PNG
# take twice as long as these there.
TILE_PIXELS = 1 << 20

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
    """The image has more pixels than the cap, or would take more memory to decode than the
    budget (both checked from the header, before decoding)."""

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
        # Checked in the array's own precision: a float128 value beyond float32's range is
        # finite, only out of range (a cast first would overflow to inf, and say "finite").
        if a.size and (not np.isfinite(a).all() or a.min() < 0):
            raise UnsupportedImageError("float pixel values must be finite and non-negative")
        top = float(a.max()) if a.size else 0.0
        if top > 255.0:
            raise UnsupportedImageError("float pixel values must lie in [0, 1] or [0, 255]")
        a = a.astype(np.float32)
        # Floats are taken as [0, 1]; arrays on a 0..255 scale are common enough to accept.
        if top > 1.0:
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


def _composite(gray: np.ndarray, alpha: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """Composite a grayscale image with alpha onto a plain background.

    The background is white, as a transparent canvas shows on a web page, unless what is
    opaque has no dark pixels at all (white strokes on a transparent canvas), which would
    vanish on white: then it is black. ``premultiplied``: ``gray`` is already gray x alpha
    (what averaging pixels for a smaller copy must work with).
    """
    opaque_mask = alpha > 0.5
    opaque = gray[opaque_mask]
    if premultiplied:
        opaque = opaque / alpha[opaque_mask]
    background = 1.0
    if opaque.size and (alpha < 0.5).any() and np.percentile(opaque, 2) > 0.6:
        background = 0.0
    if premultiplied:
        return gray + background * (1.0 - alpha)
    return gray * alpha + background * (1.0 - alpha)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _top(img: Image.Image) -> float:
    """The largest value of a 32-bit ("I" or "F") image, NaN and infinities tamed as
    ``_pil_planes`` tames them."""
    a = np.asarray(img, dtype=np.float32)
    if img.mode == "F":
        a = np.nan_to_num(a)
    return float(a.max()) if a.size else 0.0


def _pil_planes(img: Image.Image, top: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A decoded Pillow image of any mode -> (float32 (H, W) gray in [0, 1], its alpha in
    [0, 1] or None). ``top``: the largest value of the whole image, for a tile of a 32-bit
    image (whose scale depends on it)."""
    if img.mode in ("La", "RGBa"):
        # Premultiplied alpha: Pillow converts it only to its straight-alpha twin.
        img = img.convert(img.mode.upper())
    mode = img.mode
    if mode.startswith("I;16"):
        # 16-bit grayscale: scale the full 0..65535 range (clipping to 8 bits would turn a
        # typical scan, whose values all lie above 255, into a white page).
        return np.asarray(img, dtype=np.float32) / 65535.0, None
    if mode == "I":
        a = np.asarray(img, dtype=np.float32)
        top = _top(img) if top is None else top
        return np.clip(a / (65535.0 if top > 255 else 255.0), 0.0, 1.0), None
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float32))
        top = _top(img) if top is None else top
        return np.clip(a / top if top > 1.0 else a, 0.0, 1.0), None
    if _has_alpha(img):
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float32) / 255.0
        return la[:, :, 0], la[:, :, 1]
    if mode != "L":
        # Palette, bilevel, RGB, CMYK, YCbCr, LAB...: Pillow knows each mode's conversion.
        img = img.convert("RGB").convert("L") if mode not in ("1", "P", "RGB") else img.convert("L")
    gray = np.asarray(img, dtype=np.float32)
    gray *= 1.0 / 255.0  # in place: one full-size array fewer per image
    return gray, None


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image of any mode -> float32 (H, W) in [0, 1]."""
    gray, alpha = _pil_planes(img)
    if alpha is None:
        return gray
    return np.ascontiguousarray(_composite(gray, alpha), dtype=np.float32)


def _block_sums(a: np.ndarray, k: int) -> np.ndarray:
    """Sums of the k x k blocks of ``a`` (the last row and column of blocks may be short).
    In float32, twice as fast as float64: a block's sum of at most k x k values in [0, 1]
    keeps a relative error far below the 1/255 of a gray level."""
    rows = np.add.reduceat(a, np.arange(0, a.shape[0], k), axis=0)
    return np.add.reduceat(rows, np.arange(0, a.shape[1], k), axis=1)


def _block_counts(n: int, k: int) -> np.ndarray:
    """How many of ``n`` pixels fall in each block of ``k`` along one side."""
    counts = np.full(-(-n // k), k, dtype=np.float64)
    counts[-1] = n - k * (len(counts) - 1)
    return counts


def _shrunk_gray(img: Image.Image, k: int) -> np.ndarray:
    """A loaded image -> float32 gray of the means of its k x k blocks, never converting
    more than a tile of it at a time.

    The result is the full-size conversion (``_pil_to_gray``) averaged over blocks, as an
    area resize makes it: transparency is averaged premultiplied and composited once at the
    end, and a 32-bit image is scaled by the top of the whole image, not of a tile.
    """
    width, height = img.size
    top = None
    if img.mode in ("I", "F"):
        top = max(_top(tile) for _, _, tile in _tiles(img, k))
    alpha_sum = None
    gray_sum = np.zeros((-(-height // k), -(-width // k)), dtype=np.float32)
    for x, y, tile in _tiles(img, k):
        gray, alpha = _pil_planes(tile, top)
        box = np.s_[y // k : y // k + -(-tile.height // k), x // k : x // k + -(-tile.width // k)]
        if alpha is not None:
            if alpha_sum is None:
                alpha_sum = np.zeros_like(gray_sum)
            gray = gray * alpha
            alpha_sum[box] = _block_sums(alpha, k)
        gray_sum[box] = _block_sums(gray, k)
    area = np.outer(_block_counts(height, k), _block_counts(width, k))
    gray = (gray_sum / area).astype(np.float32)
    if alpha_sum is None:
        return gray
    alpha = (alpha_sum / area).astype(np.float32)
    return np.ascontiguousarray(_composite(gray, alpha, premultiplied=True), dtype=np.float32)


def _tiles(img: Image.Image, k: int) -> Iterator[tuple[int, int, Image.Image]]:
    """(x, y, tile) for tiles of whole k x k blocks of ``img``, about TILE_PIXELS each (at
    least one block: for our k, a block is at most a 320th of the image); each tile a copy
    in the image's own mode."""
    width, height = img.size
    across = max(1, min(-(-width // k), TILE_PIXELS // (k * k)))  # blocks
    down = max(1, TILE_PIXELS // (k * k * across))
    for y in range(0, height, down * k):
        for x in range(0, width, across * k):
            box = (x, y, min(width, x + across * k), min(height, y + down * k))
            yield x, y, img.crop(box)


# EXIF orientation -> the NumPy view that turns the image upright, as
# ImageOps.exif_transpose turns a Pillow image (checked against it by the tests).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),
}


# The EXIF orientations that ImageOps.exif_transpose turns or flips (1 is upright).
_TURNED = frozenset(range(2, 9))


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        return 1  # an unreadable EXIF block: leave the image as it is
    return value if isinstance(value, int) else 1


class Decoded(NamedTuple):
    """A decoded image: float32 (H, W) gray in [0, 1], and its scale against the file's own
    pixels (below 1 when it was decoded at a reduced size)."""

    gray: np.ndarray
    scale: float


def _mode_bytes(mode: str) -> int:
    """Bytes a pixel takes in Pillow's memory (RGB too is stored in four)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _decode_bytes(img: Image.Image) -> int:
    """What decoding ``img`` at its current size (after ``draft``) holds in memory at once."""
    per_pixel = _mode_bytes(img.mode) * DECODER_COPIES.get(img.format or "", 1)
    return img.width * img.height * per_pixel


def _draft(img: Image.Image, max_side: int | None) -> None:
    """Let a JPEG decode at the smallest of 1/2, 1/4, 1/8 scale that keeps ``max_side``."""
    if max_side and img.format in ("JPEG", "MPO") and max(img.size) > max_side:
        f = max_side / max(img.size)
        img.draft("L", (max(1, math.ceil(img.width * f)), max(1, math.ceil(img.height * f))))


def _check_budget(img: Image.Image) -> None:
    need = _decode_bytes(img)
    if need > MAX_DECODE_BYTES:
        kind = f" {img.format}" if img.format else ""
        raise ImageTooLargeError(
            f"decoding this {img.width}x{img.height}{kind} image would take about "
            f"{need / 2**20:.0f} MB, over the limit of {MAX_DECODE_BYTES / 2**20:.0f} MB per "
            f"image; scale it down or send it as PNG or JPEG"
        )


def _load(img: Image.Image, max_pixels: int, max_side: int | None) -> None:
    """Decode the first frame of an opened image, refusing what is too large to decode
    (from the header, before any pixel is decoded) or corrupt."""
    _check_pixels(img.width, img.height, max_pixels)
    _draft(img, max_side)
    _check_budget(img)
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


def _decode(img: Image.Image, max_pixels: int, max_side: int | None, owned: bool = True) -> Decoded:
    full_width = img.width
    _load(img, max_pixels, max_side)
    try:
        if max_side and img.width * img.height > TILED_ABOVE_PIXELS:
            # Far more pixels than wanted: average k x k blocks, a tile at a time, keeping
            # at least max_side pixels on the longest side (as the JPEG draft does).
            k = max(1, max(img.size) // max_side)
            gray = _shrunk_gray(img, k)
            scale = gray.shape[1] / full_width  # before the EXIF turn, which may swap sides
            orient = _ORIENT.get(_orientation(img))
            if orient is not None:
                gray = np.ascontiguousarray(orient(gray))
            return Decoded(gray, scale)
        scale = img.width / full_width  # before the EXIF turn, which may swap the sides
        # Turn our own decoded image in place; never a caller's.
        if owned:
            # Most images are upright: the orientation is read first, as exif_transpose reads
            # it, because exif_transpose builds its table of turns on every call.
            if img.getexif().get(ExifTags.Base.Orientation, 1) in _TURNED:
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
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check, for headers that claim far more than any cap (its warning,
        # between 89 and 179 MP, is an exception where warnings are errors: -W error).
        raise ImageTooLargeError(
            f"the image is over the limit of {max_pixels:,} pixels ({exc})"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise UnsupportedImageError(f"{what} is corrupt ({exc})") from exc


# What each kind of file that is not a regular file is called in messages.
_SPECIAL_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _refuse_special(mode: int, path: str | os.PathLike) -> None:
    """Raise ``UnsupportedImageError`` unless ``mode`` (from stat) is a regular file's."""
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "not a regular file")
    raise UnsupportedImageError(f"{os.fsdecode(path)!r} is {kind}, not an image file")


def _open_path(path: str | os.PathLike) -> io.BufferedReader:
    """Open a path for reading only if it is a regular file.

    Checked before opening (opening a FIFO blocks until something writes to it, a device
    can be read forever), and again on what was opened, without blocking (``O_NONBLOCK``),
    in case the path was replaced in between.
    """
    try:
        mode = os.stat(path).st_mode
    except ValueError:  # "embedded null byte": no file can have such a name
        raise UnsupportedImageError("the path contains a NUL character") from None
    _refuse_special(mode, path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _refuse_special(os.fstat(fd).st_mode, path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of the file at ``path``, refused unopened when it is not a regular file (a
    directory, FIFO, device or socket), as ``decode`` refuses it: for a caller that needs
    the bytes more than once. Raises ``UnsupportedImageError`` and ``OSError``."""
    with _open_path(path) as f:
        return f.read()


def estimate_decode_bytes(
    source: bytes, max_pixels: int = MAX_PIXELS, max_side: int | None = None
) -> int:
    """What decoding the image file ``source`` will hold in memory at its peak, in bytes,
    read from its header alone (nothing is decoded): its pixels, at the reduced size a JPEG
    decodes at with ``max_side``, times the bytes a pixel takes while decoding. 0 for data
    that ``decode`` will refuse anyway. Lets a server limit how many large decodes run at
    once before starting one.
    """
    try:
        with _open(io.BytesIO(source), "the data", max_pixels) as img:
            _draft(img, max_side)
            return _decode_bytes(img)
    except ImageError:
        return 0


def load_image(
    source: ImageSource, max_pixels: int = MAX_PIXELS, max_side: int | None = None
) -> np.ndarray:
    """Decode any image into float32 (H, W) grayscale in [0, 1], as the eye would see it.

    ``source`` is a file path, the file's bytes, a Pillow image or a NumPy array (uint8,
    uint16, bool or float in [0, 1]; (H, W) or (H, W, C) with gray+alpha, RGB or RGBA).
    Files are decoded by content; only the first frame of an animation is used; the EXIF
    orientation is applied; transparency is composited onto white; 16-bit data is scaled.
    With ``max_side``, the result may be smaller than the file but keeps at least
    ``max_side`` pixels on the longest side: JPEGs decode at a reduced scale, and images of
    other formats with over ``TILED_ABOVE_PIXELS`` pixels are averaged over blocks as they
    are converted (``decode`` says by how much).

    Raises ``ImageTooLargeError`` (over ``max_pixels``, or needing more than
    ``MAX_DECODE_BYTES`` to decode; both checked from the header, before decoding),
    ``UnsupportedImageError`` (not an image, corrupt, truncated; a path that is a
    directory, FIFO, device or socket, refused without being opened) and ``OSError`` when
    a path cannot be read.
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
        with _open_path(source) as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise UnsupportedImageError("the file is empty")
            with _open(f, "the file", max_pixels) as img:
                return _decode(img, max_pixels, max_side)
    raise TypeError(
        f"an image must be a path, bytes, a PIL image or a NumPy array, not {type(source).__name__}"
    )


def preview(source: ImageSource, max_pixels: int = MAX_PIXELS, side: int = 320) -> np.ndarray:
    """The image as a person sees it, for display: uint8 RGB (H, W, 3) with the longest side
    at most ``side``, upright (EXIF), transparency over white. The same sources and the same
    refusals as ``decode`` (an array is shown as the gray ``decode`` reads from it)."""
    if isinstance(source, np.ndarray):
        rgb = _rgb8(
            Image.fromarray(np.round(_array_to_gray(source, max_pixels) * 255).astype(np.uint8))
        )
    elif isinstance(source, Image.Image):
        img = source.copy()
        _load(img, max_pixels, side)
        rgb = _rgb8(_shrunk(ImageOps.exif_transpose(img), side))
    elif isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
        if isinstance(source, (str, os.PathLike)):
            opened: io.BufferedIOBase | io.BytesIO = _open_path(source)
        else:
            if not bytes(source):
                raise UnsupportedImageError("the file is empty")
            opened = io.BytesIO(bytes(source))
        with opened as f, _open(f, "the image", max_pixels) as img:
            _load(img, max_pixels, side)
            try:
                rgb = _rgb8(_shrunk(ImageOps.exif_transpose(img), side))
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise UnsupportedImageError(f"could not read the image ({exc})") from exc
    else:
        kind = type(source).__name__
        raise TypeError(f"an image must be a path, bytes, a PIL image or a NumPy array, not {kind}")
    shown = Image.fromarray(rgb, mode="RGB")
    shown.thumbnail((side, side), Image.Resampling.BOX)
    return np.asarray(shown)


def _shrunk(img: Image.Image, side: int) -> Image.Image:
    """``img`` with its longest side at most ``side``, shrunk before any conversion so that
    no full-size copy is made (Pillow resizes these modes with their alpha premultiplied)."""
    if max(img.size) > side and img.mode in ("L", "LA", "RGB", "RGBA"):
        img.thumbnail((side, side), Image.Resampling.BOX)
    return img


def _rgb8(img: Image.Image) -> np.ndarray:
    """Any decoded Pillow image -> uint8 RGB, transparency composited onto white and other
    modes (16-bit, float, CMYK...) through the gray that ``decode`` reads from them."""
    if img.mode in ("RGB", "RGBA", "P", "LA", "L", "PA", "La", "RGBa", "1", "CMYK", "YCbCr"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        rgb = rgba[:, :, :3] * rgba[:, :, 3:] + (1.0 - rgba[:, :, 3:])
    else:
        gray = _pil_to_gray(img)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    return np.round(rgb * 255).astype(np.uint8)
