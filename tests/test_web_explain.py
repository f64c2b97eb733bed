"""``POST /api/explain``, the page's "Look inside" panel, through Flask's test client.

It takes every image form ``/api/predict`` takes and answers with the same statuses; its
answer carries the prediction as ``/api/predict`` gives it, the preprocessing's stages, the
occlusion saliency and the first feature maps as PNG data URLs. The saliency of a digit drawn
by hand lies on its strokes, read back from the very picture the page shows. ``/api/predict``
never computes an explanation.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _imaging import png_chunk
from _web_fixtures import (
    PREDICTION_FIELDS,
    REPO_ROOT,
    as_canvas,
    as_scan,
    assert_error,
    data_url,
    picture,
    png_bytes,
    post_image,
    sample_digits,
)
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image, ImageDraw

from mnist_cnn import explain
from mnist_cnn.data import Split
from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.preprocess import STAGES
from mnist_cnn.web import MAX_UPLOAD_BYTES, WebConfig, api, create_app, state


@pytest.fixture(scope="module")
def digits(test_split: Split) -> list[tuple[np.ndarray, int]]:
    """One MNIST test digit of each class: (uint8 28x28 image, label)."""
    images = np.asarray(test_split.images)
    return [(images[i], label) for i, label in sample_digits(images, test_split.labels, 1)]


def drawn(strokes: list[list[tuple[float, float]]], side: int = 280) -> bytes:
    """A digit drawn by hand, as the page's pad has it: white strokes 20 pixels wide on a
    black ``side`` x ``side`` canvas (points are fractions of the side), as a PNG."""
    canvas = Image.new("L", (side, side), 0)
    pen = ImageDraw.Draw(canvas)
    for stroke in strokes:
        points = [(x * side, y * side) for x, y in stroke]
        pen.line(points, fill=255, width=20, joint="curve")
        for x, y in (points[0], points[-1]):  # round ends, as a pen's
            pen.ellipse((x - 10, y - 10, x + 10, y + 10), fill=255)
    return png_bytes(canvas)


SEVEN = [[(0.28, 0.22), (0.72, 0.22), (0.45, 0.82)]]
FOUR = [[(0.6, 0.85), (0.6, 0.15), (0.25, 0.6), (0.75, 0.6)]]


def explain_file(client: FlaskClient, data: bytes, name: str = "digit.png") -> Any:
    return post_image(client, data, "/api/explain", name)


# --------------------------------------------------------------------------- the answer


def test_the_answer_has_the_prediction_the_stages_the_saliency_and_the_feature_maps(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]]
) -> None:
    image, label = digits[7]
    body_in = {"image": data_url(as_canvas(image))}
    response = client.post("/api/explain", json=body_in)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert (
        list(body)
        == [
            *PREDICTION_FIELDS[:-2],  # the prediction, as /api/predict has it
            "stages",
            "saliency",
            "activations",
            *PREDICTION_FIELDS[-2:],  # model, elapsed_ms
        ]
    )
    # The prediction is /api/predict's, field for field (the time apart).
    predicted = client.post("/api/predict", json=body_in).get_json()
    for key in ("digit", "confidence", "status", "reason", "probabilities", "top3"):
        assert body[key] == predicted[key], key
    assert body["input_28x28"] == predicted["input_28x28"]
    assert body["model"] == predicted["model"]
    assert body["digit"] == label
    model_input = picture(body["input_28x28"])

    # The image as given, then every stage of the preprocessing, in order, with its label.
    stages = body["stages"]
    assert [s["name"] for s in stages] == ["original", *STAGES]
    assert [s["label"] for s in stages] == [explain.STAGE_LABELS[s["name"]] for s in stages]
    for stage in stages:
        pixels = picture(stage["png"])
        assert pixels.dtype == np.uint8
        assert (stage["width"], stage["height"]) == (pixels.shape[1], pixels.shape[0])
        # Small stages are enlarged to be seen; none is larger than a phone's screen.
        assert api.STAGE_MIN_SIDE <= max(pixels.shape[:2]) <= api.STAGE_MAX_SIDE, stage["name"]
        assert pixels.max() > 200, f"{stage['name']} shows no ink"
    assert picture(stages[0]["png"]).shape == (280, 280, 3)  # the canvas, in colour
    # The last stage is the model's input, each pixel enlarged to an exact square.
    centred = stages[-1]
    scale = centred["scale"]
    assert scale > 1 and centred["width"] == 28 * scale
    shown = picture(centred["png"])
    assert np.array_equal(shown, np.kron(shown[::scale, ::scale], np.ones((scale, scale))))
    assert np.abs(shown[::scale, ::scale].astype(int) - model_input).max() <= 1
    # The 20x20 fit is enlarged too; stages as large as the canvas are not.
    assert next(s for s in stages if s["name"] == "fitted")["scale"] > 1
    assert stages[0]["scale"] == 1

    saliency = body["saliency"]
    assert saliency["method"] == "occlusion" and saliency["patch"] == explain.PATCH
    assert str(label) in saliency["meaning"] and "erased" in saliency["meaning"]
    assert picture(saliency["png"]).shape == (224, 224, 3)

    # The feature maps of the first two convolutions, as grids of 8 tiles a row, enlarged.
    activations = body["activations"]
    assert list(activations) == ["conv1", "conv2"]
    assert activations["conv1"]["shape"] == [32, 28, 28]
    assert activations["conv2"]["shape"] == [64, 14, 14]
    for layer in activations.values():
        channels, height, width = layer["shape"]
        rows, factor = -(-channels // 8), layer["scale"]
        assert factor in (2, 3)
        grid = picture(layer["png"])
        assert grid.shape == (factor * (rows * (height + 1) - 1), factor * (8 * (width + 1) - 1))
        assert grid.max() == 255  # scaled by the layer's strongest response
    assert 0 < body["elapsed_ms"] < 60_000


def test_every_image_form_of_predict_is_taken(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]]
) -> None:
    image, label = digits[3]
    png = png_bytes(image)
    responses = {
        "upload": explain_file(client, png),
        "scan": explain_file(client, as_scan(image), name="scan.jpg"),
        "json": client.post("/api/explain", json={"image": data_url(png)}),
        "bare base64": client.post("/api/explain", json={"image": base64.b64encode(png).decode()}),
        "form field": client.post("/api/explain", data={"image": data_url(png)}),
        "body": client.post("/api/explain", data=png, content_type="image/png"),
        "octets": client.post("/api/explain", data=png, content_type="application/octet-stream"),
    }
    for form, response in responses.items():
        assert response.status_code == 200, (form, response.get_data(as_text=True))
        assert response.get_json()["digit"] == label, form
    # The scan is a photo: dark ink on light paper, shown as it was sent.
    original = picture(responses["scan"].get_json()["stages"][0]["png"])
    assert original.shape == (112, 112, 3) and original[0, 0].min() > 200


@pytest.mark.slow  # exports the model to ONNX first
def test_the_onnx_backend_explains_without_feature_maps(
    digits: list[tuple[np.ndarray, int]],
) -> None:
    pytest.importorskip("onnxruntime")
    onnx = create_app(WebConfig(model_path=SHIPPED_MODEL, backend="onnx")).test_client()
    image, label = digits[2]
    body = explain_file(onnx, png_bytes(image)).get_json()
    assert body["digit"] == label and body["model"]["backend"] == "onnx"
    # ONNX Runtime has no layers to read: the feature maps are left out, the rest is there.
    assert "activations" not in body
    assert [s["name"] for s in body["stages"]] == ["original", *STAGES]
    assert picture(body["saliency"]["png"]).shape == (224, 224, 3)


def test_each_explanation_is_logged_on_one_line(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]], caplog: pytest.LogCaptureFixture
) -> None:
    image, _ = digits[5]
    with caplog.at_level(logging.INFO, logger="mnist_cnn.web"):
        body = explain_file(client, png_bytes(image)).get_json()
    lines = [r.getMessage() for r in caplog.records if r.name == "mnist_cnn.web"]
    assert len(lines) == 1 and "\n" not in lines[0]
    # Not a "prediction" line: those count predictions (the benchmarks read them).
    assert lines[0].startswith(f"explanation digit={body['digit']} ")
    assert "source=upload" in lines[0] and f"model={SHIPPED_MODEL.name}" in lines[0]


# --------------------------------------------------------------------------- the saliency


def on_ink(body: dict[str, Any]) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """From the pictures the page shows: (the share of the evidence for the answer on the
    input's strokes, the evidence for it, against it (both 28x28), the model's input).

    The overlay paints red (1, 0.15, 0.1) over a gray base in proportion to the evidence
    for the answer, and blue (0.15, 0.4, 1) in proportion to the evidence against: red minus
    green is therefore proportional to the first, blue minus red to the second.
    """
    overlay = picture(body["saliency"]["png"]).astype(int)
    scale = overlay.shape[0] // 28
    cells = overlay[::scale, ::scale]
    evidence_for = np.clip(cells[..., 0] - cells[..., 1], 0, None).astype(np.float32)
    evidence_against = np.clip(cells[..., 2] - cells[..., 0], 0, None).astype(np.float32)
    model_input = picture(body["input_28x28"])
    share = explain.saliency_on_ink(evidence_for, model_input)
    return share, evidence_for, evidence_against, model_input


@pytest.mark.parametrize(("strokes", "digit"), [(SEVEN, 7), (FOUR, 4)], ids=["seven", "four"])
def test_the_saliency_of_a_hand_drawn_digit_lies_on_its_strokes(
    client: FlaskClient, app: Flask, strokes: list, digit: int
) -> None:
    png = drawn(strokes)
    body = client.post("/api/explain", json={"image": data_url(png)}).get_json()
    assert body["digit"] == digit and body["status"] == "ok"
    share, evidence_for, evidence_against, model_input = on_ink(body)
    # What the page shows: most of the evidence for the answer is on the strokes...
    assert share >= 0.7, f"only {share:.0%} of the evidence is on the ink"
    # ... and a sure answer has far more evidence for it than against it.
    assert evidence_against.sum() < 0.25 * evidence_for.sum()
    # The picture is the library's saliency, drawn: the same share, from the numbers.
    library = explain.explain(state(app).predictor, png)
    exact = explain.saliency_on_ink(library.saliency, library.prediction.model_input)
    assert share == pytest.approx(exact, abs=0.03)
    assert np.array_equal(library.prediction.model_input, model_input)

    # Controls the check must fail: the same map moved off the strokes, and a map that
    # looks everywhere alike, score far lower.
    moved = np.roll(evidence_for, 14, axis=1)
    assert explain.saliency_on_ink(moved, model_input) < 0.4
    uniform = np.ones_like(evidence_for)
    assert explain.saliency_on_ink(uniform, model_input) < 0.4


# --------------------------------------------------------------------------- errors


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def test_400_for_requests_without_a_readable_image(client: FlaskClient) -> None:
    assert_error(client.post("/api/explain"), 400, "missing_image")
    assert_error(explain_file(client, b""), 400, "empty_image")
    assert_error(
        client.post("/api/explain", data="{not json", content_type="application/json"),
        400,
        "malformed_json",
    )
    assert_error(client.post("/api/explain", json={"picture": "x"}), 400, "missing_image")
    assert_error(
        client.post("/api/explain", json={"image": "data:image/png;base64,@@"}), 400, "bad_base64"
    )
    assert_error(
        client.post("/api/explain", data=b"garbage", content_type="multipart/form-data"),
        400,
        "malformed_body",
    )


def test_405_for_get(client: FlaskClient) -> None:
    response = client.get("/api/explain")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_413_for_a_body_over_the_limit(client: FlaskClient) -> None:
    too_big = b"\0" * (MAX_UPLOAD_BYTES + 1)
    assert_error(explain_file(client, too_big), 413, "too_large")
    huge_json = json.dumps({"image": "data:image/png;base64," + "A" * MAX_UPLOAD_BYTES})
    assert_error(
        client.post("/api/explain", data=huge_json, content_type="application/json"),
        413,
        "too_large",
    )


def test_415_for_what_is_not_an_image(client: FlaskClient) -> None:
    assert_error(explain_file(client, b"just some notes\n", "notes.txt"), 415, "unsupported_image")
    assert_error(
        client.post("/api/explain", data=b"hello", content_type="text/plain"),
        415,
        "unsupported_media_type",
    )


def test_422_for_an_image_without_a_digit_or_over_the_pixel_cap(client: FlaskClient) -> None:
    black = png_bytes(np.zeros((280, 280), dtype=np.uint8))
    assert_error(client.post("/api/explain", json={"image": data_url(black)}), 422, "no_digit")
    assert_error(explain_file(client, _png_header_only(60_000, 60_000)), 422, "image_too_large")


def test_503_when_the_large_decode_slots_are_taken(
    slots_taken: FlaskClient, digits: list[tuple[np.ndarray, int]]
) -> None:
    response = explain_file(slots_taken, png_bytes(digits[1][0]))
    assert_error(response, 503, "busy")
    assert response.headers["Retry-After"]


# --------------------------------------------------------------------------- large images


def test_a_large_image_is_explained_from_the_working_copy_with_the_same_answer(
    client: FlaskClient, app: Flask
) -> None:
    # A red 7 on white, over 16 MB to decode (4.4 MP RGBA): decoded once, as /api/predict
    # decodes it, to gray.
    seven = Image.new("RGBA", (2100, 2100), (255, 255, 255, 255))
    pen = ImageDraw.Draw(seven)
    pen.line([(600, 500), (1500, 500), (900, 1700)], fill=(200, 0, 0, 255), width=120)
    big = png_bytes(seven)
    assert api.estimate_decode_bytes(big, max_side=api.WORK_SIDE) > (
        state(app).config.large_decode_bytes
    )
    explained = client.post("/api/explain", data=big, content_type="image/png")
    assert explained.status_code == 200, explained.get_data(as_text=True)
    body = explained.get_json()
    predicted = client.post("/api/predict", data=big, content_type="image/png").get_json()
    for key in ("digit", "confidence", "status", "reason", "probabilities", "top3", "input_28x28"):
        assert body[key] == predicted[key], key
    assert body["digit"] == 7
    # The image as sent is shown from the working copy: gray, small.
    original = picture(body["stages"][0]["png"])
    assert max(original.shape[:2]) <= api.STAGE_MAX_SIDE
    assert original.ndim == 3 and (original == original[..., :1]).all()
    # A small image keeps its colours: a red digit on white stays red.
    red = np.full((64, 64, 3), 255, np.uint8)
    red[12:52, 28:36] = (220, 0, 0)
    red[12:20, 20:36] = (220, 0, 0)
    small = client.post("/api/explain", data=png_bytes(red), content_type="image/png").get_json()
    shown = picture(small["stages"][0]["png"])
    assert shown.ndim == 3 and (shown[..., 0].astype(int) - shown[..., 1]).max() > 150


# The peak memory of explaining an image beyond that of predicting it (the same process:
# ru_maxrss is a high-water mark, and the prediction sets it first).
_PEAK_SCRIPT = """
import resource, sys
from mnist_cnn.web import WebConfig, create_app
client = create_app(WebConfig(log_predictions=False)).test_client()
data = open(sys.argv[1], "rb").read()
predicted = client.post("/api/predict", data=data, content_type="image/png")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
explained = client.post("/api/explain", data=data, content_type="image/png")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, predicted.status_code, explained.status_code)
"""


@pytest.mark.slow  # a 36-megapixel image, decoded in a fresh interpreter
def test_explaining_a_36_megapixel_png_takes_the_memory_predicting_it_takes(
    tmp_path: Path,
) -> None:
    # Decoded again in colour for the picture of the image as sent, it took 1.75 GB more.
    path = tmp_path / "big.png"
    image = Image.new("RGBA", (6000, 6000), (255, 255, 255, 255))
    ImageDraw.Draw(image).line([(2500, 1500), (3500, 4500)], fill=(0, 0, 0, 255), width=250)
    image.save(path)
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        check=True,
    ).stdout.split()
    assert out[1:] == ["200", "200"], out
    assert float(out[0]) < 200, f"explaining took {out[0]} MB more than predicting"


# --------------------------------------------------------------------------- predict stays lean


def test_predict_never_explains(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an explanation was computed")

    monkeypatch.setattr(api, "explain", forbidden)
    monkeypatch.setattr(explain, "occlusion", forbidden)
    monkeypatch.setattr(explain, "feature_maps", forbidden)
    png = png_bytes(digits[0][0])
    response = client.post("/api/predict", data=png, content_type="image/png")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "stages" not in response.get_json()
    # The patch does bite where an explanation is computed.
    assert client.post("/api/explain", data=png, content_type="image/png").status_code == 500


def test_the_page_has_the_look_inside_panel(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    # A closed <details>: keyboard-accessible without script, nothing asked until opened.
    assert '<details class="inside" id="inside">' in html
    assert "<summary>Look inside the model</summary>" in html
    for fragment in ('id="inside-stages"', 'id="inside-saliency"', 'id="inside-activations"'):
        assert fragment in html, fragment
    assert "POST /api/explain" in html
