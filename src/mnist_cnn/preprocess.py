"""User images -> the model's input, made the way MNIST itself was made.

MNIST digits are white on black, anti-aliased, fitted into a 20x20 box with their aspect
ratio kept and placed in a 28x28 field so that their centre of mass sits at the centre.
People upload something else: phone photos of ink on paper under uneven light, screenshots,
transparent canvas PNGs, white-on-black drawings, 16-bit scans, JPEGs whose EXIF tag says
"rotate me". A model that scores 99% on MNIST guesses on those when they are simply resized,
so this module rebuilds the MNIST look step by step:

1. ``load_image``: decode by content (never by file name), refuse decompression bombs from
   the header before decoding, take the first frame of an animation, apply the EXIF
   orientation, composite transparency, scale 8- and 16-bit data to [0, 1] grayscale.
2. ``to_mnist``: decide the polarity from the background (the border), subtract the
   paper's uneven lighting (a quadratic surface fitted to the paper), normalise the
   contrast between the noise floor and solid ink, refuse blank images, drop specks (small
   connected pieces away from the digit), crop to the digit, bring strokes far thinner or
   thicker than MNIST's into its range, fit into 20x20 and centre by mass in 28x28.
3. ``preprocess``: both of the above plus the checkpoint's normalisation.

Everything here is a pure function of NumPy arrays and Pillow images; no model is involved.
Images are analysed at a working resolution of at most ``WORK_SIDE`` pixels (JPEGs are
decoded straight at that size with DCT scaling), the statistics on 2x2 means of that, and
only the digit's box at full working resolution: one 640x480 photo takes about 2 ms.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
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

# The analysis runs on images whose longest side is at most this many pixels: enough for a
# digit that covers a tenth of a photo to keep ~30 pixels, small enough to stay fast.
WORK_SIDE = 320

# The MNIST geometry.
FIELD = 28  # the image is 28x28 ...
BOX = 20  # ... with the digit's longest side fitted into 20 pixels
# MNIST's mean centre of mass in (row, column) pixel coordinates, measured on the training
# set (tests/test_preprocess.py checks it against the data): slightly right of and below the
# geometric centre 13.5, because NIST's centring rounded towards higher indices.
MNIST_CENTRE = (14.0, 14.0)
# MNIST's stroke width in pixels of the 28x28 image, measured with ``stroke_width`` on the
# training set (tests/test_preprocess.py checks these against the data): median 2.5, 5th
# percentile 1.7, 95th 3.8. Strokes outside [STROKE_MIN, STROKE_MAX], which the network has
# rarely seen (a ballpoint on a big photo, a marker on a small canvas), are brought back:
# thin ones dilated to STROKE_TARGET (MNIST's lower quartile: thickening more would close
# the small loops of 6, 8 and 9), thick ones eroded towards STROKE_MAX.
STROKE_MIN = 1.7
STROKE_MAX = 4.2
STROKE_TARGET = 2.0

# "No digit" thresholds: the ink must stand out from the background by at least this much
# of the full [0, 1] range, and by this many times the background's noise level.
MIN_CONTRAST = 0.12
MIN_SNR = 8.0
# A digit's extent must be at least this fraction of the image's longest side (and at
# least MIN_EXTENT_PX pixels): a lone dot or a speck is not a digit.
MIN_EXTENT = 0.04
MIN_EXTENT_PX = 4

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


def _decode(
    img: Image.Image, max_pixels: int, max_side: int | None, owned: bool = True
) -> np.ndarray:
    _check_pixels(img.width, img.height, max_pixels)
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
    try:
        # Turn our own decoded image in place; never a caller's.
        if owned:
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
        return _pil_to_gray(img)
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
    ``max_side`` pixels on the longest side (the result is then smaller than the file).

    Raises ``ImageTooLargeError`` (over ``max_pixels``, checked before decoding),
    ``UnsupportedImageError`` (not an image, corrupt, truncated) and ``OSError`` when a
    path cannot be read.
    """
    if isinstance(source, np.ndarray):
        return _array_to_gray(source, max_pixels)
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


# --------------------------------------------------------------------------- small tools


