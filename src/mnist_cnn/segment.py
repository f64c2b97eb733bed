"""A written number -> its digits, left to right, each drawn as the model's 28x28 input.

    found = segment(gray, score)    # score: uint8 (N, 28, 28) inputs -> (N,) "one digit" scores
    [d.image for d in found.digits]  # each normalised exactly as a single digit (locate.frame)

The ink is ``locate.clean``'s: background, desk, shade and ruled lines taken out, as for a
single digit. Then:

1. Pieces: connected groups of strokes (hysteresis, as ``locate``: the weak ink, joined
   across gaps of a pixel, counts where some of it is strong), without marks off the sheet
   or the solid edge of a shadow. The line's digit height ``H`` is the median height of
   the substantial pieces.
2. Specks and stray dots (a full stop, a dot between digits or over nothing, dust) are
   dropped: pieces smaller than ``SPECK`` of ``H`` that do not almost touch a digit.
3. Pieces that share most of their columns are one digit: the detached top bar of a 5,
   a 4 or a 0 broken in two, the loops of an 8 drawn apart.
4. A group wider than a digit can be (``SPLIT_FROM`` of ``H`` and more) may be two or more
   touching (or overlapping, or merged) digits. Candidate cuts are the ways of dealing its
   pieces out left and right, and seams: paths from top to bottom through the least ink,
   within a band around each candidate column, so that slanted and slightly overlapping
   neighbours part along their gap. ``score`` (the model, passed in by
   ``mnist_cnn.predict``: this module does not know it) reads both halves of every cut in
   one batch; the cut whose halves are most confidently digits wins, and is taken when it
   beats reading the group as one digit by a margin that shrinks as the group widens.
   Halves are cut again while they are still too wide.
5. Each digit's ink at full working resolution goes through ``locate.frame``: cropped,
   strokes brought to MNIST's width, the longest side fitted into 20 pixels (a 1 keeps
   its aspect ratio), centred by mass.

Pure NumPy and OpenCV, as ``locate``; the thresholds were tuned on numbers built from
MNIST *validation* digits (``benchmarks/numbers.py --split validation``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from mnist_cnn.decode import NoDigitError
from mnist_cnn.locate import STRONG_INK, Cleaned, clean, frame, stroke_width

# Numbers are wide: the working copy keeps up to this many pixels on its longest side (a
# 4-digit number across a 1280x400 photo keeps digits ~100 pixels tall), twice the single
# digit's ``locate.WORK_SIDE``.
NUMBER_WORK_SIDE = 640
# The most digits a reading holds (a single line: a phone number, a year, an amount).
MAX_DIGITS = 12
# More pieces than this is not a number (noise, hatching): the cut search is bounded.
MAX_PIECES = 64

# Sizes as fractions of the line's digit height H.
SPECK = 0.3  # a piece whose longest side is below this is a speck or a dot ...
SPECK_TOUCH = 0.12  # ... unless it is this close to a digit (a pen skipping)
SPECK_MASS = 0.15  # (and light: below this share of a typical digit's ink)
SUBSTANTIAL = 0.15  # pieces with this share of the heaviest piece's ink set H
# Two pieces are one digit when the narrower has this share of its columns over the other.
SHARED_COLUMNS = 0.5
# Groups narrower than this (times H) are one digit; wider ones may be cut.
SPLIT_FROM = 0.62
# The width's own say, as log-odds of "two digits" against "one digit" added to the cut's
# score: SPLIT_SLOPE per digit height of width beyond SPLIT_EVEN, where a group is as
# likely one wide digit (a 0, a 2) as two narrow ones (a 1 beside anything). The model
# alone cannot decide: squeezed into one 20x20 box, two touching digits often read
# confidently as one.
SPLIT_EVEN = 1.2
SPLIT_SLOPE = 1.0
# The log-score a cut loses for each stroke it crosses.
CROSSING_COST = 1.0
# Weights of the whole group's log score, and of the weaker half's: a cut must read as two
# digits clearly better than the group reads as one, and neither half may be a sliver.
WHOLE_WEIGHT = 2.0
WEAKER_HALF_WEIGHT = 2.0
# (These five were fitted on numbers of MNIST validation digits, photos and pads: 1,116
# groups, single digits weighted three times as much as touching pairs, since most numbers
# are written with their digits apart. There, 99.9% of single digits stayed whole and 58%
# of touching pairs were parted right.)
# A cut is doubtful when it wins by less than this (log-score), or when a half scores less.
DOUBTFUL_MARGIN = 0.5
DOUBTFUL_HALF = 0.5
# Seams: candidate columns every H * SEAM_STEP, each seam within +-H * SEAM_BAND of its
# column; a half is at least H * MIN_HALF wide (a 1 is narrow).
SEAM_STEP = 0.08
SEAM_BAND = 0.15
MIN_HALF = 0.12
SEAM_TURN = 0.05  # the cost of a diagonal step, against ink in [0, 1]
MAX_SEAMS = 10
MAX_DEPTH = 4  # cuts within cuts (a group of up to 16 touching digits)

# A digit's score: uint8 (N, 28, 28) model inputs -> (N,) how much each looks like one
# digit, in (0, 1] (the model's top probability).
Score = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Digit:
    """One digit of a number: its model input and where it is."""

    image: np.ndarray  # uint8 (28, 28), white on black, MNIST's geometry (``locate.frame``)
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the input's pixels, end exclusive
    cut: bool  # parted from a touching neighbour


@dataclass(frozen=True)
class Segmentation:
    """The digits found, left to right, and why the segmentation may be wrong."""

    digits: tuple[Digit, ...]
    doubts: tuple[str, ...]  # sentences for people; empty when nothing was doubtful
    dark_ink: bool
    height: float  # the line's digit height, in the input's pixels


@dataclass
class _Part:
    """A candidate digit while segmenting: a mask over the working-resolution box."""

    mask: np.ndarray  # bool, the box's shape (the ink box of all the digits)
    cut: bool = False

    def extent(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the mask, end exclusive (all zero when empty)."""
        x, y, w, h = cv2.boundingRect(self.mask.view(np.uint8))
        return x, y, x + w, y + h


