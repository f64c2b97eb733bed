"""When to answer "not sure": the decision, its thresholds, and the reasons people read.

A classifier trained on ten digits answers one of ten digits for anything: a letter, a
smiley, a scribble, a shoe, a two-digit number. ``assess`` turns some of those answers into
"unsure" with a reason, from what every backend already has (the logits) and what the
preprocessing made (the uint8 28x28 input, and how many separate marks it found):

- ``several_marks``: the locator found two or more separate substantial marks, or the ink
  is much wider than tall (a digit fitted into MNIST's 20x20 box is about as wide as tall
  at most; two digits side by side are about twice as wide).
- ``not_a_digit``: the ink encloses more loops than any digit has (an 8 has two; a loop is
  a background region of at least ``min_hole_area`` pixels, so that the pinholes where
  thick strokes meet do not count), or the largest logit is low (the network found none
  of the ten digits' patterns strongly), or the top probability is low. A model trained
  with Outlier Exposure (``mnist_cnn.outliers``) spreads its probability over all ten
  classes for things that are not digits, so that for it the top probability is the
  sharpest of these signals.
- ``ambiguous``: the two most likely digits are close in probability.

Each rule has one threshold, or ``None`` (the rule is off). The thresholds depend on the
model (the scale of its logits) and the preprocessing, so they are measured, not written
here: ``tools/calibrate_unsure.py`` chooses them on validation digits rendered as uploads
and on calibration sets of non-digits, and stores them as the "unsure" entry of the
model's JSON metadata. A model without that entry is never unsure (``UnsurePolicy()``):
thresholds measured for another model would flag an unknown share of real digits.

The module is pure: NumPy and OpenCV (already needed by the preprocessing), no model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

AMBIGUOUS = "ambiguous"
NOT_A_DIGIT = "not_a_digit"
SEVERAL_MARKS = "several_marks"
CODES = (AMBIGUOUS, NOT_A_DIGIT, SEVERAL_MARKS)

# The version of the "unsure" metadata entry: bumped when a rule changes meaning, so that
# thresholds measured for an old rule are refused instead of silently misapplied.
FORMAT_VERSION = 1

# A pixel of the 28x28 input is ink from half intensity: MNIST's anti-aliased rims are
# fainter, and counting them would merge loops that are open by one pixel.
INK_LEVEL = 128
# The faint rim still counts for the box (aspect ratio), as it does for the 20x20 fit.
BOX_LEVEL = 32


@dataclass(frozen=True)
class Unsure:
    """Why a prediction is "unsure": a machine-readable ``code`` and a sentence for people."""

    code: str  # one of CODES
    message: str

    def to_dict(self) -> dict[str, str]:
        """``{"code": ..., "message": ...}``, JSON-ready."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class UnsurePolicy:
    """Thresholds of the "unsure" rules; ``None`` turns a rule off. The default (all off)
    never answers "unsure"."""

    # ambiguous when top-1 minus top-2 probability is below this
    min_margin: float | None = None
    # not_a_digit when the largest logit is below this
    min_max_logit: float | None = None
    # not_a_digit when the top-1 softmax probability is below this
    min_confidence: float | None = None
    # not_a_digit when the ink encloses more loops (of min_hole_area pixels or more) than this
    max_holes: int | None = None
    min_hole_area: int = 1
    # several_marks when the ink box is wider than tall by more than this factor
    max_aspect: float | None = None
    # several_marks when the locator found more separate marks than this
    max_marks: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_margin", "min_max_logit", "min_confidence", "max_aspect"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number or None, not {value!r}")
        for name in ("max_holes", "max_marks", "min_hole_area"):
            value = getattr(self, name)
            if value is None and name != "min_hole_area":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer or None, not {value!r}")

    @property
    def active(self) -> bool:
        """True when at least one rule is on."""
        return any(
            getattr(self, name) is not None
            for name in (
                "min_margin",
                "min_max_logit",
                "min_confidence",
                "max_holes",
                "max_aspect",
                "max_marks",
            )
        )

    @property
    def needs_inputs(self) -> bool:
        """True when a rule looks at the 28x28 input (loops, aspect ratio)."""
        return self.max_holes is not None or self.max_aspect is not None

    @classmethod
    def from_metadata(cls, entry: Mapping[str, Any] | None) -> UnsurePolicy:
        """The policy stored as a model's "unsure" metadata entry; ``None`` (no entry) gives
        the policy that is never unsure. Keys other than the thresholds (the calibration
        report) are ignored. Raises ``ValueError`` for an entry that is not one of ours."""
        if entry is None:
            return cls()
        if not isinstance(entry, Mapping):
            raise ValueError(f"the unsure entry must be a JSON object, not {type(entry).__name__}")
        version = entry.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"the unsure entry has format_version {version!r}, this code reads "
                f"{FORMAT_VERSION}; re-run tools/calibrate_unsure.py"
            )
        thresholds = entry.get("thresholds")
        if not isinstance(thresholds, Mapping):
            raise ValueError("the unsure entry has no 'thresholds' object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(thresholds) - known)
        if unknown:
            raise ValueError(f"unknown unsure thresholds {unknown}; known: {sorted(known)}")
        policy = cls(**thresholds)
        # Thresholds no calibration can produce: a probability above 1 or an aspect limit of
        # 0 would answer "not sure" to every image, silently.
        for name in ("min_margin", "min_confidence"):
            value = getattr(policy, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} is a probability, in [0, 1], not {value!r}")
        if policy.max_aspect is not None and not policy.max_aspect > 0:
            raise ValueError(f"max_aspect must be greater than 0, not {policy.max_aspect!r}")
        return policy

    def to_metadata(self) -> dict[str, Any]:
        """The "unsure" metadata entry (JSON-ready) that ``from_metadata`` reads back."""
        return {"format_version": FORMAT_VERSION, "thresholds": asdict(self)}


def input_geometry(inputs: np.ndarray, min_hole_area: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(aspect, holes) of uint8 (N, 28, 28) model inputs: the ink box's width / height, and
    the number of loops (background regions of at least ``min_hole_area`` pixels enclosed
    by ink). An empty image has aspect 1 and no loops."""
    inputs = np.asarray(inputs, dtype=np.uint8).reshape(-1, 28, 28)
    aspect = np.ones(len(inputs))
    holes = np.zeros(len(inputs), dtype=np.int64)
    # Background in 4-connectivity against ink in 8-connectivity: a diagonal chain of ink
    # pixels closes a loop, as the eye sees it. A one-pixel frame of background joins
    # everything outside the ink into one region that touches the border. (One frame filled
    # in place: np.pad and a bool-to-uint8 copy per image cost more than the labelling, on
    # the path of every prediction.)
    background = np.ones((30, 30), np.uint8)
    inside = background[1:-1, 1:-1].view(bool)
    for i, image in enumerate(inputs):
        _, _, w, h = cv2.boundingRect((image >= BOX_LEVEL).view(np.uint8))
        if w:
            aspect[i] = w / h
        np.less(image, INK_LEVEL, out=inside)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
        outside = labels[0, 0]
        areas = stats[1:n, cv2.CC_STAT_AREA]
        holes[i] = int(np.count_nonzero((areas >= min_hole_area) & (np.arange(1, n) != outside)))
    return aspect, holes


def logit_scores(
    logits: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(margin, max_logit, confidence, top2) of logits (N, 10): the top-1 minus top-2
    softmax probability, the largest logit, the top-1 probability, and the two most likely
    classes (N, 2)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"expected logits of shape (N, C) with C >= 2, got {z.shape}")
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top2 = np.argsort(-p, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(z))
    margin = p[rows, top2[:, 0]] - p[rows, top2[:, 1]]
    return margin, z.max(axis=1), p[rows, top2[:, 0]], top2


def assess(
    logits: Any,
    inputs: np.ndarray | None,
    policy: UnsurePolicy,
    marks: Sequence[int] | None = None,
) -> list[Unsure | None]:
    """For each image: ``None`` when the model can be trusted, else an ``Unsure`` reason.

    ``logits`` is (N, 10) (a NumPy array or a torch tensor), ``inputs`` the uint8 (N, 28, 28)
    images the model saw (needed when the policy checks loops or the aspect ratio), and
    ``marks`` the number of separate marks the locator found in each image (``Located.marks``;
    without it that rule is skipped, as for images prepared elsewhere). When several rules
    fire, the most specific reason wins: several marks, then not a digit, then ambiguous.
    """
    if hasattr(logits, "detach"):  # a torch tensor; this module does not import torch
        logits = logits.detach().cpu().numpy()
    margin, max_logit, confidence, top2 = logit_scores(logits)
    n = len(margin)
    aspect = holes = None
    if policy.needs_inputs:
        if inputs is None:
            raise ValueError("this unsure policy needs the 28x28 inputs (loops, aspect ratio)")
        aspect, holes = input_geometry(inputs, policy.min_hole_area)
        if len(aspect) != n:
            raise ValueError(f"{len(aspect)} inputs for {n} rows of logits")
    if marks is not None and len(marks) != n:
        raise ValueError(f"{len(marks)} mark counts for {n} rows of logits")
    out: list[Unsure | None] = []
    for i in range(n):
        several = (
            policy.max_marks is not None and marks is not None and marks[i] > policy.max_marks
        ) or (policy.max_aspect is not None and aspect[i] > policy.max_aspect)
        if several:
            out.append(
                Unsure(
                    SEVERAL_MARKS,
                    "This looks like two or more separate marks, not one digit: "
                    "write a single digit.",
                )
            )
        elif (
            (policy.max_holes is not None and holes[i] > policy.max_holes)
            or (policy.min_max_logit is not None and max_logit[i] < policy.min_max_logit)
            or (policy.min_confidence is not None and confidence[i] < policy.min_confidence)
        ):
            out.append(Unsure(NOT_A_DIGIT, "This does not look like a digit."))
        elif policy.min_margin is not None and margin[i] < policy.min_margin:
            a, b = (int(d) for d in top2[i])
            out.append(Unsure(AMBIGUOUS, f"It could be a {a} or a {b}."))
        else:
            out.append(None)
    return out