def _resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a float image: area averaging when shrinking (anti-aliasing, as MNIST was
    made), bilinear when enlarging."""
    if a.shape == (height, width):
        return a
    shrinking = height <= a.shape[0] and width <= a.shape[1]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), method), dtype=np.float32)


def _block_reduce(a: np.ndarray, k: int, how: str) -> np.ndarray:
    """Reduce ``a`` over k x k blocks: "max" and "sum" include the last partial blocks,
    "low" (a low percentile) only whole blocks."""
    if how in ("max", "sum"):
        # k strided slices per axis: many times faster than reducing a 4-d reshape.
        op = np.maximum if how == "max" else np.add
        rows = a[0::k].copy()
        for i in range(1, k):
            part = a[i::k]
            op(rows[: len(part)], part, out=rows[: len(part)])
        out = rows[:, 0::k].copy()
        for i in range(1, k):
            part = rows[:, i::k]
            op(out[:, : part.shape[1]], part, out=out[:, : part.shape[1]])
        return out
    # "low": the 25th percentile, robust to noise and to a block partly covered by ink.
    gh, gw = a.shape[0] // k, a.shape[1] // k
    a = a[: gh * k, : gw * k]
    flat = a.reshape(gh, k, gw, k).transpose(0, 2, 1, 3).reshape(gh, gw, k * k)
    q = (k * k) // 4
    return np.partition(flat, q, axis=2)[:, :, q]


def _median(a: np.ndarray) -> float:
    """The (upper) median: one partition, without np.median's overhead on the hot path."""
    flat = a.ravel()
    k = flat.size // 2
    return float(np.partition(flat, k)[k])


def _neighbourhood(a: np.ndarray, how: str, radius: int = 1) -> np.ndarray:
    """Min or max over each (2r+1)^2 neighbourhood (a square structuring element), as two
    separable passes; the window is cut at the image's edges."""
    op = np.minimum if how == "min" else np.maximum
    out = a
    for axis in (0, 1):
        src, out = out, out.copy()
        for s in range(1, radius + 1):
            if s >= src.shape[axis]:
                break
            lo = (slice(None),) * axis + (slice(s, None),)
            hi = (slice(None),) * axis + (slice(None, -s),)
            op(out[lo], src[hi], out=out[lo])  # the neighbour s before
            op(out[hi], src[lo], out=out[hi])  # the neighbour s after
    return out