def to_input(ink: np.ndarray) -> np.ndarray:
    """Clean ink (float, white on black) -> the uint8 (28, 28) model input, as ``locate``
    makes it (``frame``, then ``locate._to_u8``'s rounding). Raises ``NoDigitError``."""
    return cv2.convertScaleAbs(frame(ink), alpha=255.0)


def segment(gray: np.ndarray, score: Score, work_side: int = NUMBER_WORK_SIDE) -> Segmentation:
    """The digits of the number written in a grayscale float (H, W) image in [0, 1].

    ``score`` reads candidate digits (see ``Score``); it decides between cuts of touching
    digits. Raises ``NoDigitError`` when nothing digit-sized is written, and
    ``UnsupportedImageError`` for an array that is not a 2-D image.
    """
    cleaned = clean(gray, work_side)
    pieces = _pieces(cleaned)
    if not pieces.count:
        raise NoDigitError("no digit found: only faint marks")
    doubts: list[str] = []
    height = pieces.line_height()
    groups, dropped = pieces.groups(height)
    if not groups:
        raise NoDigitError("no digit found: the only marks are too small to be digits")
    if dropped:
        doubts.append("Marks too small to be digits were left out.")
    # Masks at analysis resolution -> working resolution, within the box of all the digits.
    f = cleaned.factor
    labels = pieces.labels
    kept = np.isin(labels, [i for g in groups for i in g]) & cleaned.weak
    kx, ky, kw, kh = cv2.boundingRect(cv2.dilate(kept.view(np.uint8), _SQUARE3))
    h, w = cleaned.gray.shape
    rows = slice(max(0, (ky - 1) * f), min(h, (ky + kh + 1) * f))
    cols = slice(max(0, (kx - 1) * f), min(w, (kx + kw + 1) * f))
    ink = cleaned.work_ink(rows, cols)
    parts = []
    for g in groups:
        small = np.isin(labels, g) & cleaned.weak
        # The faint anti-aliased rim of each stroke belongs to it; the lines do not (as
        # in ``locate``).
        small = cv2.dilate(small.view(np.uint8), _SQUARE3)
        if cleaned.lines is not None:
            small[cleaned.lines] = 0
        parts.append(_Part(cleaned.work_mask(small, rows, cols).astype(bool)))
    # Working-resolution sizes from here on.
    height_w = height * f
    cutter = _Cutter(ink, score, height_w)
    digits: list[_Part] = []
    parts.sort(key=lambda p: _centre_x(p.mask))
    # Every group read as one digit in one batch (one forward pass instead of one a group).
    firsts = [cutter.input_of(p.mask) for p in parts]
    wholes = score(np.stack([_BLANK if im is None else im for im in firsts]))
    for part, first, whole in zip(parts, firsts, wholes, strict=True):
        digits.extend(cutter.split(part, 0, None if first is None else (first, float(whole))))
    doubts.extend(dict.fromkeys(cutter.doubts))  # each sentence once, in order
    digits.sort(key=lambda p: _centre_x(p.mask))
    if _lines_of(digits) > 1:
        doubts.append("The digits do not stand on one line.")
    if len(digits) > MAX_DIGITS:
        doubts.append(f"More than {MAX_DIGITS} digits: this reads a single number.")
    out = []
    scale = cleaned.scale
    h0, w0 = cleaned.shape
    for part in digits:
        x0, y0, x1, y1 = part.extent()
        crop = ink[y0:y1, x0:x1] * part.mask[y0:y1, x0:x1]
        try:
            image = to_input(crop)
        except NoDigitError:
            continue  # nothing above the faint level: no digit there
        box = (
            int((cols.start + x0) / scale),
            int((rows.start + y0) / scale),
            min(w0, math.ceil((cols.start + x1) / scale)),
            min(h0, math.ceil((rows.start + y1) / scale)),
        )
        out.append(Digit(image, box, part.cut))
    if not out:
        raise NoDigitError("no digit found: the image is blank")
    return Segmentation(tuple(out), tuple(doubts), cleaned.dark_ink, height * f / scale)


