"""The Gradio interface: served on a loopback port and called with gradio_client, as a
browser's page would call it; its function called directly; the `mnist-cnn gradio` command.

Gradio runs offline here: analytics are off (``analytics_enabled=False``), no share link is
ever asked for, and the default theme's fonts are served by Gradio itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gradio_client  # the gradio extra: `make test` installs it, so no skip without it
import numpy as np
import pytest
from _web_fixtures import free_port
from PIL import Image

from mnist_cnn import cli, explain, gradio_app
from mnist_cnn.checkpoint import CheckpointError
from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Prediction, Predictor, Unsure


def _as_drawing(pixels: np.ndarray, path: Path) -> Path:
    """What the sketchpad sends for a digit: black ink on a transparent 280x280 canvas."""
    ink = np.asarray(Image.fromarray(pixels).resize((280, 280), Image.BILINEAR))
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    rgba[:, :, 3] = ink  # colour black, opacity from the ink
    Image.fromarray(rgba, "RGBA").save(path)
    return path


@pytest.fixture(scope="module")
def server(shipped_predictor: Predictor) -> Iterator[str]:
    demo = gradio_app.build_interface(shipped_predictor)
    url = gradio_app.launch(demo, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server: str) -> gradio_client.Client:
    return gradio_client.Client(server, verbose=False)


def _editor(path: Path | None) -> dict:
    image = gradio_client.handle_file(str(path)) if path else None
    return {"background": None, "layers": [], "composite": image}


# --------------------------------------------------------------------------- served


@pytest.mark.slow  # a Gradio server (or a fresh interpreter)
def test_the_server_listens_on_loopback_only(server: str) -> None:
    assert server.startswith("http://127.0.0.1:")


@pytest.mark.slow  # a Gradio server (or a fresh interpreter)
def test_uploads_of_real_digits_are_read_correctly(
    client: gradio_client.Client, clear_digits: list, shipped_predictor: Predictor
) -> None:
    for path, label, _ in clear_digits:
        scores, shown, message = client.predict(
            gradio_client.handle_file(str(path)), api_name="/classify_upload"
        )
        assert scores["label"] == str(label), f"{path.name} read as {scores['label']}"
        top = scores["confidences"]
        assert len(top) == gradio_app.TOP_CLASSES
        assert top[0]["label"] == str(label) and top[0]["confidence"] >= 0.5
        assert message.startswith(f"**{label}**")
        # The image shown is the model's input, each pixel an exact 8x8 square.
        image = np.asarray(Image.open(shown).convert("L"))
        scale = gradio_app.DISPLAY_SCALE
        assert image.shape == (28 * scale, 28 * scale)
        np.testing.assert_array_equal(
            image[::scale, ::scale], shipped_predictor.predict(path).model_input
        )


@pytest.mark.slow  # a Gradio server (or a fresh interpreter)
def test_drawings_of_real_digits_are_read_correctly(
    client: gradio_client.Client, clear_digits: list, tmp_path: Path
) -> None:
    for path, label, pixels in clear_digits[::2]:  # one of each class
        drawing = _as_drawing(pixels, tmp_path / f"drawn_{path.name}")
        scores, _, _ = client.predict(_editor(drawing), api_name="/classify_drawing")
        assert scores["label"] == str(label), f"the drawn {label} read as {scores['label']}"


@pytest.mark.slow  # a Gradio server (or a fresh interpreter)
def test_an_empty_canvas_gets_a_message_not_an_error(
    client: gradio_client.Client, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)).save(blank)
    for value in (_editor(blank), _editor(None)):
        scores, shown, message = client.predict(value, api_name="/classify_drawing")
        assert not scores.get("label") and shown is None
        assert gradio_app.EMPTY_MESSAGE in message


@pytest.mark.slow  # a Gradio server (or a fresh interpreter)
def test_a_file_that_is_not_an_image_gets_a_message_not_an_error(
    client: gradio_client.Client, tmp_path: Path
) -> None:
    fake = tmp_path / "digit.png"
    fake.write_bytes(b"%PDF-1.4 this is not a PNG")
    scores, shown, message = client.predict(
        gradio_client.handle_file(str(fake)), api_name="/classify_upload"
    )
    assert not scores.get("label") and shown is None
    assert message.startswith("This image cannot be used:") and "supported format" in message


# --------------------------------------------------------------------------- the function


def test_classify_takes_what_the_predictor_takes(
    shipped_predictor: Predictor, clear_digits: list
) -> None:
    path, label, pixels = clear_digits[0]
    reference = shipped_predictor.predict(path)
    for image in (path, str(path), path.read_bytes(), Image.open(path), pixels):
        scores, model_input, message = gradio_app.classify(shipped_predictor, image)
        assert max(scores, key=scores.get) == str(label)
        assert sorted(scores) == [str(d) for d in range(10)]
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert scores[str(label)] == pytest.approx(reference.confidence, abs=1e-6)
        np.testing.assert_array_equal(model_input, reference.model_input)
        assert model_input.shape == (28, 28) and model_input.dtype == np.uint8
        assert message.startswith(f"**{label}**")
    _, big, _ = gradio_app.classify(shipped_predictor, path, scale=3)
    np.testing.assert_array_equal(big, np.kron(reference.model_input, np.ones((3, 3), np.uint8)))


def test_classify_explains_instead_of_raising(shipped_predictor: Predictor, tmp_path: Path) -> None:
    cases = {
        "nothing": (None, gradio_app.EMPTY_MESSAGE),
        "white": (np.full((200, 200), 255, np.uint8), "No digit found"),
        "garbage": (b"\x00\x01 definitely not an image", "This image cannot be used"),
        "huge": (np.zeros((8000, 8000), bool), "This image cannot be used"),
        "missing": (str(tmp_path / "gone.png"), "This file cannot be read"),
    }
    for what, (image, expected) in cases.items():
        scores, model_input, message = gradio_app.classify(shipped_predictor, image)
        assert scores is None and model_input is None, what
        assert message.startswith(expected), f"{what}: {message}"


def test_not_sure_is_said_in_words(
    shipped_predictor: Predictor,
    client: gradio_client.Client,
    clear_digits: list,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Flag every prediction as unsure, whatever the Predictor's own decision: the message
    # says so in words, and the probabilities and the model's input are still shown.
    reason = Unsure("ambiguous", "the model hesitates between two digits")
    # The class is patched, not the session's shared instance (monkeypatch would leave the
    # instance with a ``predict`` of its own, hiding later patches of the class).
    predict = Predictor.predict
    monkeypatch.setattr(
        Predictor,
        "predict",
        lambda self, image: dataclasses.replace(predict(self, image), reason=reason),
    )
    path, label, _ = clear_digits[0]
    scores, model_input, message = gradio_app.classify(shipped_predictor, path)
    assert max(scores, key=scores.get) == str(label) and model_input.shape == (28, 28)
    assert message.startswith(f"**Not sure**: this looks most like a {label} (")
    assert message.endswith(" The model hesitates between two digits.")
    # A clear digit's runner-up has under 5%: it is not named.
    assert ", or a" not in message
    # The served interface shows the same message.
    _, _, served = client.predict(gradio_client.handle_file(str(path)), api_name="/classify_upload")
    assert served == message
    # Two real contenders are both named, with their probabilities.
    probabilities = [0.0] * 10
    probabilities[4], probabilities[9], probabilities[7] = 0.52, 0.41, 0.07
    close = Prediction(4, 0.52, tuple(probabilities), ((4, 0.52), (9, 0.41), (7, 0.07)),
                       np.zeros((28, 28), np.uint8), reason)  # fmt: skip
    monkeypatch.setattr(Predictor, "predict", lambda self, image: close)
    _, _, message = gradio_app.classify(shipped_predictor, path)
    assert message == (
        "**Not sure**: this looks most like a 4 (52.0%), or a 9 (41.0%). "
        "The model hesitates between two digits."
    )


# --------------------------------------------------------------------------- numbers


def _written(text: str, path: Path) -> Path:
    """``text`` in OpenCV's stroke font, black on white, as a PNG file."""
    import cv2

    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 4.0, 12
    (width, height), _ = cv2.getTextSize(text, font, scale, thickness)
    image = np.full((200, width + 60), 255, np.uint8)
    cv2.putText(image, text, (30, (200 + height) // 2), font, scale, 0, thickness)
    Image.fromarray(image).save(path)
    return path


def test_read_number_gives_the_number_and_a_tile_per_digit(
    shipped_predictor: Predictor, tmp_path: Path
) -> None:
    path = _written("2026", tmp_path / "2026.png")
    reading = shipped_predictor.read_number(path)
    tiles, message = gradio_app.read_number(shipped_predictor, path)
    assert message.startswith("**2026** with ") and message.endswith("% confidence (4 digits).")
    assert f"{100 * reading.confidence:.1f}%" in message
    assert [caption.split(" · ")[0] for _, caption in tiles] == list("2026")
    scale = gradio_app.DISPLAY_SCALE
    for (tile, caption), d in zip(tiles, reading.digits, strict=True):
        assert caption == f"{d.prediction.digit} · {100 * d.prediction.confidence:.1f}%"
        # Each tile is the digit's 28x28 input, every pixel an exact square.
        assert tile.shape == (28 * scale, 28 * scale) and tile.dtype == np.uint8
        np.testing.assert_array_equal(tile[::scale, ::scale], d.prediction.model_input)
    # Nothing to read, or not an image: a message, never an exception.
    assert gradio_app.read_number(shipped_predictor, None) == (
        None,
        gradio_app.NUMBER_EMPTY_MESSAGE,
    )
    blank = gradio_app.read_number(shipped_predictor, np.full((200, 600), 255, np.uint8))
    assert blank[0] is None and blank[1].startswith("No digit found")
    garbage = gradio_app.read_number(shipped_predictor, b"\x00 not an image")
    assert garbage[0] is None and garbage[1].startswith("This image cannot be used")


def test_a_number_not_sure_is_said_in_words(
    shipped_predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _written("42", tmp_path / "42.png")
    reason = Unsure("ambiguous", "the model hesitates between two digits")
    read = Predictor.read_number

    def unsure_last(self: Predictor, image: object) -> object:
        reading = read(self, image)
        last = reading.digits[-1]
        digits = (
            *reading.digits[:-1],
            dataclasses.replace(
                last, prediction=dataclasses.replace(last.prediction, reason=reason)
            ),
        )
        return dataclasses.replace(
            reading, digits=digits, reason=Unsure("ambiguous", "Digit 2 of 2: x")
        )

    monkeypatch.setattr(Predictor, "read_number", unsure_last)
    tiles, message = gradio_app.read_number(shipped_predictor, path)
    assert message == "**Not sure**: this looks most like 42 (2 digits). Digit 2 of 2: x."
    assert tiles[0][1].startswith("4 · ") and tiles[1][1] == "2? · not sure"


@pytest.mark.slow  # a Gradio server (or a fresh interpreter)
def test_numbers_are_served_for_uploads_and_drawings(
    client: gradio_client.Client, tmp_path: Path
) -> None:
    path = _written("2026", tmp_path / "2026.png")
    gallery, message = client.predict(
        gradio_client.handle_file(str(path)), api_name="/read_number_upload"
    )
    assert message.startswith("**2026** with ")
    assert [item["caption"].split(" · ")[0] for item in gallery] == list("2026")
    with Image.open(gallery[0]["image"]) as tile:
        assert tile.format == "PNG" and tile.size == (224, 224)
    # A drawing on the wide canvas: black ink on transparent, as the sketchpad sends it.
    ink = np.asarray(Image.open(_written("42", tmp_path / "42.png")).convert("L"))
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., 3] = 255 - ink
    drawing = tmp_path / "drawn.png"
    Image.fromarray(rgba, "RGBA").save(drawing)
    gallery, message = client.predict(_editor(drawing), api_name="/read_number_drawing")
    assert message.startswith("**42** with ") and len(gallery) == 2
    gallery, message = client.predict(_editor(None), api_name="/read_number_drawing")
    assert not gallery and message == gradio_app.NUMBER_EMPTY_MESSAGE


# --------------------------------------------------------------------------- look inside

# The captions of the look inside: the image, the six preprocessing stages, the saliency and
# the feature maps of the first two convolutions.
INSIDE_CAPTIONS = [
    *(explain.STAGE_LABELS[name] for name in ("original", *explain.STAGES)),
    "saliency for {digit}: red for, blue against",
    "conv1: 32 feature maps of 28×28",
    "conv2: 64 feature maps of 14×14",
]


def test_look_inside_shows_the_stages_the_saliency_and_the_feature_maps(
    shipped_predictor: Predictor, clear_digits: list
) -> None:
    path, label, _ = clear_digits[14]
    pictures, legend = gradio_app.look_inside(shipped_predictor, path)
    captions = [caption for _, caption in pictures]
    assert captions == [c.format(digit=label) for c in INSIDE_CAPTIONS]
    assert f"evidence for **{label}**" in legend
    reference = explain.explain(shipped_predictor, path)
    model_input = reference.prediction.model_input
    for image, caption in pictures:
        assert image.dtype == np.uint8, caption
        # Small pictures (the 28x28 input, the 20x20 fit) are enlarged to be seen.
        assert max(image.shape[:2]) >= gradio_app.INSIDE_MIN_SIDE, caption
    # The last stage is the model's input, each pixel an exact square.
    centred = pictures[len(explain.STAGES)][0]
    k = centred.shape[0] // 28
    assert k > 1 and centred.shape == (28 * k, 28 * k)
    np.testing.assert_array_equal(centred, np.kron(centred[::k, ::k], np.ones((k, k), np.uint8)))
    assert np.abs(centred[::k, ::k].astype(int) - model_input).max() <= 1
    # The saliency is the library's, drawn over the input as large as the input is shown.
    saliency = pictures[-3][0]
    expected = explain.overlay(model_input, reference.saliency, scale=gradio_app.DISPLAY_SCALE)
    np.testing.assert_array_equal(saliency, expected)
    # The feature maps: grids of the first two layers, enlarged 2x and 3x.
    for (image, _), name, factor in zip(pictures[-2:], ("conv1", "conv2"), (2, 3), strict=True):
        grid = explain.grid(reference.activations[name])
        np.testing.assert_array_equal(image[::factor, ::factor], grid)
        assert image.shape == (grid.shape[0] * factor, grid.shape[1] * factor)


def test_look_inside_has_nothing_to_show_for_what_classify_refuses(
    shipped_predictor: Predictor, tmp_path: Path
) -> None:
    for image in (
        None,
        np.full((200, 200), 255, np.uint8),
        b"\x00\x01 definitely not an image",
        str(tmp_path / "gone.png"),
    ):
        assert gradio_app.look_inside(shipped_predictor, image) == (None, "")


def test_look_inside_shows_a_large_file_from_its_working_copy(
    shipped_predictor: Predictor, tmp_path: Path
) -> None:
    from PIL import ImageDraw

    # A red 7 on white: small, it is shown in colour; large (over 16 MB to decode), from
    # the gray working copy the prediction decodes, with the same answer.
    def red_seven(side: int) -> Path:
        image = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        f = side / 2100
        points = [(600 * f, 500 * f), (1500 * f, 500 * f), (900 * f, 1700 * f)]
        ImageDraw.Draw(image).line(points, fill=(200, 0, 0, 255), width=round(120 * f))
        path = tmp_path / f"red7_{side}.png"
        image.save(path)
        return path

    for side, gray in ((300, False), (2100, True)):
        path = red_seven(side)
        pictures, legend = gradio_app.look_inside(shipped_predictor, path)
        scores, _, _ = gradio_app.classify(shipped_predictor, path)
        assert max(scores, key=scores.get) == "7" and "evidence for **7**" in legend
        shown = pictures[0][0].astype(int)
        assert max(shown.shape[:2]) <= 320
        assert ((shown == shown[..., :1]).all()) == gray, side


@pytest.mark.slow  # a Gradio server (or a fresh interpreter)
def test_look_inside_is_served_for_uploads_and_drawings(
    client: gradio_client.Client, clear_digits: list, tmp_path: Path
) -> None:
    path, label, pixels = clear_digits[6]
    drawing = _as_drawing(pixels, tmp_path / "drawn.png")
    for value, api_name in (
        (gradio_client.handle_file(str(path)), "/look_inside_upload"),
        (_editor(drawing), "/look_inside_drawing"),
    ):
        gallery, legend = client.predict(value, api_name=api_name)
        assert [item["caption"] for item in gallery] == [
            c.format(digit=label) for c in INSIDE_CAPTIONS
        ], api_name
        assert f"evidence for **{label}**" in legend
        # Lossless PNGs, as the library drew them: the saliency is 8x the 28x28 input.
        with Image.open(gallery[-3]["image"]) as saliency:
            assert saliency.format == "PNG" and saliency.size == (224, 224)
    # An empty canvas: nothing to look at, and no error.
    blank = tmp_path / "blank.png"
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)).save(blank)
    gallery, legend = client.predict(_editor(blank), api_name="/look_inside_drawing")
    assert not gallery and legend == ""