def stroke_width(image: np.ndarray, threshold: float = 0.5) -> float:
    """Mean stroke width in pixels of a white-on-black image, from area and perimeter.

    A stroke of width w and length L has area w*L and a perimeter of about 2L, so
    w = 2 * area / perimeter. The perimeter is counted along pixel edges, which overstates
    a curve's length by 4/pi on average over directions (Cauchy-Crofton), hence the pi/4.
    """
    mask = np.asarray(image, dtype=np.float32) > threshold
    area = int(mask.sum())
    if area == 0:
        return 0.0
    m = np.pad(mask, 1)
    edges = int((m[1:, :] != m[:-1, :]).sum() + (m[:, 1:] != m[:, :-1]).sum())
    return 2.0 * area / (edges * math.pi / 4.0)


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a small boolean grid, as lists of (row, column) cells.

    Plain Python sets: a digit covers a few hundred cells of the grid, where this is faster
    than any array-based labelling without SciPy."""
    todo = set(zip(*(idx.tolist() for idx in np.nonzero(mask)), strict=True))
    components = []
    while todo:
        seed = todo.pop()
        cells, queue = [seed], deque([seed])
        while queue:
            y, x = queue.popleft()
            for nb in (
                (y - 1, x - 1),
                (y - 1, x),
                (y - 1, x + 1),
                (y, x - 1),
                (y, x + 1),
                (y + 1, x - 1),
                (y + 1, x),
                (y + 1, x + 1),
            ):
                if nb in todo:
                    todo.remove(nb)
                    cells.append(nb)
                    queue.append(nb)
        components.append(cells)
    return components


# --------------------------------------------------------------------------- the MNIST look


def _fit_background(xs: np.ndarray, blocks: int = 10, rounds: int = 3) -> np.ndarray:
    """The coefficients of a smooth background under bright ink: a quadratic surface in
    (u, v), the position as a fraction of the image's width and height, fitted by least
    squares to the 25th percentile of about ``blocks`` x ``blocks`` blocks and refitted
    without the blocks that stand clearly above it (covered by ink)."""
    h, w = xs.shape
    k = max(1, min(h, w, math.ceil(max(h, w) / blocks)))
    grid = _block_reduce(xs, k, "low").astype(np.float64)  # whole blocks only
    gh, gw = grid.shape
    v = (np.arange(gh) + 0.5) * k / h  # block centres as fractions of the image
    u = (np.arange(gw) + 0.5) * k / w
    vv, uu = np.meshgrid(v, u, indexing="ij")
    design = np.stack([np.ones_like(uu), uu, vv, uu * uu, uu * vv, vv * vv], -1).reshape(-1, 6)
    values = grid.ravel()
    if values.size < 12:  # too few blocks for a surface: a flat background
        return np.array([_median(values), 0, 0, 0, 0, 0])
    # Paper is the majority: start from the lower half of the blocks.
    keep = values <= _median(values)
    coef = np.zeros(6)
    ridge = 1e-6 * np.eye(6)  # keeps the 6x6 system solvable with few blocks left
    for _ in range(rounds):
        d = design[keep]
        coef = np.linalg.solve(d.T @ d + ridge, d.T @ values[keep])
        residual = values - design @ coef
        spread = 1.4826 * _median(np.abs(residual[keep]))
        keep = residual < max(2.5 * spread, 0.03)
    return coef


def _surface(
    coef: np.ndarray,
    h: int,
    w: int,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> np.ndarray:
    """The quadratic background at the pixel centres of an (h, w) image, or of the window
    ``rows`` x ``cols`` (half-open index ranges) of it."""
    r0, r1 = rows or (0, h)
    c0_, c1_ = cols or (0, w)
    v = ((np.arange(r0, r1) + 0.5) / h)[:, None]
    u = ((np.arange(c0_, c1_) + 0.5) / w)[None, :]
    c0, cu, cv, cuu, cuv, cvv = coef.tolist()
    column = c0 + cv * v + cvv * v * v  # the terms without u, per row
    return (column + (cu + cuv * v) * u + cuu * u * u).astype(np.float32)


@dataclass(frozen=True)
class _Levels:
    """How to turn gray levels into ink: polarity, background surface, noise floor, and the
    level of solid ink (all in the polarity where ink is bright)."""

    dark_ink: bool
    coef: np.ndarray
    floor: float
    ink: float

    def apply(
        self,
        gray: np.ndarray,
        shape: tuple[int, int],
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Ink in [0, 1] of ``gray``, the window ``rows`` x ``cols`` of an image of ``shape``."""
        r = 1.0 - gray if self.dark_ink else gray.copy()
        r -= _surface(self.coef, *shape, rows, cols)
        r -= self.floor
        r *= 1.0 / (self.ink - self.floor)
        return np.clip(r, 0.0, 1.0, out=r)


def _levels(small: np.ndarray) -> _Levels:
    """Measure polarity, background, noise and ink level on a (reduced) grayscale image."""
    # Polarity from the background: the border is (almost always) background, and the ink
    # is what deviates most from it, darker or lighter. The mean of the whole image would
    # mislead on a thick digit, or on dark paper.
    b = max(1, round(0.03 * min(small.shape)))
    border = np.concatenate(
        [small[:b].ravel(), small[-b:].ravel(), small[:, :b].ravel(), small[:, -b:].ravel()]
    )
    level = _median(border)
    dark_ink = level - float(small.min()) >= float(small.max()) - level
    xs = 1.0 - small if dark_ink else small

    # Uneven lighting: the light on a page varies smoothly (a slope from the window, a
    # vignette from the lens), so the background is a quadratic surface fitted to the
    # paper, and subtracted.
    coef = _fit_background(xs)
    rs = xs - _surface(coef, *xs.shape)
    centre = _median(rs)
    # The noise level from differences of horizontal neighbours, immune to slow variations
    # of the light (a difference of two pixels has sqrt(2) times their noise).
    diffs = np.abs(rs[:, 1:] - rs[:, :-1]).ravel()
    sigma = 1.4826 * _median(diffs) / math.sqrt(2.0)
    candidates = rs[rs > centre + max(5.0 * sigma, 0.5 * MIN_CONTRAST)]
    if candidates.size < 4:
        raise NoDigitError("no digit found: the image is blank")
    ink = float(np.percentile(candidates, 90))
    contrast = ink - centre
    if contrast < MIN_CONTRAST or contrast < MIN_SNR * sigma:
        raise NoDigitError(
            f"no digit found: nothing stands out from the background (contrast "
            f"{contrast:.2f}, noise {sigma:.3f})"
        )
    # Ink is what stands above the noise floor, scaled so that solid ink is 1.
    return _Levels(dark_ink, coef, centre + 3.0 * sigma, ink)


