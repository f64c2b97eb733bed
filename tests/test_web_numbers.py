"""``POST /api/predict`` in number mode, through Flask's test client.

A number written with OpenCV's stroke font or drawn as the page's wide pad draws it is read
digit by digit, whichever way the mode is sent (a JSON field, a form field, ``?mode=``); each
digit comes with its box (which holds its ink), its 28x28 input (the library's own) and its
confidence. A single digit is a one-digit number. The errors and statuses are those of the
single-digit mode, an unknown mode is a 400, and the default mode's answer is unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
from typing import Any

import cv2
import numpy as np
import pytest
from _imaging import png_chunk
from _web_fixtures import (
    PREDICTION_FIELDS,
    assert_error,
    data_url,
    picture,
    png_bytes,
    post_image,
)
from flask.testing import FlaskClient
from PIL import Image, ImageDraw

from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Predictor
from mnist_cnn.web import MAX_UPLOAD_BYTES

# The fields of the number-mode answer, and of each of its digits, in order (the single-digit
# answer, PREDICTION_FIELDS, must not change in number mode).
NUMBER_FIELDS = [
    "mode",
    "number",
    "confidence",
    "status",
    "reason",
    "digits",
    "image",
    "model",
    "elapsed_ms",
]
PER_DIGIT_FIELDS = [
    "digit",
    "confidence",
    "status",
    "reason",
    "probabilities",
    "top3",
    "box",
    "input_28x28",
]


def written(text: str, height: int = 200, scale: float = 4.0, thickness: int = 12) -> np.ndarray:
    """``text`` in OpenCV's Hershey stroke font, black on white, with a margin all round."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (width, text_height), _ = cv2.getTextSize(text, font, scale, thickness)
    image = np.full((height, width + 60), 255, np.uint8)
    cv2.putText(image, text, (30, (height + text_height) // 2), font, scale, 0, thickness)
    return image


# A "4" and a "2" as a hand draws them on the page's 840x280 number pad (fractions of its
# width and height), side by side with a gap.
FOUR = [[(0.30, 0.85), (0.30, 0.15), (0.19, 0.6), (0.34, 0.6)]]
TWO = [[(0.50, 0.3), (0.53, 0.18), (0.58, 0.15), (0.63, 0.2), (0.64, 0.33), (0.50, 0.85),
        (0.66, 0.85)]]  # fmt: skip


def drawn(strokes: list[list[tuple[float, float]]], size: tuple[int, int] = (840, 280)) -> bytes:
    """Strokes as the pad has them: white, 20 pixels wide, round ends, on black; a PNG."""
    width, height = size
    canvas = Image.new("L", size, 0)
    pen = ImageDraw.Draw(canvas)
    for stroke in strokes:
        points = [(x * width, y * height) for x, y in stroke]
        pen.line(points, fill=255, width=20, joint="curve")
        for x, y in (points[0], points[-1]):
            pen.ellipse((x - 10, y - 10, x + 10, y + 10), fill=255)
    return png_bytes(canvas)


def check_reading(body: dict[str, Any], ink: np.ndarray, expected: str) -> None:
    """``body`` reads ``expected``, and each digit's box holds its ink: the boxes run left to
    right without overlapping, and together cover nearly all the ink of ``ink`` (True where
    the image is ink)."""
    assert list(body) == NUMBER_FIELDS, list(body)
    assert body["mode"] == "number"
    assert body["number"] == expected, body["number"]
    assert body["status"] == "ok" and body["reason"] is None, body["reason"]
    digits = body["digits"]
    assert [d["digit"] for d in digits] == [int(c) for c in expected]
    assert body["confidence"] == pytest.approx(math.prod(d["confidence"] for d in digits), 1e-4)
    assert body["image"] == {"width": ink.shape[1], "height": ink.shape[0]}
    covered = np.zeros_like(ink)
    previous_end = -1
    for d in digits:
        assert list(d) == PER_DIGIT_FIELDS, list(d)
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= ink.shape[1] and 0 <= y0 < y1 <= ink.shape[0], d["box"]
        assert x0 >= previous_end - 2, "boxes overlap or run right to left"
        previous_end = x1
        assert ink[y0:y1, x0:x1].sum() > 0, f"no ink in the box of {d['digit']}"
        covered[y0:y1, x0:x1] = True
        assert d["top3"][0]["digit"] == d["digit"] and len(d["probabilities"]) == 10
        shown = picture(d["input_28x28"])
        assert shown.shape == (28, 28) and shown.dtype == np.uint8
    assert (covered & ink).sum() >= 0.95 * ink.sum()
    assert body["model"]["file"] == SHIPPED_MODEL.name and body["elapsed_ms"] > 0


# --------------------------------------------------------------------------- numbers read right


@pytest.mark.parametrize("text", ["2026", "42"])
def test_a_written_number_is_read_in_every_way_the_mode_is_sent(
    client: FlaskClient, shipped_predictor: Predictor, text: str
) -> None:
    image = written(text)
    png = png_bytes(image)
    answers = [
        post_image(client, png, mode="number"),
        client.post("/api/predict", json={"image": data_url(png), "mode": "number"}),
        client.post("/api/predict?mode=number", data=png, content_type="image/png"),
        client.post("/api/predict?mode=number", json={"image": data_url(png)}),
        client.post("/api/predict?mode=Number", json={"image": data_url(png), "mode": "number"}),
    ]
    bodies = []
    for response in answers:
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        check_reading(body, image < 128, text)
        bodies.append({k: v for k, v in body.items() if k != "elapsed_ms"})
    assert all(b == bodies[0] for b in bodies[1:])
    # Each digit's input is the library's own, pixel for pixel.
    reading = shipped_predictor.read_number(png)
    assert reading.number == text
    for d, shown in zip(reading.digits, bodies[0]["digits"], strict=True):
        np.testing.assert_array_equal(picture(shown["input_28x28"]), d.prediction.model_input)
        assert shown["box"] == list(d.box)


def test_a_number_drawn_on_the_wide_pad_is_read(client: FlaskClient) -> None:
    png = drawn(FOUR + TWO)
    response = client.post("/api/predict", json={"image": data_url(png), "mode": "number"})
    assert response.status_code == 200, response.get_data(as_text=True)
    ink = np.asarray(Image.open(io.BytesIO(png))) > 127
    check_reading(response.get_json(), ink, "42")
    # The same drawing in digit mode is one answer, as it always was, and not a 42.
    digit = client.post("/api/predict", json={"image": data_url(png)}).get_json()
    assert list(digit) == PREDICTION_FIELDS
    assert digit["status"] == "unsure" and digit["reason"]["code"] == "several_marks"


def test_a_single_digit_in_number_mode_is_a_one_digit_number(
    client: FlaskClient, shipped_predictor: Predictor
) -> None:
    image = written("7")
    png = png_bytes(image)
    response = post_image(client, png, mode="number")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    check_reading(body, image < 128, "7")
    # The single-digit path: the same answer and box as a prediction of that digit.
    prediction = client.post("/api/predict", data=png, content_type="image/png").get_json()
    (digit,) = body["digits"]
    for key in ("digit", "confidence", "probabilities", "top3", "input_28x28"):
        assert digit[key] == prediction[key], key
    assert digit["box"] == list(shipped_predictor.locate(png).box)


def test_boxes_are_in_the_upright_image_of_an_exif_rotated_photo(client: FlaskClient) -> None:
    image = written("42")
    # Stored as a phone stores a portrait photo: pixels a quarter turn, EXIF orientation 6
    # to turn them back. The boxes and the size are of the upright image.
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(image).rotate(90, expand=True).save(
        buffer, "JPEG", quality=95, exif=exif.tobytes()
    )
    response = client.post(
        "/api/predict?mode=number", data=buffer.getvalue(), content_type="image/jpeg"
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    check_reading(response.get_json(), image < 128, "42")


def test_the_default_mode_answers_as_before(client: FlaskClient) -> None:
    png = png_bytes(written("3"))
    plain = client.post("/api/predict", data=png, content_type="image/png").get_json()
    assert list(plain) == PREDICTION_FIELDS and plain["digit"] == 3
    for response in (
        post_image(client, png, mode="digit"),
        client.post("/api/predict", json={"image": data_url(png), "mode": "digit"}),
        client.post("/api/predict?mode=digit", data=png, content_type="image/png"),
    ):
        body = response.get_json()
        assert list(body) == PREDICTION_FIELDS
        assert {k: v for k, v in body.items() if k != "elapsed_ms"} == {
            k: v for k, v in plain.items() if k != "elapsed_ms"
        }


def test_each_reading_is_logged_on_one_line(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_cnn.web")
    post_image(client, png_bytes(written("2026")), mode="number")
    lines = [r.getMessage() for r in caplog.records if r.name == "mnist_cnn.web"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("number number=2026 confidence=0.")
    assert " status=ok digits=2:" in lines[0] and "source=upload" in lines[0]
    assert "prediction digit=" not in lines[0]  # counts of single predictions are unchanged


# --------------------------------------------------------------------------- errors


def test_400_for_an_unknown_or_conflicting_mode(client: FlaskClient) -> None:
    png = png_bytes(written("42"))
    error = assert_error(
        client.post("/api/predict?mode=words", data=png, content_type="image/png"), 400, "bad_mode"
    )
    assert '"digit" or "number"' in error["message"] and "words" in error["message"]
    assert_error(
        client.post("/api/predict", json={"image": data_url(png), "mode": "numbers"}),
        400,
        "bad_mode",
    )
    assert_error(
        client.post("/api/predict", json={"image": data_url(png), "mode": 2}), 400, "bad_mode"
    )
    assert_error(post_image(client, png, mode=""), 400, "bad_mode")
    error = assert_error(
        client.post("/api/predict?mode=digit", json={"image": data_url(png), "mode": "number"}),
        400,
        "bad_mode",
    )
    assert "mode=digit" in error["message"] and "mode=number" in error["message"]
    # The mode is checked before the image: a bad mode is said even without one.
    assert_error(client.post("/api/predict", json={"mode": "letters"}), 400, "bad_mode")
    # The explanation is of one digit.
    assert_error(
        client.post("/api/explain", json={"image": data_url(png), "mode": "number"}),
        400,
        "bad_mode",
    )
    assert client.post("/api/explain?mode=digit", json={"image": data_url(png)}).status_code == 200


def test_the_image_errors_are_those_of_digit_mode(client: FlaskClient) -> None:
    assert_error(client.post("/api/predict?mode=number"), 400, "missing_image")
    assert_error(client.post("/api/predict", json={"mode": "number"}), 400, "missing_image")
    assert_error(post_image(client, b"", mode="number"), 400, "empty_image")
    assert_error(
        client.post("/api/predict?mode=number", data="{nope", content_type="application/json"),
        400,
        "malformed_json",
    )
    assert_error(
        client.post("/api/predict", json={"image": "data:image/png;base64,@@", "mode": "number"}),
        400,
        "bad_base64",
    )
    assert_error(
        post_image(client, b"\0" * (MAX_UPLOAD_BYTES + 1), mode="number"), 413, "too_large"
    )
    huge = json.dumps(
        {"image": "data:image/png;base64," + "A" * MAX_UPLOAD_BYTES, "mode": "number"}
    )
    assert_error(
        client.post("/api/predict", data=huge, content_type="application/json"), 413, "too_large"
    )
    assert_error(post_image(client, b"just some notes\n", mode="number"), 415, "unsupported_image")
    assert_error(
        client.post("/api/predict?mode=number", data=b"hi", content_type="text/plain"),
        415,
        "unsupported_media_type",
    )
    blank = png_bytes(np.zeros((280, 840), np.uint8))
    assert_error(
        client.post("/api/predict", json={"image": data_url(blank), "mode": "number"}),
        422,
        "no_digit",
    )
    header_only = _png_header_only(60_000, 60_000)
    assert_error(post_image(client, header_only, mode="number"), 422, "image_too_large")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def test_503_when_the_large_decode_slots_are_taken(slots_taken: FlaskClient) -> None:
    response = post_image(slots_taken, png_bytes(written("42")), mode="number")
    assert_error(response, 503, "busy")
    assert response.headers["Retry-After"]


# --------------------------------------------------------------------------- the page


def test_the_page_has_the_mode_switch_and_the_number_answer(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    # Radio buttons in a fieldset with a legend: the keyboard and screen readers know them.
    assert '<fieldset class="mode-switch" id="mode-switch">' in html
    assert html.count('type="radio" name="mode"') == 2
    assert 'value="digit" id="mode-digit"' in html and "checked" in html
    for fragment in ('id="number-result"', 'id="tiles"', 'id="pad-boxes"', 'id="preview-boxes"'):
        assert fragment in html, fragment
    assert 'id="inside-note"' in html