@pytest.mark.slow  # a Gradio server (or a fresh interpreter)
def test_importing_the_package_does_not_import_gradio() -> None:
    code = (
        "import sys, mnist_cnn, mnist_cnn.cli, mnist_cnn.predict, mnist_cnn.gradio_app\n"
        "mnist_cnn.cli.build_parser()\n"
        "assert 'gradio' not in sys.modules, 'gradio was imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


# --------------------------------------------------------------------------- finding the model


def test_find_model(tmp_path: Path) -> None:
    weights = tmp_path / "input" / "my-training-notebook" / "models" / gradio_app.MODEL_FILENAME
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    assert gradio_app.find_model(weights) == weights
    assert gradio_app.find_model(candidates=[], search_roots=[tmp_path / "input"]) == weights
    local = tmp_path / "models" / gradio_app.MODEL_FILENAME
    local.parent.mkdir()
    local.write_bytes(b"weights")
    found = gradio_app.find_model(candidates=[local], search_roots=[tmp_path / "input"])
    assert found == local  # the candidates come first
    with pytest.raises(CheckpointError, match="not found"):
        gradio_app.find_model(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match=r"no model found in: .*empty/\*\*/mnist_cnn_model"):
        gradio_app.find_model(candidates=[tmp_path / "x.pth"], search_roots=[tmp_path / "empty"])


# --------------------------------------------------------------------------- the command


def test_gradio_command_errors_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["gradio", "--model", str(tmp_path / "missing.pth")]) == cli.EXIT_FAILED
    assert "missing.pth: model file not found" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the extra were not installed
    assert cli.main(["gradio"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "pip install 'mnist-cnn[gradio]'" in err and "Traceback" not in err


@pytest.mark.slow
def test_gradio_command_serves_the_interface(clear_digits: list) -> None:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "mnist_cnn", "gradio", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "the server did not start in 120 s"
                time.sleep(0.5)
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        path, label, _ = clear_digits[-1]
        scores, _, _ = client.predict(
            gradio_client.handle_file(str(path)), api_name="/classify_upload"
        )
        assert scores["label"] == str(label)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert f"model: {SHIPPED_MODEL}" in output

    # The same port again, while something holds it: a clear error, not a traceback.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == cli.EXIT_FAILED
    assert "mnist-cnn: error:" in run.stderr and "Traceback" not in run.stderr


# --------------------------------------------------------------------------- in a browser


@pytest.mark.browser
def test_a_digit_drawn_with_the_mouse_is_read_and_nothing_is_fetched_elsewhere(
    server: str, browser: object
) -> None:
    from playwright.sync_api import expect

    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.set_default_timeout(30_000)
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server)
        page.get_by_role("button", name="Brush").click()
        canvas = max(
            (c.bounding_box() for c in page.locator("canvas").all()),
            key=lambda box: box["width"] * box["height"],
        )
        # A 7: a bar across the top, then a stroke down to the bottom left.
        x, y, w, h = canvas["x"], canvas["y"], canvas["width"], canvas["height"]
        page.mouse.move(x + 0.3 * w, y + 0.2 * h)
        page.mouse.down()
        page.mouse.move(x + 0.7 * w, y + 0.2 * h, steps=20)
        page.mouse.move(x + 0.45 * w, y + 0.85 * h, steps=30)
        page.mouse.up()
        page.get_by_role("button", name="Classify the drawing").click()
        expect(page.get_by_text("with", exact=False).filter(has_text="% confidence")).to_have_text(
            re.compile(r"^7 with [\d.]+% confidence")
        )
        expect(page.locator("#model-input img")).to_be_visible()
        # The look inside followed the answer: open it, its pictures are there.
        page.get_by_role("button", name="Look inside").click()
        pictures = page.locator("#inside-gallery img")
        expect(pictures).to_have_count(len(INSIDE_CAPTIONS))
        expect(page.locator("#look-inside")).to_contain_text("evidence for 7")
        loaded = "(imgs) => imgs.every((img) => img.complete && img.naturalWidth > 0)"
        page.wait_for_function(
            f"() => ({loaded})(Array.from(document.querySelectorAll('#inside-gallery img')))"
        )
    finally:
        page.close()
    elsewhere = [u for u in requests if not u.startswith((server, "data:", "blob:"))]
    assert not elsewhere, f"requests to other origins: {elsewhere[:5]}"