_SQUARE3 = np.ones((3, 3), np.uint8)
_DISK1 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


def _centre_x(mask: np.ndarray) -> float:
    """The mean column of a mask's pixels (NumPy, not ``cv2.moments``, which reads an
    array of shape (N, 2) as the points of a contour)."""
    columns = np.count_nonzero(mask, axis=0)
    total = int(columns.sum())
    return float(columns @ np.arange(mask.shape[1])) / total if total else 0.0


def _lines_of(parts: list[_Part]) -> int:
    """How many lines of writing the parts form: parts whose rows do not overlap the rows
    of the tallest part's line start another (a rough count: 1 or more)."""
    spans = [p.extent() for p in parts]
    if not spans:
        return 0
    _, y0, _, y1 = max(spans, key=lambda s: s[3] - s[1])
    return 1 + int(any(b1 <= y0 or b0 >= y1 for _, b0, _, b1 in spans))


# --------------------------------------------------------------------------- pieces


@dataclass
class _Pieces:
    """The pieces of ink at analysis resolution: labels and per-piece statistics (index i
    is label i + 1)."""

    labels: np.ndarray  # int32, the analysed image's shape
    boxes: list[tuple[int, int, int, int]]  # (x0, y0, x1, y1), end inclusive
    masses: list[float]  # summed ink
    keep: list[bool]  # strong, on the sheet, not the edge of a shadow

    @property
    def count(self) -> int:
        return sum(self.keep)

    def line_height(self) -> float:
        """The median height of the substantial pieces (the digits' height)."""
        heaviest = max(m for m, k in zip(self.masses, self.keep, strict=True) if k)
        heights = [
            b[3] - b[1] + 1
            for b, m, k in zip(self.boxes, self.masses, self.keep, strict=True)
            if k and m >= SUBSTANTIAL * heaviest
        ]
        return float(np.median(heights))

    def groups(self, height: float) -> tuple[list[list[int]], int]:
        """The pieces grouped into digits (lists of labels), and how many noticeable marks
        were dropped as not digits (specks and dust are dropped silently)."""
        ids = [i for i, k in enumerate(self.keep) if k]
        heaviest = max(self.masses[i] for i in ids)
        typical = float(
            np.median([self.masses[i] for i in ids if self.masses[i] >= SUBSTANTIAL * heaviest])
        )

        def side(i: int) -> int:
            x0, y0, x1, y1 = self.boxes[i]
            return max(x1 - x0, y1 - y0) + 1

        small = {
            i for i in ids if side(i) < SPECK * height and self.masses[i] < SPECK_MASS * typical
        }
        big = [i for i in ids if i not in small]
        parent = {i: i for i in big}

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a_pos, a in enumerate(big):
            for b in big[a_pos + 1 :]:
                ax0, _, ax1, _ = self.boxes[a]
                bx0, _, bx1, _ = self.boxes[b]
                shared = min(ax1, bx1) - max(ax0, bx0) + 1
                narrower = min(ax1 - ax0, bx1 - bx0) + 1
                if shared >= SHARED_COLUMNS * narrower:
                    parent[find(a)] = find(b)
        members: dict[int, list[int]] = {}
        for i in big:
            members.setdefault(find(i), []).append(i)
        # A speck that almost touches a digit is a piece of its stroke (a pen skipping);
        # the others are dots and dust.
        dropped = 0
        for i in small:
            near = [
                r
                for r, group in members.items()
                if min(_gap(self.boxes[i], self.boxes[j]) for j in group) <= SPECK_TOUCH * height
            ]
            if near:
                members[near[0]].append(i)
            elif self.masses[i] >= 0.03 * typical and side(i) >= 0.15 * height:
                dropped += 1  # a noticeable mark (a dash, a comma): worth saying
        groups = []
        for group in members.values():
            x0 = min(self.boxes[i][0] for i in group)
            x1 = max(self.boxes[i][2] for i in group)
            y0 = min(self.boxes[i][1] for i in group)
            y1 = max(self.boxes[i][3] for i in group)
            if max(x1 - x0, y1 - y0) + 1 < SPECK * height:
                dropped += 1
                continue
            groups.append(group)
        return [[i + 1 for i in g] for g in groups], dropped


