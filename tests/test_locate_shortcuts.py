"""The shortcuts that make ``mnist_cnn.locate`` fast give exactly what the plain computations
give: each is checked here against the plain version, written out, on many arrays. (The
older shortcuts, medians, labelling within the bounding box and the 2x enlargement, are
checked at the end of tests/test_locate.py.) Ties and thresholds downstream turn the
smallest difference into a different 28x28 input, so "close" is not enough."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from mnist_cnn import locate
from mnist_cnn.decode import NoDigitError


def test_to_u8_rounds_as_numpy() -> None:
    rng = np.random.default_rng(0)
    halves = (np.arange(511) / 510).astype(np.float32)  # products at and around k + 0.5
    arrays = [
        halves,
        np.nextafter(halves, np.float32(0)),
        np.nextafter(halves, np.float32(1)),
        np.array([0.0, 1.0, -0.0], np.float32),
    ]
    arrays += [rng.random((int(rng.integers(1, 200)), 37), dtype=np.float32) for _ in range(50)]
    for a in arrays:
        a = np.atleast_2d(a)
        assert np.array_equal(locate._to_u8(a), np.round(a * 255).astype(np.uint8))


def random_strokes(rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of rings, lines and specks, some cut by the image's edge."""
    h, w = (int(v) for v in rng.integers(1, 170, 2))
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(0, 8))):
        centre = (int(rng.integers(-5, w + 5)), int(rng.integers(-5, h + 5)))
        if rng.random() < 0.5:
            cv2.circle(mask, centre, int(rng.integers(1, 30)), 1, int(rng.integers(-1, 6)))
        else:
            end = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(mask, centre, end, 1, int(rng.integers(1, 8)))
    if rng.random() < 0.4:  # specks: more pieces than FEW_PIECES
        mask |= (rng.random((h, w)) < rng.uniform(0, 0.3)).astype(np.uint8)
    return mask.astype(bool)


def test_stroke_width_of_the_largest_inner_piece_is_the_plain_one() -> None:
    rng = np.random.default_rng(2)
    for _ in range(2000):
        mask = random_strokes(rng)
        expected = locate._stroke_width(locate._largest_inner(mask))
        assert locate._inner_stroke_width(mask) == expected


@pytest.mark.parametrize("few", [0, 10**9], ids=["numpy", "python"])
def test_largest_inner_piece_on_lists_and_arrays(few: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        mask = random_strokes(rng)
        h, w = mask.shape
        stats = cv2.connectedComponentsWithStats(mask.view(np.uint8))[2]
        x0, y0 = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
        x1, y1 = x0 + stats[1:, cv2.CC_STAT_WIDTH], y0 + stats[1:, cv2.CC_STAT_HEIGHT]
        inner = (x0 > 0) & (y0 > 0) & (x1 < w) & (y1 < h)
        expected = int(np.argmax(np.where(inner, stats[1:, 4], 0))) if inner.any() else None
        monkeypatch.setattr(locate, "FEW_PIECES", few)
        assert locate._largest_inner_index(stats, h, w) == expected


def test_background_levels_are_numpys_division() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(3, 120, 2))
        u8 = rng.integers(0, 256, (h, w), dtype=np.uint8)
        small = u8.astype(np.float32) / 255
        window = 2 * int(rng.integers(1, 40)) + 1
        for dark in (True, False):
            op = cv2.MORPH_CLOSE if dark else cv2.MORPH_OPEN
            kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (window, window))
            expected = cv2.morphologyEx(u8, op, kernel).astype(np.float32)
            expected /= 255.0
            expected = (np.maximum if dark else np.minimum)(expected, small)
            assert np.array_equal(locate._background(u8, small, dark, window), expected)


def test_integer_bounds_select_the_same_residuals() -> None:
    residual = np.arange(-300, 301, dtype=np.int16)
    for strong in [*np.random.default_rng(5).uniform(0, 300, 2000).tolist(), 20.4, 21.0, 255.0]:
        assert np.array_equal(residual < -strong, residual < math.ceil(-strong))
        assert np.array_equal(residual > strong, residual > math.floor(strong))


def noisy_scene(rng: np.random.Generator) -> np.ndarray:
    """A gray image with rings of ink and sensor noise strong enough to make many pieces."""
    h, w = (int(v) for v in rng.integers(40, 320, 2))
    gray = 0.8 + rng.normal(0, rng.uniform(0.02, 0.25), (h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(0, 4))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, min(h, w) / 2)
        gray[np.abs(np.hypot(yy - cy, xx - cx) - r) < rng.uniform(1, 6)] *= rng.uniform(0.1, 0.7)
    gray = np.clip(gray, 0, 1).astype(np.float32)
    return 1 - gray if rng.random() < 0.3 else gray


def test_few_pieces_are_chosen_as_many_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_keep_digit`` and ``_largest_inner_index`` decide on Python lists up to
    FEW_PIECES pieces and with NumPy above: both ways must agree everywhere."""

    def reading(gray: np.ndarray, few: int) -> object:
        monkeypatch.setattr(locate, "FEW_PIECES", few)
        try:
            found = locate.locate(gray)
        except NoDigitError as exc:
            return str(exc)
        return found.image.tobytes(), found.box, found.marks, found.dark_ink

    rng = np.random.default_rng(6)
    for _ in range(120):
        gray = noisy_scene(rng)
        assert reading(gray, 0) == reading(gray, 10**9)
