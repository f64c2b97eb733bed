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
4. Every group is read whole by ``score`` (the model, passed in by ``mnist_cnn.predict``:
   this module does not know it), in one batch. A group the model is sure of and no
   wider than a digit is one digit (unless it holds tall pieces a path parts: two slanted
   1s). The others that are wider than ``SPLIT_FROM`` of ``H``, or in several pieces, may
   be two or more touching (or overlapping, or merged) digits, and are read by
   recognition (segmentation by over-segmentation and dynamic programming). Candidate
   cuts are the ways of dealing the pieces out left and right, and seams: paths from top
   to bottom through the least ink, started every ``SEAM_STEP`` of ``H`` and kept where
   they cross locally least ink, so that slanted and slightly overlapping neighbours part
   along their gap. Every segment between two cuts that could be one digit (at most
   ``MAX_GAPS`` gaps, ``MAX_SEGMENT`` of ``H`` wide) is read, all groups' in a second
   batch. The best path of segments from the group's left edge to its right maximises the
   sum of each segment's log score and shape prior (``Prior``: a digit is at most about
   as wide as tall, as tall as the line, not a sliver), less what its cuts cost (the
   strokes they cross): the number of digits comes out of the path, and it is doubtful
   when the best path with another number of digits comes close. (A group is not searched
   when no path of two digits could beat reading it whole, whatever the model said.)
5. Each digit's ink at full working resolution goes through ``locate.frame``: cropped,
   strokes brought to MNIST's width, the longest side fitted into 20 pixels (a 1 keeps
   its aspect ratio), centred by mass.