def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """The gap in pixels between two boxes (x0, y0, x1, y1), end inclusive (0: touching or
    overlapping)."""
    return max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3], 0)


def _pieces(cleaned: Cleaned) -> _Pieces:
    """The pieces of the cleaned ink (see the module's docstring)."""
    ink, weak, sheet = cleaned.ink, cleaned.weak, cleaned.sheet
    h, w = ink.shape
    joined = cv2.dilate(weak.view(np.uint8), _DISK1)  # a pixel's gap (a skipping pen) joins
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    if n - 1 > 50 * MAX_PIECES:
        raise NoDigitError("no digit found: only noise")
    at = np.flatnonzero(weak)
    piece = labels.ravel()[at]
    at_ink = ink.ravel()[at]
    masses = np.bincount(piece, weights=at_ink, minlength=n)[1:]
    strong = np.zeros(n, dtype=bool)
    strong[piece[at_ink >= STRONG_INK]] = True
    keep = strong[1:].copy()
    if sheet is not None:
        on_sheet = np.bincount(piece, weights=sheet.ravel()[at], minlength=n)[1:]
        area = np.bincount(piece, minlength=n)[1:]
        keep &= on_sheet >= 0.2 * area  # marks off the sheet are the desk's
    x0, y0 = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    x1 = x0 + stats[1:, cv2.CC_STAT_WIDTH] - 1
    y1 = y0 + stats[1:, cv2.CC_STAT_HEIGHT] - 1
    # A solid piece against two edges of the image is the edge of a shadow or of the page.
    sides = (x0 == 0).astype(int) + (y0 == 0) + (x1 == w - 1) + (y1 == h - 1)
    fill = stats[1:, cv2.CC_STAT_AREA] / (
        stats[1:, cv2.CC_STAT_WIDTH] * stats[1:, cv2.CC_STAT_HEIGHT]
    )
    keep &= ~((sides >= 2) & (fill >= 0.4))
    # Noise makes many tiny pieces: only those with 1% of the heaviest's ink count.
    if keep.any():
        keep &= masses >= 0.01 * masses[keep].max()
    if np.count_nonzero(keep) > MAX_PIECES:
        # Hatching or noise, not a number: the heaviest pieces only.
        order = np.argsort(-np.where(keep, masses, -1.0), kind="stable")
        keep[order[MAX_PIECES:]] = False
    boxes = list(zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist(), strict=True))
    return _Pieces(labels, boxes, masses.tolist(), keep.tolist())


# --------------------------------------------------------------------------- cuts