def _keep_digit(y: np.ndarray) -> np.ndarray:
    """Where the digit is (a boolean mask of ``y``'s shape): the main connected piece of ink
    and the pieces that belong to it, without the specks."""
    h, w = y.shape
    c = max(1, math.ceil(max(h, w) / 64))
    core = _block_reduce(y, c, "max") > 0.5
    mass = _block_reduce(y, c, "sum")
    components = _components(core)
    if not components:
        raise NoDigitError("no digit found: only faint marks")
    gh, gw = core.shape
    masses, boxes = [], []
    for cells in components:
        rows, cols = zip(*cells, strict=True)
        masses.append(float(mass[rows, cols].sum()))
        boxes.append((min(rows), max(rows), min(cols), max(cols)))
    # Prefer a piece that does not touch the border (the edge of the page, a shadow) when
    # one of comparable mass exists.
    touches = [b[0] == 0 or b[2] == 0 or b[1] == gh - 1 or b[3] == gw - 1 for b in boxes]
    main = max(range(len(boxes)), key=masses.__getitem__)
    inner = [i for i in range(len(boxes)) if not touches[i]]
    if inner and touches[main]:
        best_inner = max(inner, key=masses.__getitem__)
        if masses[best_inner] >= 0.25 * masses[main]:
            main = best_inner
    # Grow the digit from the main piece: a stroke broken by faint ink or a detached bar (of
    # a 5, a 7) is close and not tiny; dust is tiny, a mark elsewhere on the page is far.
    chosen = {main}
    y0, y1, x0, x1 = boxes[main]
    grew = True
    while grew:
        grew = False
        size = max(y1 - y0, x1 - x0) + 1
        total = sum(masses[i] for i in chosen)
        for i, (a0, a1, b0, b1) in enumerate(boxes):
            if i in chosen:
                continue
            gap = max(a0 - y1, y0 - a1, b0 - x1, x0 - b1, 0)
            inside = a0 >= y0 and a1 <= y1 and b0 >= x0 and b1 <= x1
            near = gap <= 0.3 * size and masses[i] >= 0.01 * total
            substantial = gap <= size and masses[i] >= 0.1 * total
            if inside or near or substantial:
                chosen.add(i)
                y0, y1, x0, x1 = min(y0, a0), max(y1, a1), min(x0, b0), max(x1, b1)
                grew = True
    kept = np.zeros(core.shape, dtype=bool)
    for i in chosen:
        rows, cols = zip(*components[i], strict=True)
        kept[rows, cols] = True
    # One cell of margin so that the faint anti-aliased rim of each stroke survives.
    kept = _neighbourhood(kept, "max")
    return np.repeat(np.repeat(kept, c, axis=0), c, axis=1)[:h, :w]