Pure NumPy and OpenCV, as ``locate``; the thresholds were tuned on numbers built from
MNIST *validation* digits (``benchmarks/read_numbers.py --split validation``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

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
# Groups narrower than this (times H), in one piece, are one digit; wider ones (or groups
# of several pieces) are over-segmented, and the best path through their cuts chosen.
SPLIT_FROM = 0.62
# The lattice's bounds: a segment spans at most MAX_GAPS gaps between cuts and is at most
# MAX_SEGMENT of H wide (no digit is: the shape prior would reject it anyway), so that the
# candidates stay few enough to score in one batch.
MAX_GAPS = 10
MAX_SEGMENT = 1.3
MAX_GROUP_PIECES = 8  # pieces dealt out left and right (more: seams only)
# Two cuts bound a segment only when they do not cross: at most this share of the group's
# ink lies left of the left cut and right of the right one.
NEST_TOLERANCE = 0.02
# A group read whole with at least this score, and no wider than WHOLE_ASPECT of its height,
# is one digit without a search (most single digits: this is what keeps them fast).
WHOLE_SURE = 0.9
WHOLE_ASPECT = 1.0
# ... unless it has pieces this tall (times H) side by side: those may be two digits.
TALL = 0.6
# The segmentation is doubtful when the best path beats the best with another number of
# digits by less than this (log-score), or when a digit parted from a neighbour scores less.
DOUBTFUL_MARGIN = 0.5
DOUBTFUL_HALF = 0.5
# Seams: candidate columns every H * SEAM_STEP, each seam within +-H * SEAM_BAND of its
# column; the cheapest within +-H * SEAM_NMS of each other is kept (one cut per gap or
# join); a cut leaves at least H * MIN_HALF on each side (a 1 is narrow).
SEAM_STEP = 0.06
SEAM_BAND = 0.25
SEAM_NMS = 0.05
MIN_HALF = 0.08
SEAM_TURN = 0.05  # the cost of a diagonal step, against ink in [0, 1]
MAX_SEAMS = 64

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
    _pieces: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def extent(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the mask, end exclusive (all zero when empty)."""
        x, y, w, h = cv2.boundingRect(self.mask.view(np.uint8))
        return x, y, x + w, y + h

    def pieces(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """The mask's 8-connected pieces, as ``cv2.connectedComponentsWithStats`` gives them
        (computed once: the split decisions each ask)."""
        if self._pieces is None:
            self._pieces = cv2.connectedComponentsWithStats(
                self.mask.view(np.uint8), connectivity=8
            )
        return self._pieces


def to_input(ink: np.ndarray) -> np.ndarray:
    """Clean ink (float, white on black) -> the uint8 (28, 28) model input, as ``locate``
    makes it (``frame``, then ``locate._to_u8``'s rounding). Raises ``NoDigitError``."""
    return cv2.convertScaleAbs(frame(ink), alpha=255.0)


def segment(
    gray: np.ndarray,
    score: Score,
    work_side: int = NUMBER_WORK_SIDE,
    prior: Prior | None = None,
) -> Segmentation:
    """The digits of the number written in a grayscale float (H, W) image in [0, 1].

    ``score`` reads candidate digits (see ``Score``); it decides between cuts of touching
    digits. Raises ``NoDigitError`` when nothing digit-sized is written, and
    ``UnsupportedImageError`` for an array that is not a 2-D image.
    """
    prior = PRIOR if prior is None else prior
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
    cutter = _Cutter(ink, height * f)
    parts.sort(key=lambda p: _centre_x(p.mask))
    # Every group read whole first, in one batch: most are plainly one digit (confident, no
    # wider than a digit), and need no cut searched. The others are over-segmented, and
    # all their candidate digits read in a second batch.
    wholes = [cutter.whole(p) for p in parts]
    _score_all(wholes, score)
    lattices = [
        cutter.lattice(p, w, prior)
        if cutter.splittable(p) and (not _plainly_one(w) or cutter.side_by_side(p))
        else w
        for p, w in zip(parts, wholes, strict=True)
    ]
    _score_all([lat for lat, w in zip(lattices, wholes, strict=True) if lat is not w], score)
    digits: list[_Part] = []
    for part, lattice in zip(parts, lattices, strict=True):
        digits.extend(_choose(part, lattice, prior, doubts))
    doubts[:] = dict.fromkeys(doubts)  # each sentence once, in order
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


def _plainly_one(whole: Lattice) -> bool:
    """Whether a group read whole is plainly one digit: the model is sure of it and it is
    no wider than a digit (on validation numbers, the best path then never cut it)."""
    aspect = whole.widths[0] / max(whole.heights[0], ASPECT_FLOOR)
    return bool(math.exp(whole.logs[0]) >= WHOLE_SURE and aspect <= WHOLE_ASPECT)


def _score_all(lattices: list[Lattice], score: Score) -> None:
    """Every candidate digit of every group read in one batch (one forward pass), into each
    lattice's ``logs`` (an empty segment is no digit)."""
    inputs = [im for lat in lattices for im in lat.inputs]
    if not inputs:
        return
    batch = np.stack([_BLANK if im is None else im for im in inputs])
    scores = np.clip(np.asarray(score(batch), dtype=np.float64), 1e-6, 1.0)
    at = 0
    for lat in lattices:
        k = len(lat.inputs)
        logs = np.log(scores[at : at + k])
        logs[[im is None for im in lat.inputs]] = -math.inf
        lat.logs = logs
        at += k


def _choose(part: _Part, lattice: Lattice, prior: Prior, doubts: list[str]) -> list[_Part]:
    """The group's digits along the lattice's best path (the whole group when it has none),
    noting a doubt when the path wins narrowly or a parted digit reads poorly."""
    path = best_path(lattice, prior)
    if not path.segments:
        return [part]  # no ink the model can read: left to the framing, as a single digit
    if len(path.segments) == 1:
        if path.margin < DOUBTFUL_MARGIN:
            doubts.append("Whether touching digits are there is uncertain.")
        return [part]
    if path.margin < DOUBTFUL_MARGIN or math.exp(lattice.logs[list(path.segments)].min()) < (
        DOUBTFUL_HALF
    ):
        doubts.append("Where two touching digits part is uncertain.")
    return [_Part(lattice.masks[m], cut=True) for m in path.segments]


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


@dataclass(frozen=True)
class Prior:
    """What a digit looks like apart from the model's say, as log-likelihoods added to each
    segment's log score (sizes as fractions of the line's digit height H).

    Fitted by coordinate search on 400-640 numbers of MNIST *validation* digits (paper
    photos and drawing pads; 2, 3, 4 and 6 digits; separate and touching), separate numbers
    weighted twice. On 800 such numbers 94% of separate and 58% of touching ones read
    right, where some path through the candidates reads 96% and 76% of them right. MNIST
    digits are wide (a 2's median width is its height), so the width alone cannot tell a
    wide digit from two squeezed ones; the model, which reads two squeezed digits
    confidently as one, decides the rest.
    """

    wide_from: float = 1.1  # digits are up to about this wide (over their height) ...
    wide_slope: float = 10.0  # ... and each unit of width over height beyond costs this
    narrow_from: float = 0.12  # narrower than this is a sliver (a 1 is about a stroke wide)
    narrow_slope: float = 10.0
    short_from: float = 0.7  # digits stand as tall as the line: shorter is a fragment
    short_slope: float = 20.0
    bonus: float = 0.5  # each digit's own weight: more against fewer, wider ones
    crossing: float = 1.5  # the cost of cutting through the first stroke (where digits meet)
    crossing_extra: float = 2.0  # ... and through each further one (a digit cut in two)


PRIOR = Prior()
ASPECT_FLOOR = 0.8  # a segment's width is measured against at least this share of H


def shape_prior(widths: np.ndarray, heights: np.ndarray, prior: Prior = PRIOR) -> np.ndarray:
    """The log-likelihood of segments being one digit by their ink's width and height alone
    (over the line's digit height): flat over the widths digits have, falling steeply for
    wider ones (one digit is almost never much wider than tall), and for slivers and
    fragments, plus the per-digit ``bonus``."""
    widths = np.asarray(widths, dtype=np.float64)
    heights = np.asarray(heights, dtype=np.float64)
    # Width against the segment's own height: digits differ in size along a line (a short
    # fragment is measured against most of the line's height, so it is not made wide).
    aspect = widths / np.maximum(heights, ASPECT_FLOOR)
    return (
        prior.bonus
        - prior.wide_slope * np.maximum(0.0, aspect - prior.wide_from)
        - prior.narrow_slope * np.maximum(0.0, prior.narrow_from - widths)
        - prior.short_slope * np.maximum(0.0, prior.short_from - heights)
    )


def cut_cost(crossings: np.ndarray, prior: Prior = PRIOR) -> np.ndarray:
    """What cuts through ``crossings`` strokes cost: touching digits meet at about one
    stroke, while cutting one digit in two crosses two or more (a 0, a 6's loop)."""
    crossings = np.asarray(crossings, dtype=np.float64)
    return prior.crossing * np.minimum(crossings, 1.0) + prior.crossing_extra * np.maximum(
        0.0, crossings - 1.0
    )


@dataclass
class Lattice:
    """A group's over-segmentation: candidate cuts, left to right (cut 0 is the group's left
    edge, the last its right edge), and the candidate digits between two of them."""

    spans: np.ndarray  # (M, 2) int: segment m runs from cut spans[m, 0] to cut spans[m, 1]
    widths: np.ndarray  # (M,) the segment's ink width over the line's digit height
    heights: np.ndarray  # (M,) its ink height over the line's digit height
    crossings: np.ndarray  # (n_cuts,) strokes each cut crosses (0 at the edges)
    logs: np.ndarray  # (M,) log of the model's "one digit" score
    masks: list[np.ndarray] = field(default_factory=list, repr=False)  # (M,) segment masks
    inputs: list[np.ndarray | None] = field(default_factory=list, repr=False)  # model inputs

    @property
    def n_cuts(self) -> int:
        return len(self.crossings)


@dataclass(frozen=True)
class Path:
    """The best segmentation of a lattice: its segments (indices, left to right), its value
    and its margin over the best reading with another number of digits (inf: none)."""

    segments: tuple[int, ...]
    value: float
    margin: float


def best_path(lattice: Lattice, prior: Prior = PRIOR) -> Path:
    """The sequence of segments from the first cut to the last that maximises the sum of
    each segment's log score and shape prior, less the strokes each inner cut crosses:
    dynamic programming over (cut, digits so far), so that the best path of every length is
    known and the number of digits comes out of it, with its margin."""
    n = lattice.n_cuts
    value = lattice.logs + shape_prior(lattice.widths, lattice.heights, prior)
    ends = lattice.spans[:, 1]
    # Crossing strokes costs at the inner cuts only (the edges cut nothing).
    crossed = np.where(ends < n - 1, lattice.crossings[ends], 0.0)
    value = value - cut_cost(crossed, prior)
    most = n - 1  # at most one digit per gap
    best = np.full((n, most + 1), -np.inf)
    back = np.full((n, most + 1), -1, dtype=np.int64)
    best[0, 0] = 0.0
    order = np.argsort(ends, kind="stable")  # segments by their end: a cut's paths are known
    for m in order:
        a, b = lattice.spans[m]
        if not np.isfinite(value[m]):
            continue
        came = best[a, :-1] + value[m]
        better = came > best[b, 1:]
        best[b, 1:][better] = came[better]
        back[b, 1:][better] = m
    final = best[n - 1]
    if not np.isfinite(final).any():
        return Path((), -math.inf, 0.0)
    count = int(np.argmax(final))
    others = np.delete(final, count)
    second = float(others.max()) if len(others) else -math.inf
    segments = []
    cut, k = n - 1, count
    while k > 0:
        m = int(back[cut, k])
        segments.append(m)
        cut, k = int(lattice.spans[m, 0]), k - 1
    return Path(tuple(reversed(segments)), float(final[count]), float(final[count]) - second)


class _Cutter:
    """Over-segments groups into candidate cuts and candidate digits between them."""

    def __init__(self, ink: np.ndarray, height: float) -> None:
        self.ink = ink
        self.height = height

    def input_of(
        self, mask: np.ndarray, rect: tuple[int, int, int, int] | None = None
    ) -> np.ndarray | None:
        """The model input of the ink under ``mask`` (whose bounding ``rect`` may be known),
        or None when there is none."""
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8)) if rect is None else rect
        if not w:
            return None
        try:
            return to_input(self.ink[y : y + h, x : x + w] * mask[y : y + h, x : x + w])
        except NoDigitError:
            return None

    def whole(self, part: _Part) -> Lattice:
        """The lattice of ``part`` read as one digit only (not yet scored)."""
        return self._lattice([np.zeros_like(part.mask), part.mask], [0.0, 0.0], [0.0, 0.0])

    def splittable(self, part: _Part) -> bool:
        """Whether ``part`` may be more than one digit: wide enough, or in several pieces."""
        x0, _, x1, _ = part.extent()
        if (x1 - x0) >= SPLIT_FROM * self.height:
            return True
        n = part.pieces()[0]
        return 2 < n <= 1 + MAX_GROUP_PIECES

    def side_by_side(self, part: _Part) -> bool:
        """Whether ``part`` holds pieces as tall as a digit that a path from top to bottom
        parts: they may be two digits however surely the model reads them as one (two
        slanted 1s sharing columns)."""
        n, labels, stats, centroids = part.pieces()
        tall = np.flatnonzero(stats[1:, cv2.CC_STAT_HEIGHT] >= TALL * self.height) + 1
        if len(tall) < 2 or n - 1 > MAX_GROUP_PIECES:
            return False
        tall = tall[np.argsort(centroids[tall, 0], kind="stable")]
        return any(
            _interleaved_rows(np.isin(labels, tall[:k]), np.isin(labels, tall[k:])) == 0
            for k in range(1, len(tall))
        )

    def lattice(self, part: _Part, whole: Lattice, prior: Prior) -> Lattice:
        """The candidate cuts and segments of ``part`` (model inputs made, not yet scored);
        or ``whole``, its lattice read as one digit (scored), when no path of two digits or
        more could beat it: every segment's value is at most the bonus (its log score is at
        most 0), and every cut costs at least the cheapest's cost."""
        mask = part.mask
        x0, _, x1, _ = part.extent()
        n, labels, _, centroids = part.pieces()
        lefts, crossings, positions = self.cuts(mask, labels, n, centroids)
        if len(lefts) <= 1:
            return whole
        cheapest = float(cut_cost(np.array(crossings[1:]), prior).min())
        # The bound is linear in the number of digits k: its largest at k = 2 or k = all.
        k = len(lefts) - 1  # inner cuts
        bound = max(2 * prior.bonus - cheapest, (k + 1) * prior.bonus - k * cheapest)
        if best_path(whole, prior).value >= bound:
            return whole
        return self._lattice([*lefts, mask], [*crossings, 0.0], [float(x0), *positions, float(x1)])

    def _lattice(
        self, lefts: list[np.ndarray], crossings: list[float], positions: list[float]
    ) -> Lattice:
        """The segments between the cuts whose left sides are ``lefts`` (the first empty,
        the last the whole group), at ``positions`` (mean columns), with their inputs."""
        height = self.height
        mask = lefts[-1]
        spans, masks, rects = [], [], []
        total = max(1, int(np.count_nonzero(mask)))
        last = len(lefts) - 1
        # A seam strays at most its band from its column: cuts further apart than this bound
        # a segment wider than any digit.
        reach = MAX_SEGMENT * height + 2 * SEAM_BAND * height
        for a in range(last):
            ends = list(range(a + 1, min(last, a + MAX_GAPS) + 1))
            if a == 0 and ends[-1] != last:
                ends.append(last)  # the whole group is always a candidate (a fallback path)
            for b in ends:
                whole = a == 0 and b == last
                if not whole and positions[b] - positions[a] > reach:
                    continue
                seg = lefts[b] & ~lefts[a]
                if not whole and np.count_nonzero(lefts[a] & ~lefts[b]) > NEST_TOLERANCE * total:
                    continue  # the cuts cross: not a segment between them
                rect = cv2.boundingRect(seg.view(np.uint8))
                if not rect[2]:
                    continue
                if not whole and rect[2] > MAX_SEGMENT * height:
                    continue  # no digit is this wide (the prior would reject it anyway)
                spans.append((a, b))
                masks.append(seg)
                rects.append(rect)
        inputs, widths, heights = [], [], []
        for seg, rect in zip(masks, rects, strict=True):
            widths.append(rect[2] / height)
            heights.append(rect[3] / height)
            inputs.append(self.input_of(seg, rect))
        return Lattice(
            np.array(spans, dtype=np.int64).reshape(-1, 2),
            np.array(widths),
            np.array(heights),
            np.array(crossings),
            np.zeros(len(spans)),
            masks,
            inputs,
        )

    def cuts(
        self, mask: np.ndarray, labels: np.ndarray, n: int, centroids: np.ndarray
    ) -> tuple[list[np.ndarray], list[float], list[float]]:
        """Inner candidate cuts of a group, left to right, as the masks of what lies left of
        them (the first is empty), how many strokes each crosses and where (its mean
        column): its pieces dealt out
        left and right, and seams through the least ink (the locally cheapest of seams
        started every ``SEAM_STEP`` of the height)."""
        x0, y0, x1, y1 = cv2.boundingRect(mask.view(np.uint8))
        x1, y1 = x0 + x1, y0 + y1
        found: list[tuple[float, np.ndarray, float]] = []  # (position, left, crossing)
        height = self.height
        stroke = max(1.0, stroke_width(self.ink[y0:y1, x0:x1] * mask[y0:y1, x0:x1], 0.3))
        if 2 < n <= 1 + MAX_GROUP_PIECES:
            order = np.argsort(centroids[1:, 0], kind="stable") + 1
            for k in range(1, n - 1):
                left = np.isin(labels, order[:k])
                at = 0.5 * (centroids[order[k - 1], 0] + centroids[order[k], 0])
                # Pieces side by side part freely, even slanted (two 1s sharing columns);
                # pieces that interleave row by row (a 4's bar through its stem, an arc
                # round another) cost as if the cut crossed a stroke per stroke width of
                # such rows.
                shared = _interleaved_rows(left, mask & ~left)
                found.append((float(at), left, min(3.0, shared / stroke)))
        min_half = MIN_HALF * height
        band = max(2, round(SEAM_BAND * height))
        step = max(1.0, SEAM_STEP * height)
        starts = np.arange(x0 + min_half, x1 - min_half, step)
        if len(starts) > MAX_SEAMS:
            starts = np.linspace(x0 + min_half, x1 - min_half, MAX_SEAMS)
        if len(starts):
            ink = self.ink * mask
            seams = _seams(ink, y0, y1, np.round(starts).astype(int), band)
            rows_at = np.arange(y0, y1)
            inside = (seams >= 0) & (seams < mask.shape[1])
            on_seam = ink[rows_at[None, :], np.clip(seams, 0, mask.shape[1] - 1)] * inside
            cost = on_seam.sum(axis=1) / stroke
            at = seams.mean(axis=1)
            # Seams a local minimum of the ink they cross (within NMS of the height): the
            # gaps and the thin joins between digits, one seam each.
            near = np.abs(at[:, None] - at[None, :]) <= SEAM_NMS * height
            keep = np.all(
                ~near
                | (cost[:, None] < cost[None, :])
                | (
                    (cost[:, None] == cost[None, :])
                    & (np.arange(len(at))[:, None] <= np.arange(len(at))[None, :])
                ),
                axis=1,
            )
            columns = np.arange(mask.shape[1])
            for i in np.flatnonzero(keep):
                left = np.zeros_like(mask)
                left[y0:y1] = mask[y0:y1] & (columns[None, :] < seams[i][:, None])
                found.append((float(at[i]), left, float(cost[i])))
        found.sort(key=lambda c: c[0])
        # The same cut found twice (pieces a seam parts through no ink, slanted 1s sharing
        # columns) costs the least it was found with.
        unique: dict[bytes, tuple[float, np.ndarray, float]] = {}
        for at_x, left, crossing in found:
            key = np.packbits(left).tobytes()
            if not left.any() or not (mask & ~left).any():
                continue
            if key not in unique or crossing < unique[key][2]:
                unique[key] = (unique[key][0] if key in unique else at_x, left, crossing)
        kept = sorted(unique.values(), key=lambda c: c[0])
        lefts = [np.zeros_like(mask), *(c[1] for c in kept)]
        return lefts, [0.0, *(c[2] for c in kept)], [c[0] for c in kept]


_BLANK = np.zeros((28, 28), np.uint8)


def _interleaved_rows(left: np.ndarray, right: np.ndarray) -> int:
    """How many rows have ink of ``left`` at or right of ink of ``right`` (0 when a path
    from top to bottom parts them)."""
    width = left.shape[1]
    columns = np.arange(width)
    rows = left.any(axis=1) & right.any(axis=1)
    if not rows.any():
        return 0
    last_left = np.where(left[rows], columns, -1).max(axis=1)
    first_right = np.where(right[rows], columns, width).min(axis=1)
    return int(np.count_nonzero(last_left >= first_right))


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
