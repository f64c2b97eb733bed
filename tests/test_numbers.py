"""Reading whole numbers (``Predictor.read_number``, ``mnist_cnn.segment``): hand-made
numbers (separate, touching, a detached 5 bar, a dot between digits, a single digit, an
empty pad) read by the shipped model, and the cut choice on its own."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _imaging import encode, gray8, ink_box, on_paper, stroke_digit

from mnist_cnn import segment
from mnist_cnn.predict import OK, SEGMENTATION, NumberReading, Predictor
from mnist_cnn.preprocess import NoDigitError

SIZE = 160  # each digit's square, pixels
STROKE = 12
MARGIN = 40


def digit_ink(digit: int) -> np.ndarray:
    """A hand-drawn-looking digit's coverage, cropped to its columns of ink."""
    cov = stroke_digit(digit, SIZE, STROKE)
    x0, _, x1, _ = ink_box(cov, 0.05)
    return cov[:, x0:x1]


def lay_out(inks: list[np.ndarray], gap: int) -> tuple[np.ndarray, list[int]]:
    """Coverages side by side, ``gap`` pixels apart (negative: overlapping), with a margin;
    and where each one starts."""
    width = sum(i.shape[1] for i in inks) + gap * (len(inks) - 1) + 2 * MARGIN
    cov = np.zeros((SIZE + 2 * MARGIN, width), np.float32)
    x, starts = MARGIN, []
    for ink in inks:
        region = cov[MARGIN : MARGIN + SIZE, x : x + ink.shape[1]]
        np.maximum(region, ink, out=region)
        starts.append(x)
        x += ink.shape[1] + gap
    return cov, starts


def paper_png(cov: np.ndarray) -> bytes:
    """Dark ink of ``cov`` on light paper, as a PNG file."""
    return encode(gray8(on_paper(cov)), "PNG")


def pad_png(cov: np.ndarray) -> bytes:
    """Black strokes on a transparent canvas (alpha = coverage), as a drawing pad exports."""
    rgba = np.zeros((*cov.shape, 4), np.uint8)
    rgba[..., 3] = np.round(np.clip(cov, 0, 1) * 255).astype(np.uint8)
    from PIL import Image

    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def number(digits: list[int], gap: int) -> np.ndarray:
    return lay_out([digit_ink(d) for d in digits], gap)[0]


@pytest.fixture(scope="module")
def predictor(shipped_predictor: Predictor) -> Predictor:
    return shipped_predictor


# --------------------------------------------------------------------------- hand-made numbers


@pytest.mark.parametrize("encode_as", [paper_png, pad_png], ids=["paper", "pad"])
def test_separate_digits(predictor: Predictor, encode_as: object) -> None:
    cov, starts = lay_out([digit_ink(d) for d in (2, 0, 1, 7)], gap=30)
    reading = predictor.read_number(encode_as(cov))  # type: ignore[operator]
    assert isinstance(reading, NumberReading)
    assert reading.number == "2017"
    assert reading.status == OK
    assert [d.prediction.digit for d in reading.digits] == [2, 0, 1, 7]
    # Each box holds its own digit, left to right, in the image's pixels.
    for d, start in zip(reading.digits, starts, strict=True):
        x0, y0, x1, y1 = d.box
        assert abs(x0 - start) <= 4 and x1 > x0 and MARGIN - 4 <= y0 < y1 <= MARGIN + SIZE + 4
    confidences = [d.prediction.confidence for d in reading.digits]
    assert reading.confidence == pytest.approx(float(np.prod(confidences)))
    assert all(d.prediction.model_input.shape == (28, 28) for d in reading.digits)


@pytest.mark.parametrize(
    ("digits", "gap"), [((2, 3), -16), ((5, 7), -8), ((2, 5), -8), ((4, 0), -10), ((2, 7), -20)]
)
def test_touching_digits_are_parted(predictor: Predictor, digits: tuple, gap: int) -> None:
    cov = number(list(digits), gap)
    # The strokes really touch: one connected piece of ink.
    n, _ = cv2.connectedComponents((cov > 0.2).astype(np.uint8))
    assert n - 1 == 1
    reading = predictor.read_number(paper_png(cov))
    assert reading.number == "".join(map(str, digits))


def test_three_touching_digits_are_parted(predictor: Predictor) -> None:
    cov = number([2, 5, 3], -10)
    n, _ = cv2.connectedComponents((cov > 0.2).astype(np.uint8))
    assert n - 1 == 1  # one connected run of ink
    assert predictor.read_number(paper_png(cov)).number == "253"


def test_two_slanted_ones_are_not_merged(predictor: Predictor) -> None:
    # Two slanted 1s side by side share most of their columns, so the grouping puts them
    # together, and squeezed into one box they read confidently as one 1; a slanted path
    # parts them through no ink, and the path of two digits wins.
    cov = np.zeros((SIZE + 2 * MARGIN, 3 * SIZE), np.float32)
    for x in (MARGIN + 20, MARGIN + 45):
        cv2.line(cov, (x + 50, MARGIN), (x, MARGIN + SIZE), 1.0, STROKE)
    n, _ = cv2.connectedComponents((cov > 0.2).astype(np.uint8))
    assert n - 1 == 2
    assert predictor.read_number(paper_png(cov)).number == "11"