def _fit_box(digit: np.ndarray) -> np.ndarray:
    """A cropped digit -> its longest side fitted into BOX pixels, strokes of MNIST width."""
    h, w = digit.shape
    # Work at 4x the final resolution: stroke corrections happen there, and the final 4x4
    # area average reproduces MNIST's anti-aliasing.
    up = 4
    side = BOX * up
    hh, ww = max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w)))
    big = _resize(digit, hh, ww)
    width = stroke_width(big) / up  # in pixels of the 20x20 box
    if 0 < width < STROKE_MIN or width > STROKE_MAX:
        # Pen strokes on a big photo end up far thinner than MNIST's, marker strokes on a
        # small canvas far thicker. Thin strokes are dilated to the typical width; thick
        # ones are eroded only down to the upper bound, and by at most a third of their
        # width, so that narrower parts of a bold stroke do not vanish.
        thin = width < STROKE_MIN
        change = (STROKE_TARGET - width) if thin else min(width - STROKE_MAX, width / 3)
        radius = round(change * up / 2)
        if radius:
            big = np.pad(big, radius if thin else 0)
            big = _neighbourhood(big, "max" if thin else "min", radius)
            ys, xs = np.nonzero(big > 0.05)
            if ys.size:
                big = big[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            hh, ww = big.shape
    small_h = max(1, round(hh * BOX / max(hh, ww)))
    small_w = max(1, round(ww * BOX / max(hh, ww)))
    small = _resize(big, small_h, small_w)
    top = float(small.max())
    # MNIST's strokes are saturated at their core; area averaging dims thin strokes.
    return np.clip(small / top, 0.0, 1.0) if top > 0 else small


def _place(small: np.ndarray) -> np.ndarray:
    """Place a digit in the 28x28 field with its centre of mass at MNIST's centre."""
    h, w = small.shape
    total = float(small.sum())
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    cy = float(small.sum(1) @ ys) / total
    cx = float(small.sum(0) @ xs) / total
    # Integer shifts, as MNIST was made (no extra blur); clamped so nothing is cut off.
    top = min(max(round(MNIST_CENTRE[0] - cy), 0), FIELD - h)
    left = min(max(round(MNIST_CENTRE[1] - cx), 0), FIELD - w)
    out = np.zeros((FIELD, FIELD), dtype=np.float32)
    out[top : top + h, left : left + w] = small
    return out


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Grayscale float (H, W) in [0, 1] -> uint8 (28, 28) as MNIST: white digit on black,
    longest side fitted into 20x20 keeping the aspect ratio, centred by centre of mass.

    Raises ``NoDigitError`` when the image is blank or holds nothing digit-sized.
    """
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise UnsupportedImageError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    h, w = gray.shape
    if max(h, w) > WORK_SIDE:
        f = WORK_SIDE / max(h, w)
        gray = _resize(gray, max(1, round(h * f)), max(1, round(w * f)))
    if min(gray.shape) < 2 or float(gray.max() - gray.min()) < MIN_CONTRAST:
        raise NoDigitError("no digit found: the image is blank")
    h, w = gray.shape
    # Measuring, and finding the digit, run on 2x2 means of larger images: they see the
    # image at the scale of a stroke, where sensor noise is halved and dithering (palette
    # GIFs, 1-bit scans) averages out, for a quarter of the cost. Only the digit's box is
    # then processed at full resolution.
    f = 2 if min(h, w) >= 64 else 1
    if f == 2:
        gray = gray[: h - h % 2, : w - w % 2]  # an odd last row or column is dropped
        h, w = gray.shape
        small = _block_reduce(gray, 2, "sum") * 0.25
    else:
        small = gray
    levels = _levels(small)
    ink_small = levels.apply(small, small.shape)
    keep = _keep_digit(ink_small)
    ys, xs = np.nonzero(keep & (ink_small > 0.05))
    if ys.size == 0:
        raise NoDigitError("no digit found: the image is blank")
    extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    if extent < max(MIN_EXTENT_PX, MIN_EXTENT * max(small.shape)):
        raise NoDigitError("no digit found: the only marks are too small to be a digit")
    # The box at full resolution, one reduced pixel wider on each side.
    r0, r1 = max(0, (ys.min() - 1) * f), min(h, (ys.max() + 2) * f)
    c0, c1 = max(0, (xs.min() - 1) * f), min(w, (xs.max() + 2) * f)
    ink = levels.apply(gray[r0:r1, c0:c1], (h, w), (r0, r1), (c0, c1))
    keep = keep[r0 // f : r1 // f, c0 // f : c1 // f]
    if f > 1:
        keep = np.repeat(np.repeat(keep, f, axis=0), f, axis=1)
    ink *= keep
    ys, xs = np.nonzero(ink > 0.05)
    if ys.size == 0:
        raise NoDigitError("no digit found: the image is blank")
    digit = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    field = _place(_fit_box(digit))
    return np.round(field * 255.0).astype(np.uint8)


def preprocess(
    source: ImageSource, mean: float, std: float, max_pixels: int = MAX_PIXELS
) -> tuple[torch.Tensor, np.ndarray]:
    """Any image -> (normalised float tensor (1, 28, 28), the uint8 28x28 image the model sees).

    ``mean`` and ``std`` are the checkpoint's input normalisation (``LoadedModel.mean/std``).
    Raises the ``ImageError`` subclasses documented in ``load_image`` and ``to_mnist``.
    """
    image = to_mnist(load_image(source, max_pixels, max_side=WORK_SIDE))
    return normalise(image, mean, std)[0], image


def normalise(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (28, 28) or (N, 28, 28) MNIST-like images -> normalised float (N, 1, 28, 28)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.reshape(-1, 1, FIELD, FIELD)
    return (x - mean) / std