class _Cutter:
    """Splits groups wider than a digit, asking ``score`` which cut reads best."""

    def __init__(self, ink: np.ndarray, score: Score, height: float) -> None:
        self.ink = ink
        self.score = score
        self.height = height
        self.doubts: list[str] = []

    def split(
        self, part: _Part, depth: int, read: tuple[np.ndarray, float] | None = None
    ) -> list[_Part]:
        """``part`` as one digit, or cut into several (left to right). ``read``: its model
        input and score, when already known."""
        if depth >= MAX_DEPTH:
            return [part]
        found = self.evaluate(part, read)
        if found is None:
            return [part]
        best, z = decide(found)
        if z <= 0:
            return [part]
        if z < DOUBTFUL_MARGIN or math.exp(found.halves[best].min()) < DOUBTFUL_HALF:
            self.doubts.append("Where two touching digits part is uncertain.")
        left, right = found.cuts[best]
        out = []
        for half in (left, right):
            out.extend(self.split(_Part(half, cut=True), depth + 1))
        return out

    def evaluate(
        self, part: _Part, read: tuple[np.ndarray, float] | None = None
    ) -> Candidates | None:
        """The candidate cuts of ``part`` with the model's scores, or None when it is too
        narrow to be two digits or has no cut. ``read``: its model input and score, when
        already known."""
        x0, y0, x1, y1 = part.extent()
        ref = max(y1 - y0, 0.8 * self.height)  # a short group is measured against the line
        wide = (x1 - x0) / ref if ref else 0.0
        if wide < SPLIT_FROM:
            return None
        if read is None:
            first = self.input_of(part.mask)
            if first is None:
                return None
            read = first, float(self.score(first[None])[0])
        whole = math.log(max(1e-6, read[1]))
        # The best a cut can do is two perfect halves through no stroke (a log score of 0):
        # when even that would not win, the group is one digit, and no cut is searched (most
        # digits: confident, and not wide).
        if -WHOLE_WEIGHT * whole + SPLIT_SLOPE * (wide - SPLIT_EVEN) <= 0:
            return None
        cuts, crossings = self.candidates(part)
        if not cuts:
            return None
        inputs = []
        for left, right in cuts:
            inputs.extend((self.input_of(left), self.input_of(right)))
        valid = np.array([im is not None for im in inputs])
        batch = np.stack([im if im is not None else _BLANK for im in inputs])
        scores = np.clip(np.asarray(self.score(batch), dtype=np.float64), 1e-6, 1.0)
        scores[~valid] = 1e-6  # an empty half is no digit
        logs = np.log(scores)
        return Candidates(wide, whole, logs.reshape(-1, 2), np.array(crossings), cuts)

    def input_of(self, mask: np.ndarray) -> np.ndarray | None:
        """The model input of the ink under ``mask``, or None when there is none."""
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        if not w:
            return None
        try:
            return to_input(self.ink[y : y + h, x : x + w] * mask[y : y + h, x : x + w])
        except NoDigitError:
            return None

    def candidates(self, part: _Part) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[float]]:
        """Cuts of ``part`` as (left, right) masks: its pieces dealt out left and right
        (in the order of their centres), and seams through the least ink; and how many
        strokes each crosses."""
        mask = part.mask
        x0, y0, x1, y1 = part.extent()
        cuts: list[tuple[np.ndarray, np.ndarray]] = []
        crossings: list[float] = []
        seen: set[bytes] = set()

        def add(left: np.ndarray, right: np.ndarray, crossing: float) -> None:
            key = np.packbits(left).tobytes()
            if key not in seen and left.any() and right.any():
                seen.add(key)
                cuts.append((left, right))
                crossings.append(crossing)

        # Pieces (8-connected, at working resolution) in the order of their centres.
        n, labels, _, centroids = cv2.connectedComponentsWithStats(
            mask.view(np.uint8), connectivity=8
        )
        if 2 < n <= 8:
            order = np.argsort(centroids[1:, 0], kind="stable") + 1
            for k in range(1, n - 1):
                left = np.isin(labels, order[:k])
                add(left, mask & ~left, 0.0)
        min_half = MIN_HALF * self.height
        band = max(2, round(SEAM_BAND * self.height))
        step = max(1.0, SEAM_STEP * self.height)
        starts = np.arange(x0 + min_half, x1 - min_half, step)
        if len(starts) > MAX_SEAMS:
            starts = np.linspace(x0 + min_half, x1 - min_half, MAX_SEAMS)
        if len(starts):
            ink = self.ink * mask
            seams = _seams(ink, y0, y1, np.round(starts).astype(int), band)
            columns = np.arange(mask.shape[1])
            crop = ink[y0:y1, x0:x1]
            stroke = max(1.0, stroke_width(crop, 0.3))
            rows_at = np.arange(y0, y1)
            for seam in seams:
                on_seam = ink[rows_at, np.clip(seam, 0, mask.shape[1] - 1)]
                crossing = float(on_seam[(seam >= 0) & (seam < mask.shape[1])].sum()) / stroke
                left = np.zeros_like(mask)
                right = np.zeros_like(mask)
                rows = mask[y0:y1]
                left[y0:y1] = rows & (columns[None, :] < seam[:, None])
                right[y0:y1] = rows & (columns[None, :] > seam[:, None])
                add(left, right, crossing)
        return cuts, crossings