def test_a_wide_zero_is_not_split(predictor: Predictor) -> None:
    # A 0 wider than it is tall (so that its cuts are searched): its halves read as digits,
    # but cutting it crosses two strokes and its width is a digit's.
    width = round(1.15 * SIZE)
    zero = np.zeros((SIZE, width), np.uint8)
    axes = (width // 2 - STROKE, SIZE // 2 - STROKE)
    cv2.ellipse(zero, (width // 2, SIZE // 2), axes, 0, 0, 360, 255, STROKE)
    ink = zero.astype(np.float32) / 255
    x0, _, x1, _ = ink_box(ink, 0.05)
    cov, _ = lay_out([digit_ink(3), ink[:, x0:x1]], gap=30)
    assert predictor.read_number(paper_png(cov)).number == "30"


def test_a_detached_five_bar_belongs_to_its_five(predictor: Predictor) -> None:
    five = np.zeros((SIZE * 4, SIZE * 4), np.uint8)

    def pt(x: float, y: float) -> tuple[int, int]:
        return round(x * SIZE * 4), round(y * SIZE * 4)

    width = STROKE * 4
    # The bar, drawn apart from the stem: a gap of a stroke's width between them.
    cv2.line(five, pt(0.42, 0.15), pt(0.74, 0.15), 255, width)
    cv2.polylines(five, [np.int32([pt(0.36, 0.27), pt(0.33, 0.47)])], False, 255, width)
    cv2.ellipse(five, pt(0.48, 0.64), pt(0.23, 0.21), 0, -140, 140, 255, width)
    five = cv2.resize(five, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    n, _ = cv2.connectedComponents((five > 0.2).astype(np.uint8))
    assert n - 1 == 2  # two pieces of ink
    x0, _, x1, _ = ink_box(five, 0.05)
    cov, _ = lay_out([digit_ink(3), five[:, x0:x1], digit_ink(2)], gap=30)
    reading = predictor.read_number(paper_png(cov))
    assert reading.number == "352"


def test_a_dot_between_digits_is_dropped(predictor: Predictor) -> None:
    cov, starts = lay_out([digit_ink(4), digit_ink(2)], gap=50)
    # A full stop on the baseline, between the two digits.
    x = starts[1] - 25
    cv2.circle(cov, (x, MARGIN + round(0.85 * SIZE)), STROKE // 2 + 1, 1.0, -1)
    reading = predictor.read_number(paper_png(cov))
    assert reading.number == "42"


def test_a_dot_over_nothing_is_dropped(predictor: Predictor) -> None:
    cov, starts = lay_out([digit_ink(1), digit_ink(5)], gap=60)
    cv2.circle(cov, (starts[1] - 30, MARGIN + 5), STROKE // 2, 1.0, -1)
    assert predictor.read_number(paper_png(cov)).number == "15"


def test_a_single_digit_goes_through_the_single_digit_path(predictor: Predictor) -> None:
    data = paper_png(number([3], 0))
    reading = predictor.read_number(data)
    single = predictor.predict(data)
    assert reading.number == "3" and len(reading.digits) == 1
    only = reading.digits[0]
    assert only.prediction == single
    assert np.array_equal(only.prediction.model_input, single.model_input)
    assert only.box == predictor.locate(data).box
    assert reading.confidence == single.confidence


def test_an_empty_pad_has_no_digit(predictor: Predictor) -> None:
    with pytest.raises(NoDigitError):
        predictor.read_number(pad_png(np.zeros((280, 560), np.float32)))


def test_to_dict_is_json_ready(predictor: Predictor) -> None:
    import json

    reading = predictor.read_number(paper_png(number([4, 0], 30)))
    out = json.loads(json.dumps(reading.to_dict()))
    assert out["number"] == "40" and out["status"] == "ok" and out["reason"] is None
    assert [d["digit"] for d in out["digits"]] == [4, 0]
    assert all(len(d["box"]) == 4 for d in out["digits"])


def test_segmentation_doubt_makes_the_reading_unsure(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = segment.segment

    def doubtful(*args: object, **kwargs: object) -> segment.Segmentation:
        found = real(*args, **kwargs)  # type: ignore[arg-type]
        return segment.Segmentation(found.digits, ("a doubt",), found.dark_ink, found.height)

    monkeypatch.setattr("mnist_cnn.predict.segment", doubtful)
    reading = predictor.read_number(paper_png(number([2, 5], 30)))
    assert reading.number == "25"
    assert reading.status == "unsure" and reading.reason is not None
    assert reading.reason.code == SEGMENTATION


# --------------------------------------------------------------------------- the cut choice


def lattice(
    spans: list[tuple[int, int]],
    scores: list[float],
    widths: list[float],
    crossings: list[float],
    heights: list[float] | None = None,
) -> segment.Lattice:
    """A hand-made lattice: segments between cuts, their model scores and widths."""
    return segment.Lattice(
        spans=np.array(spans, dtype=np.int64),
        widths=np.array(widths, dtype=np.float64),
        heights=np.ones(len(spans)) if heights is None else np.array(heights, dtype=np.float64),
        crossings=np.array(crossings, dtype=np.float64),
        logs=np.log(np.array(scores, dtype=np.float64)),
    )


def test_the_path_whose_digits_read_best_wins() -> None:
    # Cuts 0..3 (1 and 2 inside): a wide group read badly whole, well as (0,1)+(1,3).
    lat = lattice(
        [(0, 3), (0, 1), (1, 3), (0, 2), (2, 3)],
        [0.3, 0.98, 0.97, 0.6, 0.5],
        [1.6, 0.6, 0.8, 1.0, 0.4],
        [0.0, 1.0, 1.0, 0.0],
    )
    path = segment.best_path(lat)
    assert path.segments == (1, 2)
    assert path.margin > 0


def test_the_number_of_digits_comes_out_of_the_path() -> None:
    # Three digit-wide segments in a row beat any wider reading of two or one.
    spans = [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3)]
    lat = lattice(
        spans, [0.99, 0.99, 0.99, 0.9, 0.9, 0.9], [0.7] * 3 + [1.4] * 2 + [2.1], [0, 1, 1, 0]
    )
    assert len(segment.best_path(lat).segments) == 3


def test_a_confident_digit_of_ordinary_width_stays_whole() -> None:
    # A wide 0 whose halves read as two confident 1s: cutting it crosses two strokes, and
    # its width is a digit's.
    lat = lattice([(0, 2), (0, 1), (1, 2)], [0.99, 0.97, 0.97], [0.95, 0.45, 0.45], [0, 2.0, 0])
    assert segment.best_path(lat).segments == (0,)


def test_crossing_strokes_costs_a_cut() -> None:
    # Equal readings: the cut through fewer strokes (where touching digits meet) wins.
    spans = [(0, 1), (1, 3), (0, 2), (2, 3), (0, 3)]
    lat = lattice(spans, [0.95] * 4 + [0.01], [0.7] * 4 + [1.5], [0, 2.0, 0.5, 0])
    assert segment.best_path(lat).segments == (2, 3)


def test_a_fragment_is_not_a_digit() -> None:
    # A bar a third of the line's height (a 5's detached top) reads confidently as a 7 on its
    # own: it is still not a digit.
    lat = lattice(
        [(0, 2), (0, 1), (1, 2)], [0.9, 0.99, 0.99], [0.7, 0.5, 0.6], [0, 0, 0], [1, 0.3, 0.8]
    )
    assert segment.best_path(lat).segments == (0,)


def test_pieces_a_path_parts_do_not_interleave() -> None:
    # Two slanted bars sharing columns: no row has the left one's ink right of the right's.
    left = np.zeros((40, 60), bool)
    right = np.zeros((40, 60), bool)
    for r in range(40):
        left[r, 20 + r // 2 : 24 + r // 2] = True
        right[r, 30 + r // 2 : 34 + r // 2] = True
    assert segment._interleaved_rows(left, right) == 0
    # A bar through a stem: the rows of the bar interleave.
    stem = np.zeros((40, 60), bool)
    stem[:, 30:34] = True
    bar = np.zeros((40, 60), bool)
    bar[18:22, 10:45] = True
    assert segment._interleaved_rows(bar, stem) == 4


def test_seams_follow_the_gap_between_slanted_digits() -> None:
    # Two slanted bars with a slanted gap between them: no vertical line parts them, but a
    # seam through the gap crosses no ink.
    ink = np.zeros((60, 80), np.float32)
    cv2.line(ink, (20, 59), (40, 0), 1.0, 6)
    cv2.line(ink, (42, 59), (62, 0), 1.0, 6)
    assert all(ink[:, x].sum() > 0 for x in range(30, 45))  # every column has ink
    seams = segment._seams(ink, 0, 60, np.array([36]), band=12)
    assert seams.shape == (1, 60)
    assert float(ink[np.arange(60), seams[0]].sum()) == 0.0


def test_segment_parts_touching_digits_with_a_scorer() -> None:
    """The cut is the scorer's choice: with a scorer that likes inputs whose ink is narrow
    and dislikes wide ones, a wide pair is cut into two, where the strokes meet."""
    cov = number([2, 3], -8)

    def narrow_is_a_digit(inputs: np.ndarray) -> np.ndarray:
        out = []
        for image in inputs:
            _, _, w, h = cv2.boundingRect((image > 32).astype(np.uint8))
            out.append(0.99 if w and w <= 0.9 * h else 0.05)
        return np.array(out)

    found = segment.segment(on_paper(cov), narrow_is_a_digit)
    assert len(found.digits) == 2
    assert all(d.cut for d in found.digits)
    (a0, _, a1, _), (b0, _, b1, _) = (d.box for d in found.digits)
    assert a0 < b0 and a1 <= b1
