"""The web app through Flask's test client, and the production server as a real process.

Every endpoint, every error status (400, 404, 405, 413, 415, 422, 500), real images (MNIST
test digits as uploads, scans and canvas data URLs), and the promises around them: bad input
never gets a 500, the model is loaded once, each prediction is logged on one line, the
production server limits bodies, survives a dead worker and stops cleanly.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import io
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _imaging import png_chunk
from _web_fixtures import (
    PREDICTION_FIELDS,
    as_canvas,
    as_scan,
    assert_error,
    data_url,
    established_connections,
    multipart,
    png_bytes,
    post_image,
    running_server,
    sample_digits,
    worker_pids,
)
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from mnist_cnn import web
from mnist_cnn.checkpoint import CheckpointError
from mnist_cnn.cli import main as cli_main
from mnist_cnn.data import Split
from mnist_cnn.model import MNISTCNN, count_parameters
from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Predictor, Unsure
from mnist_cnn.web import MAX_UPLOAD_BYTES, WebConfig, create_app, state

STATIC = Path(web.__file__).parent / "static"


@pytest.fixture(scope="module")
def digits(test_split: Split) -> list[tuple[np.ndarray, int]]:
    """Three MNIST test digits of each class: (uint8 28x28 image, label)."""
    images = np.asarray(test_split.images)
    return [(images[i], label) for i, label in sample_digits(images, test_split.labels, 3)]


def decode_png_data_url(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))))


# --------------------------------------------------------------------------- pages


def test_index_page_has_the_controls(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for fragment in (
        '<canvas id="pad"',
        'type="file"',
        'name="image"',
        'id="bars"',
        'id="model-input"',
        'aria-live="polite"',
        'role="alert"',
        'id="clear"',
        "MNISTCNN",
    ):
        assert fragment in html, fragment
    assert html.count('class="bar"') == 10
    # The model badge shows the shipped model's recorded test accuracy.
    accuracy = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())["metrics"][
        "test_accuracy"
    ]
    assert f"{100 * accuracy:.2f}% test accuracy" in html


def test_page_and_assets_load_nothing_from_another_origin(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not re.match(r"^(https?:)?//", url), url
    for name in ("app.js", "style.css", "favicon.svg"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name
        text = response.get_data(as_text=True)
        # No script, style sheet, font or import from a URL (the SVG namespace is not a fetch).
        assert not re.search(r"(import|url\(|src=|fetch\()\s*['\"]?(https?:)?//", text), name
    csp = client.get("/").headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp


def test_unknown_page_is_a_404_page_and_unknown_api_path_is_json(client: FlaskClient) -> None:
    page = client.get("/no-such-page")
    assert page.status_code == 404
    assert page.mimetype == "text/html"
    assert "Not Found" in page.get_data(as_text=True)
    assert_error(client.get("/api/no-such-endpoint"), 404, "not_found")


def test_wrong_method_is_a_json_405_with_allow(client: FlaskClient) -> None:
    response = client.get("/api/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.post("/api/health"), 405, "method_not_allowed")


# --------------------------------------------------------------------------- health and model


def test_health(client: FlaskClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["model"] == SHIPPED_MODEL.name
    assert body["uptime_s"] >= 0


def test_model_reports_the_checkpoint_metadata(client: FlaskClient) -> None:
    body = client.get("/api/model").get_json()
    meta = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())
    assert body["architecture"] == meta["architecture"] == "MNISTCNN"
    assert body["file"] == SHIPPED_MODEL.name
    assert body["backend"] == "torch"
    assert body["parameters"] == count_parameters(MNISTCNN())
    assert body["test_accuracy"] == meta["metrics"]["test_accuracy"]
    assert body["input"] == {"mean": meta["input"]["mean"], "std": meta["input"]["std"]}
    assert body["metadata"]["weights_sha256"] == meta["weights_sha256"]
    assert body["metadata"]["dataset"] == meta["dataset"]
    # The per-epoch history is left out, and nothing discloses the server's directories.
    assert "history" not in body["metadata"]
    assert str(SHIPPED_MODEL.parent) not in json.dumps(body)


# --------------------------------------------------------------------------- predictions


def test_upload_of_mnist_digits_matches_the_library_and_the_labels(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]], shipped_predictor: Predictor
) -> None:
    correct = 0
    for image, label in digits:
        png = png_bytes(image)
        response = post_image(client, png)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        expected = shipped_predictor.predict(png)
        # The web app answers exactly what the library answers...
        assert body["digit"] == expected.digit
        assert body["probabilities"] == pytest.approx(list(expected.probabilities), abs=1e-5)
        assert np.array_equal(decode_png_data_url(body["input_28x28"]), expected.model_input)
        correct += body["digit"] == label
    # ... and that is the real model: these are easy test digits for a 99% model.
    assert correct >= len(digits) - 1, f"{correct}/{len(digits)}"


def test_prediction_response_shape(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]]
) -> None:
    image, label = digits[0]
    body = post_image(client, png_bytes(image)).get_json()
    assert list(body) == PREDICTION_FIELDS
    assert body["digit"] == label
    # A clear MNIST test digit: the model is sure, and says so.
    assert body["status"] == "ok" and body["reason"] is None
    probabilities = body["probabilities"]
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert body["confidence"] == pytest.approx(max(probabilities))
    assert probabilities.index(max(probabilities)) == body["digit"]
    top3 = body["top3"]
    # Probabilities are rounded to 6 decimals, so a confident model's runners-up may tie at 0:
    # compare the top-3 probabilities, and check each top-3 digit carries its own probability.
    assert [t["probability"] for t in top3] == sorted(probabilities, reverse=True)[:3]
    assert all(probabilities[t["digit"]] == t["probability"] for t in top3)
    assert top3[0]["probability"] >= top3[1]["probability"] >= top3[2]["probability"]
    seen = decode_png_data_url(body["input_28x28"])
    assert seen.shape == (28, 28) and seen.dtype == np.uint8 and seen.max() > 200
    assert body["model"] == {
        "architecture": "MNISTCNN",
        "description": "MNISTCNN",
        "members": 1,
        "member_architecture": None,
        "tta": False,
        "file": SHIPPED_MODEL.name,
        "backend": "torch",
        "test_accuracy": client.get("/api/model").get_json()["test_accuracy"],
    }
    assert 0 < body["elapsed_ms"] < 10_000


@pytest.mark.parametrize(
    "style",
    [
        {},  # white ink on black, as the page draws by default
        {"invert": True},  # black ink on white ("Invert colours")
        {"transparent": True},  # white ink on a transparent canvas
    ],
    ids=["white-on-black", "black-on-white", "transparent"],
)
def test_canvas_data_url(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]], style: dict[str, bool]
) -> None:
    correct = 0
    sample = digits[::3]  # one of each class
    for image, label in sample:
        response = client.post("/api/predict", json={"image": data_url(as_canvas(image, **style))})
        assert response.status_code == 200, response.get_data(as_text=True)
        correct += response.get_json()["digit"] == label
    assert correct >= len(sample) - 1, f"{correct}/{len(sample)}"


def test_scanned_jpeg_upload(client: FlaskClient, digits: list[tuple[np.ndarray, int]]) -> None:
    sample = digits[1::3]
    correct = sum(
        post_image(client, as_scan(image), name="scan.jpg").get_json()["digit"] == label
        for image, label in sample
    )
    assert correct >= len(sample) - 1, f"{correct}/{len(sample)}"


def test_other_ways_to_send_an_image(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]]
) -> None:
    image, label = digits[5]
    png = png_bytes(image)
    # The raw bytes as the body (curl --data-binary).
    raw = client.post("/api/predict", data=png, content_type="image/png")
    assert raw.status_code == 200 and raw.get_json()["digit"] == label
    octets = client.post("/api/predict", data=png, content_type="application/octet-stream")
    assert octets.status_code == 200 and octets.get_json()["digit"] == label
    # A data URL in a form field; bare base64 in JSON; base64 wrapped at 76 columns.
    form = client.post("/api/predict", data={"image": data_url(png)})
    assert form.status_code == 200 and form.get_json()["digit"] == label
    bare = client.post("/api/predict", json={"image": base64.b64encode(png).decode()})
    assert bare.status_code == 200 and bare.get_json()["digit"] == label
    wrapped = base64.encodebytes(png).decode()
    assert "\n" in wrapped
    response = client.post("/api/predict", json={"image": "data:image/png;base64," + wrapped})
    assert response.status_code == 200 and response.get_json()["digit"] == label


def test_each_prediction_is_logged_on_one_line(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]], caplog: pytest.LogCaptureFixture
) -> None:
    image, _ = digits[7]
    with caplog.at_level(logging.INFO, logger="mnist_cnn.web"):
        body = post_image(client, png_bytes(image)).get_json()
        client.get("/api/health")
    lines = [r.getMessage() for r in caplog.records if r.name == "mnist_cnn.web"]
    assert len(lines) == 1 and "\n" not in lines[0]
    line = lines[0]
    assert f"digit={body['digit']}" in line
    assert f"confidence={body['confidence']:.4f}" in line
    assert f"status={body['status']} " in line
    top3 = ",".join(f"{t['digit']}:{t['probability']:.4f}" for t in body["top3"])
    assert f"top3={top3}" in line
    assert re.search(r"elapsed_ms=\d+\.\d", line)
    assert f"model={SHIPPED_MODEL.name}" in line


def test_not_sure_is_an_answer_with_its_reason(
    client: FlaskClient,
    digits: list[tuple[np.ndarray, int]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Whatever the Predictor's own decision, flag every prediction as unsure: the API must
    # carry the status and the reason, answer 200, and log them.
    reason = Unsure("ambiguous", "it could be a 4 or a 9")
    predict = Predictor.predict
    monkeypatch.setattr(
        Predictor,
        "predict",
        lambda self, image: dataclasses.replace(predict(self, image), reason=reason),
    )
    image, label = digits[4]
    with caplog.at_level(logging.INFO, logger="mnist_cnn.web"):
        response = post_image(client, png_bytes(image))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "unsure"
    assert body["reason"] == {"code": "ambiguous", "message": "it could be a 4 or a 9"}
    # Still the model's answer: the digit it looks most like and every probability.
    assert body["digit"] == label and len(body["probabilities"]) == 10
    assert body["input_28x28"].startswith("data:image/png;base64,")
    lines = [r.getMessage() for r in caplog.records if r.name == "mnist_cnn.web"]
    assert len(lines) == 1 and "status=unsure reason=ambiguous " in lines[0]
    # The same through a canvas data URL, as the page sends it.
    drawn = client.post("/api/predict", json={"image": data_url(as_canvas(image))})
    assert drawn.status_code == 200 and drawn.get_json()["status"] == "unsure"


# --------------------------------------------------------------------------- errors


def test_400_for_requests_without_a_readable_image(client: FlaskClient) -> None:
    assert_error(client.post("/api/predict"), 400, "missing_image")
    other_field = post_image(client, b"\x89PNG...", field="file")
    assert_error(other_field, 400, "missing_image")
    assert_error(post_image(client, b""), 400, "empty_image")
    assert_error(
        client.post("/api/predict", data="{not json", content_type="application/json"),
        400,
        "malformed_json",
    )
    assert_error(client.post("/api/predict", json={"picture": "x"}), 400, "missing_image")
    assert_error(
        client.post("/api/predict", json=["data:image/png;base64,AAAA"]), 400, "missing_image"
    )
    assert_error(client.post("/api/predict", json={"image": 42}), 400, "bad_data_url")
    assert_error(
        client.post("/api/predict", json={"image": "data:image/png;base64,@@not-base64@@"}),
        400,
        "bad_base64",
    )
    assert_error(
        client.post("/api/predict", json={"image": "data:image/png;base64,AAA"}), 400, "bad_base64"
    )
    assert_error(
        client.post("/api/predict", json={"image": "data:image/png,%89PNG"}), 400, "bad_data_url"
    )
    assert_error(
        client.post("/api/predict", json={"image": "data:image/png;base64"}), 400, "bad_data_url"
    )
    assert_error(
        client.post("/api/predict", json={"image": "data:image/png;base64,"}), 400, "empty_image"
    )
    assert_error(
        client.post("/api/predict", data=b"", content_type="image/png"), 400, "missing_image"
    )
    assert_error(
        client.post("/api/predict", data=b"garbage", content_type="multipart/form-data"),
        400,
        "malformed_body",
    )
    truncated = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nab'
    assert_error(
        client.post(
            "/api/predict", data=truncated, content_type="multipart/form-data; boundary=xyz"
        ),
        400,
        "missing_image",
    )


def test_413_for_a_body_over_the_limit(client: FlaskClient) -> None:
    too_big = b"\0" * (MAX_UPLOAD_BYTES + 1)
    error = assert_error(post_image(client, too_big), 413, "too_large")
    assert "10 MB" in error["message"]
    assert_error(
        client.post("/api/predict", data=too_big, content_type="image/png"), 413, "too_large"
    )
    huge_json = json.dumps({"image": "data:image/png;base64," + "A" * MAX_UPLOAD_BYTES})
    assert_error(
        client.post("/api/predict", data=huge_json, content_type="application/json"),
        413,
        "too_large",
    )


def test_415_for_what_is_not_a_supported_image(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]]
) -> None:
    assert_error(
        post_image(client, b"just some notes\n", name="notes.txt"), 415, "unsupported_image"
    )
    png = png_bytes(digits[0][0])
    assert_error(post_image(client, png[: len(png) // 2]), 415, "unsupported_image")  # truncated
    assert_error(
        client.post("/api/predict", json={"image": data_url(b"%PDF-1.4 not an image")}),
        415,
        "unsupported_image",
    )
    assert_error(
        client.post("/api/predict", data=b"hello", content_type="text/plain"),
        415,
        "unsupported_media_type",
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def test_422_for_an_image_without_a_digit_or_over_the_pixel_cap(client: FlaskClient) -> None:
    black = png_bytes(np.zeros((280, 280), dtype=np.uint8))
    error = assert_error(
        client.post("/api/predict", json={"image": data_url(black)}), 422, "no_digit"
    )
    assert "digit" in error["message"]
    white = png_bytes(np.full((64, 64), 255, dtype=np.uint8))
    assert_error(post_image(client, white), 422, "no_digit")
    # 60,000 x 60,000 pixels claimed by a 50-byte file: refused from the header.
    assert_error(post_image(client, _png_header_only(60_000, 60_000)), 422, "image_too_large")
    assert_error(post_image(client, _png_header_only(8_000, 6_000)), 422, "image_too_large")


def test_garbage_never_gets_a_500(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]]
) -> None:
    rng = np.random.default_rng(0)
    png = png_bytes(digits[3][0])
    bodies = [rng.bytes(n) for n in (1, 7, 64, 1000)]
    bodies += [png[:n] for n in (8, 16, 33, 60, len(png) - 1)]
    flipped = bytearray(png)
    for i in rng.integers(8, len(png), size=20):
        flipped[i] ^= 0xFF
    bodies.append(bytes(flipped))
    bodies += [b"GIF89a" + rng.bytes(100), b"BM" + rng.bytes(100), b"\xff\xd8\xff" + rng.bytes(200)]
    for body in bodies:
        for response in (
            post_image(client, body),
            client.post("/api/predict", json={"image": data_url(body)}),
        ):
            # Damaged data may still decode to some picture (a 200); it is never a 500.
            assert response.status_code in (200, 400, 415, 422), (body[:20], response.get_data())
            assert ("error" in response.get_json()) == (response.status_code != 200)
    for text in ("", "{}", "[]", "null", '{"image": null}', '{"image": ["a"]}', "\xff\xfe"):
        response = client.post("/api/predict", data=text, content_type="application/json")
        assert response.status_code == 400, text


def test_500_is_json_logged_and_the_app_keeps_serving(
    app: Flask,
    client: FlaskClient,
    digits: list[tuple[np.ndarray, int]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    predictor = state(app).predictor

    def broken(image: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(predictor, "predict", broken)
    with caplog.at_level(logging.ERROR, logger="mnist_cnn.web"):
        error = assert_error(post_image(client, png_bytes(digits[0][0])), 500, "internal_error")
    assert "secret" not in error["message"]  # internals stay in the log...
    assert any("secret internal detail" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert post_image(client, png_bytes(digits[0][0])).status_code == 200  # ...and the app is fine


# --------------------------------------------------------------------------- the model, once


def test_the_model_is_loaded_once_per_process(
    app: Flask,
    client: FlaskClient,
    digits: list[tuple[np.ndarray, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(Predictor, "from_checkpoint", no_loading)
    for image, _ in digits[:3]:
        assert post_image(client, png_bytes(image)).status_code == 200
    second = create_app(WebConfig(model_path=SHIPPED_MODEL))
    assert state(second).predictor is state(app).predictor


def test_the_onnx_backend_serves_the_same_answers(
    client: FlaskClient, digits: list[tuple[np.ndarray, int]]
) -> None:
    pytest.importorskip("onnxruntime")
    onnx = create_app(WebConfig(model_path=SHIPPED_MODEL, backend="onnx")).test_client()
    assert onnx.get("/api/model").get_json()["backend"] == "onnx"
    for image, _ in digits[::6]:
        png = png_bytes(image)
        expected = post_image(client, png).get_json()
        answer = post_image(onnx, png).get_json()
        assert answer["digit"] == expected["digit"]
        assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)
        assert answer["model"]["backend"] == "onnx"


def test_a_missing_model_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        create_app(WebConfig(model_path=tmp_path / "nothing.pth"))


def test_a_smaller_upload_limit_applies(digits: list[tuple[np.ndarray, int]]) -> None:
    small = create_app(WebConfig(model_path=SHIPPED_MODEL, max_upload_bytes=2000)).test_client()
    png = png_bytes(digits[0][0])
    assert len(png) < 1500
    assert post_image(small, png).status_code == 200
    error = assert_error(post_image(small, png + b"\0" * 2000), 413, "too_large")
    assert "1.95 kB" in error["message"]


# --------------------------------------------------------------------------- the CLI


def test_serve_help_shows_the_options(cli_help: Callable[..., str]) -> None:
    out = cli_help("serve")
    for fragment in (
        "--host HOST",
        "(default: 127.0.0.1)",
        "--port PORT",
        "(default: 5000)",
        "--workers WORKERS",
        "--threads THREADS",
        "--model MODEL",
        "--max-request-mb",
    ):
        assert fragment in out, fragment


def test_serve_reports_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", "--model", str(tmp_path / "missing.pth"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "mnist-cnn: error:" in err and "not found" in err and "Traceback" not in err


def test_serve_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_main(["serve", "--port", str(port), "--workers", "1"]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


# --------------------------------------------------------------------------- production server


@pytest.mark.slow  # the real server, its workers forked
@pytest.mark.skipif(not hasattr(os, "fork"), reason="multi-worker serving needs fork")
def test_production_server_end_to_end(digits: list[tuple[np.ndarray, int]]) -> None:
    with running_server("--workers", "2", "--threads", "2") as server:
        status, _, body = server.request("GET", "/")
        assert status == 200 and b'<canvas id="pad"' in body
        assert "2 workers x 2 threads" in server.log()
        # `mnist-cnn serve` replaced itself by a clean interpreter: the modules of the other
        # sub-commands (training imports matplotlib) do not stay resident in the server.
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "torch" in maps and "matplotlib" not in maps

        # Concurrent requests over both workers give the answers a sequential client gets.
        pngs = [png_bytes(image) for image, _ in digits]

        def ask(png: bytes) -> int:
            payload, content_type = multipart(png)
            status, _, raw = server.request(
                "POST", "/api/predict", payload, {"Content-Type": content_type}
            )
            assert status == 200, raw
            return json.loads(raw)["digit"]

        sequential = [ask(png) for png in pngs[:10]]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            concurrent_answers = list(pool.map(ask, pngs[:10] * 3))
        assert concurrent_answers == sequential * 3
        assert sum(d == label for d, (_, label) in zip(sequential, digits, strict=False)) >= 9

        # The production server refuses a body over the limit from its Content-Length,
        # before reading it; one just over Flask's limit gets the API's JSON 413.
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw_socket:
            raw_socket.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: %d\r\n\r\n" % (1024 * 1024 * 1024)
            )
            assert raw_socket.recv(100).startswith(b"HTTP/1.1 413")
        status, _, raw = server.request(
            "POST", "/api/predict", b"\0" * (MAX_UPLOAD_BYTES + 10), {"Content-Type": "image/png"}
        )
        assert status == 413 and json.loads(raw)["error"]["code"] == "too_large"

        # Keep-alive connections are shared out evenly (least connections first), not
        # left to whichever worker wins the race for the shared socket.
        clients = []
        for _ in range(8):
            client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            client.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")
            clients.append(client)
        per_worker = established_connections(server.port, worker_pids(server.process.pid))
        assert sorted(per_worker.values()) == [4, 4], per_worker
        for client in clients:
            client.close()

        # A worker that dies is replaced; the server keeps answering meanwhile.
        workers = worker_pids(server.process.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = worker_pids(server.process.pid)
            if len(current) == 2 and workers[0] not in current:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the dead worker was not replaced:\n{server.log()}")
        for _ in range(4):
            assert server.request("GET", "/api/health")[0] == 200
        assert re.search(r"worker \d+ exited", server.log())

        # Predictions are logged by the workers, one line each.
        assert len(re.findall(r"prediction digit=\d confidence=", server.log())) >= 40

        # SIGTERM stops every process.
        workers = worker_pids(server.process.pid)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers), "workers outlived the server"


@pytest.mark.slow  # the real server, its workers forked
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_do_not_outlive_a_killed_server() -> None:
    with running_server("--workers", "2") as server:
        workers = worker_pids(server.process.pid)
        assert len(workers) == 2
        server.process.kill()  # SIGKILL: the supervisor gets no chance to stop them
        server.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers), "orphaned workers kept serving"


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies excepted)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive
