"""Where the digit is, and the MNIST look: a grayscale image -> the 28x28 model input.

MNIST digits are white on black, anti-aliased, fitted into a 20x20 box with their aspect
ratio kept and placed in a 28x28 field so that their centre of mass sits at the centre.
People give us phone photos of a sheet on a desk, pages crossed by a hand's shadow, ruled
and squared paper, pencil, coloured ink on sticky notes, crops of a written number, and
drawings on a pad. ``locate`` finds the one digit in such an image and redraws it the MNIST
way, with OpenCV doing the image processing:

1. Work on a copy whose longest side is at most ``WORK_SIDE`` pixels; analyse a half-size
   copy of that (stroke scale, where sensor noise is halved and dithering averages out).
2. Polarity: a sheet of paper lying on a darker desk (a large, bright, convex region whose
   darker surround reaches the image's edge) means dark ink. Otherwise the background is
   the level that the whole image and its border agree on; when they disagree (a shadow
   over the border, a pad half covered in ink) the strokes decide: thin structures of the
   true polarity survive a morphological background estimate, the other polarity's do not.
3. Background: a morphological closing (opening for light ink) with a window wider than any
   stroke removes the strokes and keeps everything large, so the desk, a hard shadow's
   edge, vignetting and uneven light all become "background". Ink is the relative darkening
   against it, which is the same in the shadow as in the light.
4. Lines: long thin straight structures that cross the page (ruled and squared paper, a red
   margin line) are found with a probabilistic Hough transform and removed, and the gaps
   they leave in the strokes that cross them are closed again.
5. The digit: connected components of the ink; specks dropped; pieces cut by the image's
   edge (neighbouring digits of a number, the edge of a sheet) dropped when a whole piece
   exists; the pieces that belong together (a broken 4, the detached bar of a 5) grouped.
6. The MNIST look: the digit's box at full working resolution, strokes far thinner or
   thicker than MNIST's brought into its range, the longest side fitted into 20 pixels and
   the centre of mass placed at MNIST's centre of the 28x28 field.

Everything is a pure function of NumPy arrays. One 640x480 photo takes about 0.75 ms on one
thread when repeated (more within a request, where decoding and the network have evicted
its code and data from the CPU's caches). Most of it is a hundred-odd small NumPy
and OpenCV calls, each costing a microsecond or more whatever its size, so the shortcuts
cut calls: work confined to the ink's bounding box, NumPy's median without its overhead,
one OpenCV pass where NumPy would make two or three, structuring elements made once, and
the few pieces of ink of most images compared on Python lists. They give exactly the plain
computation's results; tests/test_locate_shortcuts.py and the tests at the end of
tests/test_locate.py check that they do.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from mnist_cnn.decode import NoDigitError, UnsupportedImageError

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

# The first background window, as a fraction of the analysed image's shorter side: wider
# than the thickest stroke (a marker digit that fills a photo has strokes a fifth of its
# height). A second pass then tightens it to a few stroke widths.
BACKGROUND_WINDOW = 0.45
# Ink levels (solid ink is 1): pieces of ink are what stands above WEAK_INK, and a piece
# counts only if some of it reaches STRONG_INK.
WEAK_INK = 0.2
FAINT_INK = 0.08  # printed lines are traced from here
STRONG_INK = 0.5
# An area of "ink" (wider than strokes) fainter than this is shade, not writing.
SHADE_LEVEL = 0.75
SHADE_RADIUS = 0.6  # the opening disk, in stroke widths
SHADE_SPREAD = 0.5  # shade is flat: its interquartile range is below this share of its level
# Up to this many pieces of ink, ``_keep_digit`` decides on Python lists rather than NumPy
# arrays (each NumPy call costs about a microsecond whatever its size; a Python comparison
# a tenth of that per piece).
FEW_PIECES = 16
# The most labels OpenCV's 16-bit labelling can hold (``np.iinfo`` costs microseconds a call).
_U16_MAX = 65535
# Hough segments examined for families of lines, the longest first.
MAX_SEGMENTS = 40
# Ink at least this thick (analysed pixels) across a line is a stroke, not the line.
LINE_MEND = 5
# A sheet of paper holds a disc of at least this radius, as a fraction of the image's
# shorter side, free of ink.
SHEET_ROOM = 0.08
# How much of its smallest bounding rectangle a sheet of paper fills, at least: a trapezoid
# of slight perspective fills about 0.9, a disc 0.79.
RECTANGULARITY = 0.85
# Ruled and grid lines found in families of three or more are removed from this fraction of
# the page's extent; a lone pair, or a margin line, from LINE_SPAN.
LINE_FAMILY_SPAN = 0.4
# A line to remove spans at least this fraction of the page (or sheet) it lies on: ruled
# and grid lines cross the whole page, a "1" in a tight crop does not reach both edges.
LINE_SPAN = 0.7

# What ``locate(gray, stages)`` records, in order: the working grayscale copy; the ink after
# the background, the desk and the ruled lines are taken out (at analysis resolution); the
# pieces kept as the digit; the digit's box at working resolution; the longest side fitted
# into 20 pixels with MNIST's stroke width; the 28x28 field, centred by mass.
STAGES = ("grayscale", "cleaned", "digit", "cropped", "fitted", "centred")


@dataclass(frozen=True)
class Located:
    """A located digit: the model input and where it came from."""

    image: np.ndarray  # uint8 (28, 28), white digit on black, MNIST's geometry
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the input's pixels, end exclusive
    marks: int  # separate substantial marks in the digit's box (2 or more: maybe not one digit)
    dark_ink: bool  # the polarity found: dark ink on a light background


# --------------------------------------------------------------------------- small tools


def _odd(n: float) -> int:
    return max(3, int(n) // 2 * 2 + 1)


def _resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area averaging when shrinking (anti-aliasing, as MNIST was made), bilinear when
    enlarging."""
    if a.shape == (height, width):
        return a
    shrinking = height <= a.shape[0] and width <= a.shape[1]
    method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(a, (width, height), interpolation=method)


def _to_u8(a: np.ndarray) -> np.ndarray:
    """``np.round(a * 255).astype(np.uint8)`` of a float32 array with values in [0, 1], in
    one OpenCV pass instead of three NumPy ones: the same float32 product, rounded half to
    even as ``np.round`` rounds (tests/test_locate_shortcuts.py)."""
    return cv2.convertScaleAbs(a, alpha=255.0)


def stroke_width(image: np.ndarray, threshold: float = 0.5) -> float:
    """Mean stroke width in pixels of a white-on-black image, from area and perimeter.

    A stroke of width w and length L has area w*L and a perimeter of about 2L, so
    w = 2 * area / perimeter. The perimeter is counted along pixel edges, which overstates
    a curve's length by 4/pi on average over directions (Cauchy-Crofton), hence the pi/4.
    """
    mask = np.asarray(image, dtype=np.float32) > threshold
    area = np.count_nonzero(mask)
    if area == 0:
        return 0.0
    # Pixel edges between ink and background, the image's outside counting as background.
    edges = (
        np.count_nonzero(mask[1:] != mask[:-1])
        + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
        + np.count_nonzero(mask[0])
        + np.count_nonzero(mask[-1])
        + np.count_nonzero(mask[:, 0])
        + np.count_nonzero(mask[:, -1])
    )
    return 2.0 * area / (edges * math.pi / 4.0)


def _nearest(size: int, source: int, start: int, stop: int) -> np.ndarray:
    """The source indices that ``cv2.resize`` with INTER_NEAREST picks for pixels
    ``start:stop`` when it resizes ``source`` pixels to ``size`` (in its very arithmetic)."""
    step = 1.0 / (size / source)
    return np.minimum(np.floor(np.arange(start, stop) * step).astype(np.intp), source - 1)


def _enlarged(a: np.ndarray, height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    """``cv2.resize(a, (width, height), interpolation=cv2.INTER_LINEAR)[rows, cols]``, with
    only the box's neighbourhood enlarged when the enlargement is exactly 2x.

    Each enlarged pixel blends the two nearest source pixels in each direction: the box's
    own source pixels and one more on each side give the very same values (OpenCV clamps
    at the edge of what it is given, which is then the image's edge or outside the box).
    """
    h, w = a.shape
    if (height, width) != (2 * h, 2 * w):
        return cv2.resize(a, (width, height), interpolation=cv2.INTER_LINEAR)[rows, cols]
    r0, r1 = max(0, rows.start // 2 - 1), min(h, (rows.stop - 1) // 2 + 2)
    c0, c1 = max(0, cols.start // 2 - 1), min(w, (cols.stop - 1) // 2 + 2)
    part = cv2.resize(
        a[r0:r1, c0:c1], (2 * (c1 - c0), 2 * (r1 - r0)), interpolation=cv2.INTER_LINEAR
    )
    return part[rows.start - 2 * r0 : rows.stop - 2 * r0, cols.start - 2 * c0 : cols.stop - 2 * c0]


@functools.lru_cache(maxsize=64)
def _disk(radius: int) -> np.ndarray:
    """A disk-shaped structuring element, made once per radius (a few are used per image,
    each asked for several times); read-only, as it is shared."""
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    disk.flags.writeable = False
    return disk


@functools.lru_cache(maxsize=64)
def _square(side: int) -> np.ndarray:
    """A ``side`` x ``side`` square structuring element (OpenCV runs it as two 1-D passes),
    made once per size; read-only, as it is shared."""
    square = np.ones((side, side), np.uint8)
    square.flags.writeable = False
    return square


# The images analysed here are small (some 20,000 pixels at most), so NumPy's general
# ``median`` and ``percentile`` spend more on argument handling, and on selecting two
# order statistics, than on the one selection they need. These two give exactly the same
# values (the same order statistics, interpolated in the same precision).


def _median(values: np.ndarray) -> float:
    """``float(np.median(values))`` of a non-empty 1-D array."""
    k = values.size // 2
    part = np.partition(values, k)
    if values.size % 2:
        return float(part[k])
    # The other middle value is the largest below: one selection instead of two (which
    # costs twice as much). Their mean as np.median's: in the precision of a float array,
    # in float64 for integers.
    lo, hi = part[:k].max(), part[k]
    if values.dtype.kind == "f":
        return float((lo + hi) / 2)
    return (int(lo) + int(hi)) / 2


def _percentile(values: np.ndarray, q: float) -> float:
    """``float(np.percentile(values, q))`` (linear interpolation) of a non-empty 1-D float32
    array (NumPy interpolates integers in another precision)."""
    n = values.size
    q = q / 100.0
    # NumPy's virtual index for the linear method, in the same floating-point operations.
    virtual = n * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0
    if virtual >= n - 1:
        return float(np.partition(values, n - 1)[n - 1])
    lo = max(0, math.floor(virtual))
    gamma = virtual - lo if virtual >= 0 else 0.0
    part = np.partition(values, lo)
    a, b = part[lo], part[lo + 1 :].min()  # one selection, as in _median
    diff = b - a
    # NumPy's _lerp, which interpolates from the nearer end (in the array's precision).
    return float(b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma)


def _crop_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice]:
    """The bounding rectangle of a mask's non-zero pixels, ``margin`` wider on each side, as
    slices on which OpenCV's labelling and distance transform give exactly what they give
    on the whole image.

    It is widened to start on an even row and on a column that is a multiple of 16, and to
    end on such a column or at the image's edge: connected components are labelled in 2x2
    blocks in scan order (so the labels' order, which decides ties, depends on the parity
    of rows and columns), and the distance transform's results differ in the last bit
    between its vectorised columns and its scalar tail (found by testing; the tests at the
    end of tests/test_locate.py check both). An empty mask gives its top-left 2x2 pixels,
    so that what runs on the rectangle needs no special case.
    """
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8) if mask.dtype == bool else mask)
    rows, cols = mask.shape
    if w == 0:
        return slice(0, min(2, rows)), slice(0, min(2, cols))
    r0, c0 = max(0, y - margin), max(0, x - margin)
    r1, c1 = min(rows, y + h + margin), min(cols, x + w + margin)
    return slice(r0 // 2 * 2, r1), slice(c0 // 16 * 16, min(cols, -(-c1 // 16) * 16))


# --------------------------------------------------------------------------- polarity


def _find_sheet(small: np.ndarray) -> np.ndarray | None:
    """The mask of a sheet of paper (or a sticky note) lying on a darker surface, or None.

    A sheet is large, bright and convex; the darker surface reaches the image's edge; and
    the sheet's edge is a step, crossed within a few pixels (vignetting and uneven light
    darken the corners of a page that fills the frame gradually). Otsu's threshold splits
    paper from desk; the convex hull of the largest bright piece closes over the ink.
    """
    h, w = small.shape
    # An opening after the median removes the bright streaks of a wood grain that would
    # join the sheet to the desk; the dark ink it spreads stays inside the sheet's hull.
    side = _odd(0.03 * min(h, w))
    # (OpenCV's 5x5 median is several times faster on 16-bit pixels than on 8-bit ones.)
    median = cv2.medianBlur(small.astype(np.uint16), 5).astype(np.uint8)
    smooth = cv2.morphologyEx(
        median,
        cv2.MORPH_OPEN,
        _square(side),
    )
    level, bright = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Most images stop at this first test: the dark share is counted before any mask is made.
    if not 0.05 <= (bright.size - cv2.countNonZero(bright)) / bright.size <= 0.85:
        return None
    dark = bright == 0
    if np.bincount(small[dark]).max() > 0.5 * np.count_nonzero(dark):
        return None  # a flat surround (one gray level) is a drawing's background, no desk
    light_mean, dark_mean = float(smooth[~dark].mean()), float(smooth[dark].mean())
    if light_mean - dark_mean < 0.15 * 255:
        return None
    edge = np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]])
    if edge.mean() < 0.1:  # the surface must surround the sheet, not sit inside it
        return None
    # 16-bit labels (at most 160x160 pixels here): OpenCV's statistics are three times as
    # fast with them as with 32-bit ones.
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8, ltype=cv2.CV_16U)
    if n < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = int(stats[largest, cv2.CC_STAT_AREA])
    if area < 0.12 * h * w:
        return None
    # Paper is broad: somewhere on it there is room for a disc a good fraction of the image
    # wide. Strokes of light ink, however thick, are narrow.
    piece = (labels == largest).astype(np.uint8)
    if cv2.distanceTransform(piece, cv2.DIST_L2, 3).max() < SHEET_ROOM * min(h, w):
        return None
    contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    # Paper is a quadrilateral (a trapezoid in perspective, cut by the frame): it fills most
    # of its smallest bounding rectangle, where a blob of light ink is rounder.
    (_, _), (rw, rh), _ = cv2.minAreaRect(hull)
    if cv2.contourArea(hull) < RECTANGULARITY * rw * rh:
        return None
    sheet = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(sheet, hull, 1)
    # Paper is mostly paper: light strokes on a dark pad form a bright piece too, but its
    # hull is half dark pad.
    if float((smooth[sheet > 0] > level).mean()) < 0.6:
        return None
    ring = _disk(2)
    inner = (sheet > 0) & (cv2.erode(sheet, ring, borderType=cv2.BORDER_REPLICATE) == 0)
    outer = (cv2.dilate(sheet, ring) > 0) & (sheet == 0)
    if not inner.any() or not outer.any():
        return None
    step = _median(smooth[inner]) - _median(smooth[outer])
    if step < 0.3 * (light_mean - dark_mean):
        return None
    return sheet > 0