_BLANK = np.zeros((28, 28), np.uint8)


@dataclass
class Candidates:
    """A group's candidate cuts, as the split decision sees them."""

    wide: float  # the group's width over its height (or 0.8 of the line's, if more)
    whole: float  # log score of the group read as one digit
    halves: np.ndarray  # (K, 2) log scores of each cut's left and right halves
    crossings: np.ndarray  # (K,) strokes each cut crosses (its ink over the stroke width)
    cuts: list[tuple[np.ndarray, np.ndarray]]  # (left, right) masks


def decide(found: Candidates) -> tuple[int, float]:
    """(the best cut, its log-odds of being right against reading the group as one digit;
    cut when positive). A cut is scored by how well the model reads both halves, less what
    it costs to cut through strokes (touching digits meet at one point; a wide digit cut
    in two loses two strokes or more); the width says how likely two digits are at all."""
    value = found.halves.sum(axis=1) - CROSSING_COST * found.crossings
    best = int(np.argmax(value))
    z = (
        float(value[best] - WHOLE_WEIGHT * found.whole)
        + SPLIT_SLOPE * (found.wide - SPLIT_EVEN)
        + WEAKER_HALF_WEIGHT * float(found.halves[best].min())
    )
    return best, z


def _seams(ink: np.ndarray, y0: int, y1: int, starts: np.ndarray, band: int) -> np.ndarray:
    """For each start column, the path from row ``y0`` to ``y1`` (exclusive) through the
    least ink, moving at most one column per row and staying within ``band`` columns of
    its start: (len(starts), y1 - y0) column indices. Dynamic programming over the rows,
    vectorised over the starts (seam carving's recurrence)."""
    rows = ink[y0:y1]
    height, width = rows.shape
    offsets = np.arange(-band, band + 1)
    cols = starts[:, None] + offsets[None, :]  # (K, B)
    inside = (cols >= 0) & (cols < width)
    cost = np.where(inside[:, None, :], rows[:, np.clip(cols, 0, width - 1)].transpose(1, 0, 2), 0)
    # Outside the image, and at the band's edge, nothing is cut: free to pass.
    k, b = cols.shape
    total = cost[:, 0, :].astype(np.float64)
    choice = np.zeros((k, height, b), np.int8)
    left = np.empty_like(total)
    right = np.empty_like(total)
    for r in range(1, height):
        # From the column to the left, the same column, or the one to the right.
        left[:, 0], left[:, 1:] = np.inf, total[:, :-1]
        right[:, -1], right[:, :-1] = np.inf, total[:, 1:]
        left += SEAM_TURN
        right += SEAM_TURN
        best = np.minimum(np.minimum(left, total), right)
        choice[:, r] = np.where(left == best, -1, np.where(total == best, 0, 1))
        total = best + cost[:, r, :]
    path = np.zeros((k, height), np.int64)
    j = np.argmin(total + SEAM_TURN * np.abs(offsets)[None, :] / band, axis=1)
    rows_k = np.arange(k)
    for r in range(height - 1, -1, -1):
        path[:, r] = j
        j = j + choice[rows_k, r, j]
    return cols[np.arange(k)[:, None], path]