def _dark_ink(small: np.ndarray, sheet: np.ndarray | None, window: int) -> bool:
    """True when the ink is darker than its background (see the module docstring).

    Strokes are thin, so around every stroke the background is the local majority: a
    median over a window wider than the strokes is the background (a median keeps the hard
    edges of a shadow or of a desk, where a mean would smear them), and the ink is the
    sign of the strong departures from it.
    """
    if sheet is not None:
        return True
    if min(small.shape) < 64:
        # A small image is a tight crop (an MNIST-sized digit, an icon): the digit is large
        # against any window, and the border is the background.
        return _dark_ink_border(small)
    return _dark_ink_local(small, window)


def _dark_ink_local(small: np.ndarray, window: int) -> bool:
    # The window is wide, and a median that wide is costly: it runs on a half-size copy
    # (the background is smooth at that scale), brought back to size.
    h, w = small.shape
    half = cv2.resize(small, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    median = cv2.resize(
        cv2.medianBlur(half, _odd(window / 2)), (w, h), interpolation=cv2.INTER_NEAREST
    )
    residual = cv2.subtract(small, median, dtype=cv2.CV_16S)  # one pass, in 16 bits
    diffs = cv2.absdiff(residual[:, 1:], residual[:, :-1]).ravel()
    sigma = 1.4826 * _median(diffs) / math.sqrt(2.0)
    strong = max(4.0 * sigma, 0.08 * 255)
    # Integer residuals against integer bounds (r < -s is r < ceil(-s), r > s is r > floor(s)):
    # compared with the float itself, NumPy would convert every residual to float64.
    dark = float(-residual[residual < math.ceil(-strong)].sum())
    light = float(residual[residual > math.floor(strong)].sum())
    if dark or light:
        return dark >= light
    return _dark_ink_border(small)  # nothing stands out anywhere


def _dark_ink_border(small: np.ndarray) -> bool:
    """The border is the background; the ink departs furthest from it."""
    b = max(1, round(0.03 * min(small.shape)))
    border = np.concatenate(
        [small[:b].ravel(), small[-b:].ravel(), small[:, :b].ravel(), small[:, -b:].ravel()]
    )
    level = _median(border)
    return level - float(small.min()) >= float(small.max()) - level


# --------------------------------------------------------------------------- ink


@dataclass(frozen=True)
class _Ink:
    """How to turn gray levels into ink in [0, 1]: polarity, background, noise floor and the
    level of solid ink (relative darkening for dark ink, brightening for light ink)."""

    dark_ink: bool
    background: np.ndarray  # float32, the analysed image's size
    floor: float
    solid: float

    def response(self, gray: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Raw ink response of ``gray`` against ``background`` (same shapes, float32)."""
        if self.dark_ink:
            # Relative darkening: ink in a shadow is as dark, relative to the paper around it,
            # as ink in the light.
            r = background - gray
            # (OpenCV's maximum with a number is twice as fast as NumPy's. It differs only
            # where the background is NaN, and there the numerator is NaN already.)
            r /= cv2.max(background, 0.05)
            return r
        return gray - background

    def apply(self, gray: np.ndarray, background: np.ndarray) -> np.ndarray:
        return self.scale(self.response(gray, background))

    def scale(self, r: np.ndarray) -> np.ndarray:
        """A raw response -> ink in [0, 1], in place."""
        r -= self.floor
        r *= 1.0 / (self.solid - self.floor)
        return np.clip(r, 0.0, 1.0, out=r)


def _background(smooth: np.ndarray, small: np.ndarray, dark: bool, window: int) -> np.ndarray:
    """The background under the strokes: a closing for dark ink (an opening for light ink)
    with a square ``window``, never on the ink's side of the image itself."""
    op = cv2.MORPH_CLOSE if dark else cv2.MORPH_OPEN
    # To float in [0, 1] with a table: one pass instead of a conversion and a division.
    background = cv2.LUT(cv2.morphologyEx(smooth, op, _square(window)), _LEVELS)
    return (np.maximum if dark else np.minimum)(background, small, out=background)


# The float32 values of the 256 gray levels, v / 255 as NumPy divides (``_background``).
_LEVELS = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _stroke_width(mask: np.ndarray) -> float:
    """The typical width in pixels of the strokes in a binary mask: twice the median of the
    distance transform along its ridges (the strokes' centre lines)."""
    # Only the mask's bounding rectangle with a ring of background around it: the distance
    # to the nearest background pixel is the same there as in the whole image.
    crop = mask[_crop_box(mask, margin=1)]
    return _ridge_width(crop.view(np.uint8) if crop.dtype == bool else crop.astype(np.uint8))


def _ridge_width(crop: np.ndarray) -> float:
    """``_stroke_width`` of the mask's (uint8 0/1) crop with its ring of background."""
    if crop.all():
        # No background anywhere (ink that fills the image, as a fine dither's closes up):
        # OpenCV gives every pixel FLT_MAX, whose median overflows (to inf, or to a finite
        # 6.8e38 that a disk of that radius cannot be made of). The width is infinite.
        return math.inf
    dt = cv2.distanceTransform(crop, cv2.DIST_L2, 3)
    ridge = (dt > 0) & (dt >= cv2.dilate(dt, _square(3)))
    return 2.0 * _median(dt[ridge]) if ridge.any() else 0.0


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, tuple[slice, slice]]:
    """``cv2.connectedComponentsWithStats`` (8-connected) of a binary mask's bounding
    rectangle: (count with the background, labels of the rectangle, stats in the whole
    image's coordinates, the rectangle as slices).

    OpenCV's statistics cost a few nanoseconds for every pixel, background included; the
    ink of a digit on a clean page fills a small part of the image. They cost a third with
    16-bit labels, which always suffice for the images analysed here (fewer pieces than
    pixels).
    """
    box = _crop_box(mask)
    part = mask[box]  # OpenCV reads the rows of a view in place: no copy for masks of bytes
    part = part.view(np.uint8) if part.dtype in (np.bool_, np.uint8) else part.astype(np.uint8)
    ltype = cv2.CV_16U if part.size <= _U16_MAX else cv2.CV_32S
    n, labels, stats, _ = cv2.connectedComponentsWithStats(part, connectivity=8, ltype=ltype)
    stats[:, cv2.CC_STAT_LEFT] += box[1].start
    stats[:, cv2.CC_STAT_TOP] += box[0].start
    return n, labels, stats, box


def _largest_inner_index(stats: np.ndarray, h: int, w: int) -> int | None:
    """Which piece (0 for the first after the background) of a labelling's ``stats`` in an
    h x w image is the largest that does not touch the image's edge (the first of equals);
    None when every piece touches it. A handful of pieces is compared on Python lists, as in
    ``_keep_digit``; noise's hundreds with NumPy."""
    if len(stats) - 1 <= FEW_PIECES:
        best, best_area = None, 0
        for i, (x, y, pw, ph, area) in enumerate(stats[1:].tolist()):
            if x > 0 and y > 0 and x + pw < w and y + ph < h and area > best_area:
                best, best_area = i, area
        return best
    x0, y0 = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    x1, y1 = x0 + stats[1:, cv2.CC_STAT_WIDTH], y0 + stats[1:, cv2.CC_STAT_HEIGHT]
    inner = (x0 > 0) & (y0 > 0) & (x1 < w) & (y1 < h)
    if not inner.any():
        return None
    return int(np.argmax(np.where(inner, stats[1:, cv2.CC_STAT_AREA], 0)))


def _largest_inner(mask: np.ndarray) -> np.ndarray:
    """The largest connected piece of ``mask`` that does not touch the image's edge (the
    whole mask when every piece does): the digit, most likely, rather than a desk's grain."""
    _, labels, stats, box = _components(mask)
    h, w = mask.shape
    i = _largest_inner_index(stats, h, w)
    if i is None:
        return mask
    piece = np.zeros((h, w), dtype=bool)
    piece[box] = labels == 1 + i
    return piece


def _inner_stroke_width(mask: np.ndarray) -> float:
    """``_stroke_width(_largest_inner(mask))``, without a whole-image copy of the piece: its
    bounding rectangle is known from the labelling, so the crop that ``_stroke_width`` would
    cut around it (``_crop_box`` with a margin of 1) is cut from the labels directly."""
    _, labels, stats, box = _components(mask)
    h, w = mask.shape
    i = _largest_inner_index(stats, h, w)
    if i is None:
        return _stroke_width(mask)
    # ``_crop_box`` of the piece, from its rectangle (which the image's edge does not touch).
    px0, py0, pw, ph = stats[i + 1, :4].tolist()
    r0, r1 = (py0 - 1) // 2 * 2, min(h, py0 + ph + 1)
    c0, c1 = (px0 - 1) // 16 * 16, min(w, -(-(px0 + pw + 1) // 16) * 16)
    crop = np.zeros((r1 - r0, c1 - c0), np.uint8)
    # The piece lies where the crop and the labelled rectangle overlap.
    a0, a1 = max(r0, box[0].start), min(r1, box[0].stop)
    b0, b1 = max(c0, box[1].start), min(c1, box[1].stop)
    np.equal(
        labels[a0 - box[0].start : a1 - box[0].start, b0 - box[1].start : b1 - box[1].start],
        i + 1,
        out=crop[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0].view(bool),
    )
    return _ridge_width(crop)


def _measure_ink(
    small: np.ndarray, u8: np.ndarray, sheet: np.ndarray | None, window: int
) -> tuple[_Ink, np.ndarray]:
    """Polarity, background, noise and ink level of the analysed image (float32 in [0, 1];
    ``u8``: the same on 0..255), and its raw response against that background."""
    dark = _dark_ink(u8, sheet, window)
    # A 3x3 median first: a closing's max filter would otherwise lift the background onto
    # the peaks of the sensor noise.
    smooth = cv2.medianBlur(u8, 3)
    background = _background(smooth, small, dark, window)
    r = _Ink(dark, background, 0.0, 1.0).response(small, background)
    # A second, tighter background: a window a few strokes wide. What is wider than that
    # (the tip of a shadow, a streak of wood grain, a fold) joins the background instead of
    # passing for ink; a window as wide as the whole digit would keep all of that.
    strong = r > 0.7 * _percentile(r.ravel(), 99.5)
    width = _inner_stroke_width(strong)
    # Ink with no background anywhere has an infinite "width": no tighter window then.
    tight = _odd(max(3.0, 4.0 * width + 1)) if math.isfinite(width) else window
    if width > 0 and tight < window:
        background = _background(smooth, small, dark, tight)
    ink = _Ink(dark, background, 0.0, 1.0)
    r = ink.response(small, background)
    # Noise from differences of horizontal neighbours (immune to the slow variations that
    # are left), as a robust standard deviation.
    diffs = cv2.absdiff(r[:, 1:], r[:, :-1]).ravel()  # |a - b|, in one pass
    sigma = 1.4826 * _median(diffs) / math.sqrt(2.0)
    standing_out = r > max(5.0 * sigma, 0.5 * MIN_CONTRAST)
    if np.count_nonzero(standing_out) < 4:
        raise NoDigitError("no digit found: the image is blank")
    if sheet is not None and np.count_nonzero(standing_out & sheet) >= 20:
        standing_out &= sheet  # the writing's level, not the desk's grain
    solid = _percentile(r[standing_out], 90)
    if solid < MIN_CONTRAST or solid < MIN_SNR * sigma:
        raise NoDigitError(
            f"no digit found: nothing stands out from the background (contrast "
            f"{solid:.2f}, noise {sigma:.3f})"
        )
    # Ink is what stands above the noise floor, scaled so that solid ink is 1.
    return _Ink(dark, background, 3.0 * sigma, solid), r


def _lift_shade(ink: np.ndarray) -> np.ndarray:
    """Solid areas of weak "ink" are shade: their level becomes the background there.

    The background windows are a few strokes wide, so a shadow's narrow parts (the tip of
    a wedge where a hard edge meets a second one, a band cast by a pen lying across the
    page) pass for ink. Writing is made of strokes, which an opening with a disk wider
    than a stroke removes; what survives it is an area. An area darker than the paper,
    far lighter than the writing and flat (a blurred stroke is all slopes) is shade: its
    own level is subtracted inside it, which keeps the strokes that cross it (darker
    still) and clears the rest.
    """
    weak_full = (ink > WEAK_INK).view(np.uint8)
    # Everything happens within the ink's bounding rectangle (most photos: the digit's).
    rows, cols = _crop_box(weak_full, margin=2)
    sub, weak = ink[rows, cols], weak_full[rows, cols]
    # The width of the writing: its strong ink, with the gaps between the specks of
    # grainy pencil closed (measured on the specks alone, whole pencil strokes would pass
    # for areas; measured on all the ink, a band of shade would widen the strokes).
    strong = cv2.morphologyEx((sub > STRONG_INK).view(np.uint8), cv2.MORPH_CLOSE, _disk(1))
    width = _inner_stroke_width(strong.view(bool)) if strong.any() else 0.0
    if not 0 < width < math.inf:
        return ink
    areas = cv2.morphologyEx(weak, cv2.MORPH_OPEN, _disk(max(1, math.ceil(SHADE_RADIUS * width))))
    # Most writing leaves no area at all: then there is nothing to label. (16-bit labels, as
    # in ``_components``: the statistics cost a third.)
    if not cv2.countNonZero(areas):
        return ink
    ltype = cv2.CV_16U if areas.size <= _U16_MAX else cv2.CV_32S
    n, labels, stats, _ = cv2.connectedComponentsWithStats(areas, connectivity=8, ltype=ltype)
    shade = []
    for i in range(1, n):
        x, y, w, h, area = stats[i]
        region = labels[y : y + h, x : x + w] == i
        values = sub[y : y + h, x : x + w][region]
        level = _median(values)
        if level >= SHADE_LEVEL:
            if area > (3 * width) ** 2:
                # A large solid area as dark as the writing (a desk taken for ink, a
                # filled shape): the ink's scale is not the writing's, and what is
                # lighter than that area may well be the digit. Leave it all as it is.
                return ink
            continue  # a filled part of the writing (where a marker's strokes meet)
        at_edge = (
            x + cols.start == 0
            or y + rows.start == 0
            or x + cols.start + w == ink.shape[1]
            or y + rows.start + h == ink.shape[0]
        )
        if at_edge and area < (4 * width) ** 2:
            # A strip along the frame (a desk's edge, the rim of a shadow) is dropped
            # later as cut by the edge; lifted, what remains of it would not touch the
            # edge any more. Bands that cross the frame are far larger.
            continue
        q1, q3 = np.percentile(values, (25, 75))
        if q3 - q1 > SHADE_SPREAD * level:
            continue  # not flat: a blurred stroke's slopes (a low-resolution scan)
        shade.append((i, level))
    if not shade:
        return ink
    out = ink.copy()
    lifted = out[rows, cols]
    for i, level in shade:
        x, y, w, h, _ = stats[i]
        region = labels[y : y + h, x : x + w] == i
        # The shade's soft edge belongs to it too.
        pad = max(2, math.ceil(width))
        y0, y1, x0, x1 = max(0, y - pad), y + h + pad, max(0, x - pad), x + w + pad
        grown = np.zeros_like(lifted[y0:y1, x0:x1], dtype=np.uint8)
        grown[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = region
        grown = cv2.dilate(grown, _disk(pad)).astype(bool)
        patch = lifted[y0:y1, x0:x1]
        patch[grown] = np.clip((patch[grown] - level) / (1.0 - level), 0.0, 1.0)
    return out


def _ink_on_sheet(ink: np.ndarray, sheet: np.ndarray) -> bool:
    """Whether the writing lies on the sheet: a desk holds none, but the shaded side of a
    hard shadow (which looks like a desk beside a sheet) does. The largest piece of ink
    that the image's edge does not cut decides (a desk's grain is many small pieces)."""
    piece = _largest_inner(ink > STRONG_INK)
    return bool(piece.any()) and float(ink[piece & ~sheet].sum()) <= 0.1 * float(ink[piece].sum())


# --------------------------------------------------------------------------- lines


def _remove_lines(
    mask: np.ndarray, faint: np.ndarray, sheet: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(the mask without long straight lines, the mask of what was removed, or None when
    nothing was: most pages have no lines, and an empty mask would cost a full pass).

    A line to remove spans most of the page (``LINE_SPAN`` of the sheet's or the image's
    extent in its direction) and belongs to a family of parallel lines, or stands across
    one (a margin line). Strokes that cross a line lose the
    line's width; a closing across the line's direction joins them again.
    """
    h, w = mask.shape
    if sheet is not None:
        _, _, span_w, span_h = cv2.boundingRect(sheet.view(np.uint8))
    else:
        span_w, span_h = w, h
    shortest = LINE_FAMILY_SPAN * min(span_w, span_h)
    # Printed lines are thin: the transform looks only at ink that a 3x3 opening removes,
    # which leaves out the bulk of thick strokes (a marker, a drawing pad) and most of the
    # transform's work with them.
    # (A view, not a copy. The opening is within the mask, so "in the mask and not in its
    # opening" is one subtraction.)
    faint_u8 = faint.view(np.uint8)
    thin = cv2.subtract(faint_u8, cv2.morphologyEx(faint_u8, cv2.MORPH_OPEN, _square(3)))
    segments = cv2.HoughLinesP(
        thin,
        1,
        np.pi / 180,
        threshold=max(10, int(0.3 * shortest)),
        minLineLength=shortest,
        maxLineGap=max(2, int(0.05 * max(h, w))),
    )
    if segments is None:
        return mask, None
    # The longest few are enough to recognise families (the pairing below is quadratic,
    # and the thick strokes of a drawing give many short segments).
    found = segments.reshape(-1, 4)
    lengths = np.hypot(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1])
    found = found[np.argsort(-lengths, kind="stable")[:MAX_SEGMENTS]].tolist()
    angles = [math.atan2(y1 - y0, x1 - x0) % math.pi for x0, y0, x1, y1 in found]
    offsets = [
        -math.sin(a) * (x0 + x1) / 2 + math.cos(a) * (y0 + y1) / 2
        for a, (x0, y0, x1, y1) in zip(angles, found, strict=True)
    ]

    def parallel(a: float, b: float, tolerance: float = math.radians(4)) -> bool:
        d = abs(a - b) % math.pi
        return min(d, math.pi - d) <= tolerance

    def spans(i: int, fraction: float) -> bool:
        x0, y0, x1, y1 = found[i]
        horizontal = abs(x1 - x0) >= abs(y1 - y0)
        extent = abs(x1 - x0) if horizontal else abs(y1 - y0)
        return extent >= fraction * (span_w if horizontal else span_h)

    # Paper's lines come in families: ruled lines are parallel and evenly spaced, squared
    # paper has two families, and a margin line stands across the rules. A family of three
    # or more lines is paper (a digit has no three long parallel strokes); two parallel
    # lines count when both cross most of the page; a lone long stroke (a 1, the stem of a
    # 7) is kept.
    twins = [
        {
            round(offsets[j] / 4)
            for j in range(len(found))
            if parallel(angles[i], angles[j]) and abs(offsets[i] - offsets[j]) > 4
        }
        for i in range(len(found))
    ]
    ruled = [
        i for i in range(len(found)) if len(twins[i]) >= 2 or (twins[i] and spans(i, LINE_SPAN))
    ]
    margins = [
        i
        for i in range(len(found))
        if i not in ruled
        and spans(i, LINE_SPAN)
        and any(parallel(angles[i] + math.pi / 2, angles[j], math.radians(6)) for j in ruled)
    ]
    if not ruled and not margins:
        return mask, None
    # The lines' pixels: those on a long straight run of ink in a line's direction (an
    # opening with a line-shaped kernel), unless the ink is also thick across the line
    # there (an opening with a short kernel across it): a stroke crossing a line, or
    # running over it, is thicker than the line, and keeps its pixels.
    u8 = mask.astype(np.uint8)
    removed = np.zeros((h, w), dtype=bool)
    length = _odd(0.25 * min(span_w, span_h))
    for angle in _distinct([angles[i] for i in ruled + margins]):
        # A closing along the line first: a faint line breaks into dashes at the threshold.
        joined = cv2.morphologyEx(faint_u8, cv2.MORPH_CLOSE, _line_kernel(angle, 9))
        along = (cv2.morphologyEx(joined, cv2.MORPH_OPEN, _line_kernel(angle, length)) > 0) & mask
        across = cv2.morphologyEx(u8, cv2.MORPH_OPEN, _line_kernel(angle + math.pi / 2, LINE_MEND))
        removed |= along & (across == 0)
    return mask & ~removed, removed


def _line_kernel(angle: float, length: int) -> np.ndarray:
    """A structuring element: a one-pixel line of ``length`` through the centre at ``angle``."""
    kernel = np.zeros((length, length), np.uint8)
    c, r = length // 2, (length - 1) / 2
    dx, dy = math.cos(angle) * r, math.sin(angle) * r
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1)
    return kernel


def _distinct(angles: list[float], tolerance: float = math.radians(3)) -> list[float]:
    """One representative of each group of (nearly) equal line angles."""
    out: list[float] = []
    for a in sorted(angles):
        if not any(
            min(abs(a - b) % math.pi, math.pi - abs(a - b) % math.pi) <= tolerance for b in out
        ):
            out.append(a)
    return out


# --------------------------------------------------------------------------- the digit


def _keep_digit(
    ink: np.ndarray, weak: np.ndarray, sheet: np.ndarray | None
) -> tuple[np.ndarray, int]:
    """(where the digit is, as a mask of ``ink``'s shape; how many separate substantial
    marks it holds): the main connected piece of ink and the pieces that belong to it,
    without specks, neighbours cut by the image's edge, or marks off the sheet.

    Pieces are the connected components of the weak ink that hold some strong ink
    (hysteresis, as Canny's edges): the faint stretch of a thin or fast stroke joins the
    stroke instead of breaking it into pieces, and faint smudges on their own are dropped.
    Gaps of a pixel or two (a pen skipping on the paper) join too.
    """
    h, w = ink.shape
    joined = cv2.dilate(weak.view(np.uint8), _disk(1))  # (views, not copies, for OpenCV)
    # Everything below runs on the bounding rectangle of the joined ink (``_components``):
    # except at the image's edge, a ring of pixels without weak ink lines it, so the
    # distance transform of the weak ink is the same there as on the whole image too.
    n, labels, stats, box = _components(joined)
    weak = weak[box]
    # The pieces' sums run over the weak pixels alone (the only ones with a piece, in the
    # same order as over the whole image, so the sums are the same), a few percent of all.
    at = np.flatnonzero(weak)
    piece = labels.ravel()[at]
    at_ink = ink[box].ravel()[at]
    masses = np.bincount(piece, weights=at_ink, minlength=n)[1:]
    has_strong = np.zeros(n, dtype=bool)
    has_strong[piece[at_ink >= STRONG_INK]] = True
    strong = has_strong[1:].tolist()
    if n < 2 or not has_strong[1:].any():
        raise NoDigitError("no digit found: only faint marks")
    # Sensor noise makes hundreds of tiny pieces: everything below is vectorised over them,
    # and the Python loops further down see only the few that could matter. Most images
    # have a handful of pieces, though, for which each NumPy call costs more than the work
    # it does: up to FEW_PIECES, the same decisions are taken on Python lists (in the same
    # float64 arithmetic, so they are the same decisions).
    few = n - 1 <= FEW_PIECES
    if few:
        rows = stats[1:].tolist()  # [left, top, width, height, area] of each piece
        x0, y0 = [r[0] for r in rows], [r[1] for r in rows]
        x1 = [r[0] + r[2] - 1 for r in rows]
        y1 = [r[1] + r[3] - 1 for r in rows]
        area = [r[4] for r in rows]
        sides = [
            (b == 0) + (d == h - 1) + (a == 0) + (c == w - 1)
            for a, b, c, d in zip(x0, y0, x1, y1, strict=True)
        ]
        touches = [k > 0 for k in sides]
    else:
        x0 = stats[1:, cv2.CC_STAT_LEFT]
        y0 = stats[1:, cv2.CC_STAT_TOP]
        x1 = x0 + stats[1:, cv2.CC_STAT_WIDTH] - 1
        y1 = y0 + stats[1:, cv2.CC_STAT_HEIGHT] - 1
        sides = (y0 == 0).astype(int) + (y1 == h - 1) + (x0 == 0) + (x1 == w - 1)
        touches = (sides > 0).tolist()
        area = stats[1:, cv2.CC_STAT_AREA]
    if sheet is not None:
        # Marks off the sheet (slivers of desk, its grain, a pen beside the sheet) are not
        # the digit, whatever their size; a digit may run into a shadow that looks like desk.
        on_sheet = np.bincount(piece, weights=sheet[box].ravel()[at], minlength=n)[1:]
        if few:
            off = [o < 0.2 * a for o, a in zip(on_sheet.tolist(), area, strict=True)]
        else:
            off = on_sheet < 0.2 * area
    else:
        off = [False] * (n - 1) if few else np.zeros(n - 1, dtype=bool)
    # A solid piece against two edges of the image, or across it, is the edge of a shadow
    # or of the page (a lit corner, a darker band), never a digit.
    at_dt = cv2.distanceTransform(weak.view(np.uint8), cv2.DIST_L2, 3).ravel()[at]
    deep = np.bincount(piece, weights=at_dt >= 3, minlength=n)[1:]
    # Where a person would look: the biggest piece on the sheet, preferring pieces that are
    # whole (not cut by the image's edge: a neighbour in a crop of a number, the edge of a
    # page) when one of comparable mass exists.
    if few:
        edge_of_light = [
            k >= 2 and r[4] / (r[2] * r[3]) >= 0.4 and d >= 0.5 * r[4]
            for k, r, d in zip(sides, rows, deep.tolist(), strict=True)
        ]
        weights = masses.tolist()
        # (A stable sort by decreasing mass, as the stable argsort of the negated masses.)
        order = sorted(range(n - 1), key=weights.__getitem__, reverse=True)
        ranked_list = [i for i in order if strong[i] and not edge_of_light[i]]
        if not ranked_list:
            raise NoDigitError("no digit found: only the edge of a shadow or of the page")
        on = [i for i in ranked_list if not off[i]] or ranked_list
    else:
        fill = area / (stats[1:, cv2.CC_STAT_WIDTH] * stats[1:, cv2.CC_STAT_HEIGHT])
        edge_of_light = (sides >= 2) & (fill >= 0.4) & (deep >= 0.5 * area)
        ranked = np.argsort(-masses, kind="stable")
        ranked = ranked[(has_strong[1:] & ~edge_of_light)[ranked]]
        if not ranked.size:
            raise NoDigitError("no digit found: only the edge of a shadow or of the page")
        on = ranked[~off[ranked]].tolist() or ranked.tolist()
    main = on[0]
    whole = [i for i in on if not touches[i]]
    if whole and touches[main] and masses[whole[0]] >= 0.2 * masses[main]:
        main = whole[0]
    # Pieces that are not strokes (the solid tip of a shadow, a blot) join no digit: a
    # stroke is nowhere much wider than the main piece's strokes.
    main_dt = at_dt[piece == main + 1]
    half_width = _median(main_dt[main_dt >= _percentile(main_dt, 50)])
    thick = np.bincount(piece, weights=at_dt > 2.0 * half_width + 1.5, minlength=n)[1:]
    # Only pieces that could join at all (1% of the main piece's mass, on the sheet, stroke
    # like): sensor noise makes hundreds of tiny pieces, and the growth below is quadratic.
    # Python floats and ints for the loop (NumPy scalars are slow to index and compare).
    if few:
        floor = 0.01 * weights[main]
        candidates = [
            i
            for i, (m, t) in enumerate(zip(weights, thick.tolist(), strict=True))
            if m >= floor and not off[i] and t <= 0.1 * area[i]
        ]
        boxes = {i: (y0[i], y1[i], x0[i], x1[i]) for i in [main, *candidates]}
        masses = weights
    else:
        stroke_like = thick <= 0.1 * area
        candidates = np.flatnonzero((masses >= 0.01 * masses[main]) & ~off & stroke_like)
        candidates = candidates.tolist()
        boxes = {i: (int(y0[i]), int(y1[i]), int(x0[i]), int(x1[i])) for i in [main, *candidates]}
        masses = masses.tolist()
    chosen = {main}
    by0, by1, bx0, bx1 = boxes[main]
    grew = True
    while grew:
        grew = False
        size = max(by1 - by0, bx1 - bx0) + 1
        total = sum(masses[i] for i in chosen)
        for i in candidates:
            if i in chosen:
                continue
            a0, a1, b0, b1 = boxes[i]
            gap = max(a0 - by1, by0 - a1, b0 - bx1, bx0 - b1, 0)
            inside = a0 >= by0 and a1 <= by1 and b0 >= bx0 and b1 <= bx1
            # A piece beside the digit (no overlap in columns) is a neighbour unless it
            # almost touches; pieces above or below (the bar of a 5, a broken 4) belong.
            columns_overlap = b0 <= bx1 and b1 >= bx0
            cut = touches[i] and not touches[main]
            near = (
                gap <= (0.3 if columns_overlap else 0.08) * size
                and masses[i] >= 0.02 * total
                and not cut
            )
            # Faint pieces (no strong ink) join only when close: a faint stretch of a stroke.
            substantial = (
                gap <= size
                and masses[i] >= 0.1 * total
                and not cut
                and columns_overlap
                and strong[i]
            )
            side_by_side = (
                not columns_overlap
                and not cut
                and gap <= 0.6 * size
                and masses[i] >= 0.3 * total
                and strong[i]
            )
            if (inside and masses[i] >= 0.01 * total) or near or substantial or side_by_side:
                chosen.add(i)
                by0, by1, bx0, bx1 = min(by0, a0), max(by1, a1), min(bx0, b0), max(bx1, b1)
                grew = True
    # Marks: substantial pieces side by side (a stroke broken by a ruled line, or the bar
    # of a 5 above its body, is one mark; two digits next to each other are two).
    total = sum(masses[i] for i in chosen)
    spans = sorted((boxes[i][2], boxes[i][3]) for i in chosen if masses[i] >= 0.15 * total)
    marks, right = 0, -1
    for left, end in spans:
        if left > right:
            marks += 1
        right = max(right, end)
    kept = np.zeros((h, w), dtype=bool)
    inside = kept[box]  # a view: written in place
    if len(chosen) == 1:
        # One piece, as most digits are: a comparison instead of a look-up of every label.
        np.equal(labels, main + 1, out=inside)
    else:
        lut = np.zeros(n, dtype=bool)
        lut[[i + 1 for i in chosen]] = True
        inside[...] = lut[labels]
    inside &= weak  # the pieces are the weak ink itself; the dilation only grouped them
    return kept, marks


# --------------------------------------------------------------------------- the MNIST look


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
            if thin:
                big = cv2.dilate(np.pad(big, radius), _disk(radius))
            else:
                big = cv2.erode(big, _disk(radius))
            bx, by, bw, bh = cv2.boundingRect((big > 0.05).view(np.uint8))
            if bw:
                big = big[by : by + bh, bx : bx + bw]
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
    # The centre of mass in NumPy, not cv2.moments: OpenCV reads an array of shape (N, 2)
    # (a thin "1" fitted into 20x2) as N points of a contour, whose "mass" is its area, 0.
    total = float(small.sum())
    if total <= 0:
        raise NoDigitError("no digit found: the image is blank")
    cy = float(small.sum(axis=1) @ np.arange(h, dtype=np.float32)) / total
    cx = float(small.sum(axis=0) @ np.arange(w, dtype=np.float32)) / total
    # Integer shifts, as MNIST was made (no extra blur); clamped so nothing is cut off.
    top = min(max(round(MNIST_CENTRE[0] - cy), 0), FIELD - h)
    left = min(max(round(MNIST_CENTRE[1] - cx), 0), FIELD - w)
    out = np.zeros((FIELD, FIELD), dtype=np.float32)
    out[top : top + h, left : left + w] = small
    return out


def frame(ink: np.ndarray) -> np.ndarray:
    """Ink intensities (H, W) in [0, 1], white on black and already clean -> the float
    (28, 28) MNIST field: cropped to the ink, strokes brought to MNIST's width, the longest
    side fitted into 20 pixels, the centre of mass at the field's centre.

    ``locate`` ends here; so do the synthetic non-digits that training shows the network
    (``mnist_cnn.outliers``), so that both look exactly as the model's inputs do.
    """
    x, y, w, h = cv2.boundingRect((ink > 0.05).view(np.uint8))
    if w == 0:
        raise NoDigitError("no digit found: the image is blank")
    return _place(_fit_box(ink[y : y + h, x : x + w]))


@dataclass(frozen=True)
class Cleaned:
    """A grayscale image's ink, cleaned: background, desk, shade and ruled lines taken out.

    The analysis runs on ``ink`` (a half-size copy of the working image when ``factor`` is
    2); ``work_ink`` and ``work_mask`` bring a box of it back to the working resolution,
    where the model's input is drawn. Shared by ``locate`` (one digit) and
    ``mnist_cnn.segment`` (a number).
    """

    shape: tuple[int, int]  # (H, W) of the input
    gray: np.ndarray  # float32 (h, w): the working copy, longest side at most the work side
    scale: float  # working pixels per pixel of the input (1.0: the input itself)
    factor: int  # working pixels per analysed pixel: 2, or 1 for small images
    ink: np.ndarray  # float32 (h // factor, w // factor) in [0, 1], white ink on black
    weak: np.ndarray  # bool, ink's shape: ink above WEAK_INK, without the ruled lines
    lines: np.ndarray | None  # bool, ink's shape: the ruled lines removed (None: none)
    sheet: np.ndarray | None  # bool, ink's shape: the sheet of paper on a desk (None: none)
    dark_ink: bool  # the polarity found: dark ink on a light background
    levels: _Ink = field(repr=False)  # how gray levels become ink (background, floor, solid)

    def work_ink(self, rows: slice, cols: slice) -> np.ndarray:
        """The ink (float32 in [0, 1]) of the working image over ``rows`` x ``cols``, against
        the background enlarged to the working resolution over that box alone."""
        h, w = self.gray.shape
        if self.factor > 1:
            background = _enlarged(self.levels.background, h, w, rows, cols)
        else:
            background = self.levels.background[rows, cols]
        return self.levels.apply(self.gray[rows, cols], background)

    def work_mask(self, mask: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """A mask of the analysed image's shape, at working resolution over ``rows`` x
        ``cols`` (nearest neighbour, as ``cv2.resize`` would enlarge it)."""
        if self.factor == 1:
            return mask[rows, cols]
        (h, w), (sh, sw) = self.gray.shape, self.ink.shape
        return mask[_nearest(h, sh, rows.start, rows.stop)][
            :, _nearest(w, sw, cols.start, cols.stop)
        ]


def clean(gray: np.ndarray, work_side: int = WORK_SIDE) -> Cleaned:
    """The cleaned ink of a grayscale float (H, W) image in [0, 1] (steps 1 to 4 of the
    module's docstring), worked on at most ``work_side`` pixels on its longest side.

    Raises ``NoDigitError`` when nothing stands out from the background, and
    ``UnsupportedImageError`` for an array that is not a 2-D image.
    """
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise UnsupportedImageError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    gray = np.ascontiguousarray(gray)  # for OpenCV (a copy only of a strided view)
    h0, w0 = gray.shape
    scale = 1.0
    if max(h0, w0) > work_side:
        scale = work_side / max(h0, w0)
        gray = _resize(gray, max(1, round(h0 * scale)), max(1, round(w0 * scale)))
    # One pass for both extremes (exact: float32 values, subtracted in float32 as before).
    lowest, highest, _, _ = cv2.minMaxLoc(gray)
    if min(gray.shape) < 2 or np.float32(highest) - np.float32(lowest) < MIN_CONTRAST:
        raise NoDigitError("no digit found: the image is blank")
    h, w = gray.shape
    # The analysis runs on a half-size copy of larger images: strokes are still several
    # pixels wide there, sensor noise is halved, and it costs a quarter. Only the digit's
    # box is then processed at full working resolution.
    f = 2 if min(h, w) >= 64 else 1
    small = _resize(gray, max(1, h // f), max(1, w // f)) if f > 1 else gray
    sh, sw = small.shape
    window = _odd(BACKGROUND_WINDOW * min(sh, sw))
    # (Values outside [0, 1], which no decoded image holds, keep NumPy's conversion.)
    in_range = lowest >= 0.0 and highest <= 1.0
    u8 = _to_u8(small) if in_range else np.round(small * 255).astype(np.uint8)
    sheet = _find_sheet(u8) if f > 1 else None
    levels, response = _measure_ink(small, u8, sheet, window)
    ink_small = levels.scale(response)
    if sheet is not None and not _ink_on_sheet(ink_small, sheet):
        sheet = None  # the "sheet" was the lit side of a shadow: the ink lies in its shade
    if sheet is not None:
        # Only what is on the sheet, away from its edge (where paper meets desk in a line).
        margin = _disk(max(1, round(0.015 * min(sh, sw))))
        ink_small *= cv2.erode(sheet.astype(np.uint8), margin, borderType=cv2.BORDER_REPLICATE)
    if levels.dark_ink and f > 1:
        ink_small = _lift_shade(ink_small)
    weak = ink_small > WEAK_INK
    lines = None  # a tight crop (an MNIST digit) has no ruled paper to remove
    if f > 1:
        weak, lines = _remove_lines(weak, ink_small > FAINT_INK, sheet)
    return Cleaned((h0, w0), gray, scale, f, ink_small, weak, lines, sheet, levels.dark_ink, levels)


def locate(gray: np.ndarray, stages: dict[str, np.ndarray] | None = None) -> Located:
    """Find the digit in a grayscale float (H, W) image in [0, 1] and make the model input.

    ``stages``, when given, receives the intermediate images (float, in [0, 1]; ink white on
    black after the first) under the names of ``STAGES``, for ``mnist-cnn explain`` and the
    page's "look inside"; without it nothing extra is computed.

    Raises ``NoDigitError`` when the image is blank or holds nothing digit-sized, and
    ``UnsupportedImageError`` for an array that is not a 2-D image.
    """
    cleaned = clean(gray)
    gray, scale, f = cleaned.gray, cleaned.scale, cleaned.factor
    ink_small, weak, lines, sheet = cleaned.ink, cleaned.weak, cleaned.lines, cleaned.sheet
    h0, w0 = cleaned.shape
    h, w = gray.shape
    sh, sw = ink_small.shape
    if stages is not None:
        stages["grayscale"] = gray
    keep, marks = _keep_digit(ink_small, weak, sheet)
    if stages is not None:
        stages["cleaned"] = ink_small if lines is None else np.where(lines, 0.0, ink_small)
    # Bounding rectangles come from OpenCV: np.nonzero lists every pixel only for the
    # extremes to be taken.
    _, _, kw, kh = cv2.boundingRect(keep.view(np.uint8))
    if max(kw, kh) < max(MIN_EXTENT_PX, MIN_EXTENT * max(sh, sw)):
        raise NoDigitError("no digit found: the only marks are too small to be a digit")
    # The faint anti-aliased rim of each stroke belongs to it; the lines do not.
    kept = cv2.dilate(keep.view(np.uint8), _square(3))
    if lines is not None:
        kept[lines] = 0
    if stages is not None:
        stages["digit"] = stages["cleaned"] * kept
    kx, ky, kw, kh = cv2.boundingRect(kept)
    # The box at full working resolution, one analysed pixel wider on each side.
    r0, r1 = max(0, (ky - 1) * f), min(h, (ky + kh + 1) * f)
    c0, c1 = max(0, (kx - 1) * f), min(w, (kx + kw + 1) * f)
    # The background and the mask at full resolution over the box alone.
    ink = cleaned.work_ink(slice(r0, r1), slice(c0, c1))
    ink *= cleaned.work_mask(kept, slice(r0, r1), slice(c0, c1))
    x, y, iw, ih = cv2.boundingRect((ink > 0.05).view(np.uint8))
    if iw == 0:
        raise NoDigitError("no digit found: the image is blank")
    fitted = _fit_box(ink[y : y + ih, x : x + iw])
    field = _place(fitted)  # ``frame``, its rectangle known
    if stages is not None:
        stages.update(cropped=ink[y : y + ih, x : x + iw], fitted=fitted, centred=field)
    box = (
        int((c0 + x) / scale),
        int((r0 + y) / scale),
        min(w0, math.ceil((c0 + x + iw) / scale)),
        min(h0, math.ceil((r0 + y + ih) / scale)),
    )
    return Located(_to_u8(field), box, marks, cleaned.dark_ink)


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Grayscale float (H, W) in [0, 1] -> uint8 (28, 28) as MNIST: white digit on black,
    longest side fitted into 20x20 keeping the aspect ratio, centred by centre of mass.

    Raises ``NoDigitError`` when the image is blank or holds nothing digit-sized.
    """
    return locate(gray).image
