"""The Gradio interface: draw a digit or upload a photo of one, see what the model thinks.

    predictor = Predictor.from_checkpoint()
    demo = build_interface(predictor)          # a gr.Blocks
    launch(demo, port=7860)                    # or: mnist-cnn gradio [--share]

Everything the interface shows comes from ``classify``, a plain function of a Predictor and
an image that the notebooks and tests call directly: the ten class probabilities (for a
``gr.Label``, which shows the top three), the 28x28 image the model actually saw, and a
one-line message. Images that hold no digit or are not images at all get that message, never
a traceback.

Its "Number" tab reads a whole number (``read_number``, through ``Predictor.read_number``):
the number, how sure, and a gallery of the digits as the model saw them, each with its digit
and confidence.

Its "Look inside" accordion comes from ``look_inside`` (``mnist_cnn.explain``, as the web
page's panel): the preprocessing's stages, the occlusion saliency over the model's input and
the first two layers' feature maps, as captioned pictures. It is computed after each answer
(a few hundred forward passes, a fraction of a second), once the answer is on screen.

Gradio is an optional extra (``pip install ".[gradio]"``). It is imported only inside
``build_interface`` and ``launch``, and no module of the package imports this one (the CLI
does when its ``gradio`` command runs), so ``import mnist_cnn`` never pulls Gradio in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_cnn.checkpoint import CheckpointError
from mnist_cnn.extras import install_hint
from mnist_cnn.paths import MODEL_FILENAME, SHIPPED_MODEL
from mnist_cnn.preprocess import ImageError, NoDigitError

if TYPE_CHECKING:  # the annotations only; importing gradio costs seconds
    import gradio as gr

    from mnist_cnn.predict import NumberReading, Prediction, Predictor

TOP_CLASSES = 3
# The 28x28 model input is shown enlarged by this factor with nearest-neighbour sampling, so
# that every pixel the model sees is an exact square on screen (a browser would blur it).
DISPLAY_SCALE = 8
# The canvas a user draws on: big enough for a mouse or a finger. The brush (its radius, in
# canvas pixels) draws strokes about as thick, relative to a digit filling the canvas, as
# MNIST's; preprocessing brings any stroke width into MNIST's range anyway.
CANVAS_SIZE = 280
BRUSH_SIZE = 10

EMPTY_MESSAGE = "Draw a digit on the canvas, or upload a photo of one."
NUMBER_EMPTY_MESSAGE = "Write a number on the wide canvas, or upload a photo of one."
# The number canvas: as tall as the digit canvas (the same brush draws digits of the same
# size), three digits wide.
NUMBER_CANVAS_SIZE = (3 * CANVAS_SIZE, CANVAS_SIZE)
# The accordion's explanation; {patch} is the occlusion's patch side (``explain.PATCH``).
INSIDE_HELP = (
    "How the image became the model's 28×28 input, step by step; what the answer rests on "
    "(each {patch}×{patch} patch of the input erased in turn: red where the odds of the "
    "answer fall without it, blue where they rise); and the feature maps of the network's "
    "first two convolutions."
)
# "Look inside" pictures smaller than this on their longest side (the 20x20 fit, the 28x28
# input) are enlarged by a whole factor with nearest-neighbour sampling: the gallery would
# otherwise blur them as it scales them up.
INSIDE_MIN_SIDE = 140
# A "not sure" message names the runner-up when it has at least this probability.
RUNNER_UP_MIN = 0.05

Outputs = tuple[dict[str, float] | None, np.ndarray | None, str]
Pictures = list[tuple[np.ndarray, str]]  # (uint8 image, caption), as gr.Gallery takes them


def import_gradio() -> ModuleType:
    """``import gradio``, or an ``ImportError`` that says how to install it."""
    try:
        import gradio
    except ImportError as exc:
        raise ImportError(install_hint("gradio", exc.name)) from exc
    return gradio


# --------------------------------------------------------------------------- the model


def find_model(
    path: str | Path | None = None,
    candidates: Sequence[str | Path] = (
        Path("models") / MODEL_FILENAME,
        Path("..") / "models" / MODEL_FILENAME,
        SHIPPED_MODEL,
    ),
    search_roots: Sequence[str | Path] = ("/kaggle/input",),
) -> Path:
    """The weights file to serve: ``path`` when given, else the first one found.

    Looks at ``candidates`` (the repository's ``models/``, seen from its root or from
    ``notebooks/``), then for ``mnist_cnn_model.pth`` anywhere under ``search_roots``: on
    Kaggle, a training notebook's output or an uploaded dataset added as input. Raises
    ``CheckpointError`` naming every place it looked.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: model file not found.")
        return path
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    for root in search_roots:
        if Path(root).is_dir():
            found = sorted(Path(root).rglob(MODEL_FILENAME))
            if found:
                return found[0]
    looked = [str(c) for c in candidates] + [f"{r}/**/{MODEL_FILENAME}" for r in search_roots]
    raise CheckpointError(
        f"no model found in: {', '.join(looked)}. Train one (`mnist-cnn train` or the training "
        f"notebook) or, on Kaggle, add the training notebook's output or a dataset holding "
        f"{MODEL_FILENAME} and its .json as input."
    )


# --------------------------------------------------------------------------- the function


def _unwrap(value: Any) -> Any:
    """The image inside what a Gradio component sends, or ``value`` itself.

    The interface's events skip Gradio's own decoding (``preprocess=False``), so that the
    Predictor decodes every upload with its checks and its error messages: an upload arrives
    as a file reference (a dict with a ``path`` in Gradio's upload cache), a drawing as an
    editor value whose ``composite`` is the picture as shown (background plus strokes).
    """
    if isinstance(value, dict):
        if "composite" in value or "layers" in value or "background" in value:
            value = value.get("composite") or value.get("background")
        if isinstance(value, dict):
            value = value.get("path")
    return value


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


def classify(predictor: Predictor, image: Any, scale: int = 1) -> Outputs:
    """What the interface shows for ``image``: (probabilities, model input, message).

    ``image`` is anything ``Predictor.predict`` takes (a path, bytes, a PIL image, a NumPy
    array) or what a Gradio input sends (an upload's file reference, a Sketchpad's value).
    ``None`` and blank drawings are normal states of the interface, not errors.

    Returns the ten class probabilities keyed by digit (``"0"`` .. ``"9"``, the form
    ``gr.Label`` takes), the uint8 28x28 image the model saw (enlarged ``scale`` times with
    nearest-neighbour sampling) and a message: the digit and its confidence, or, when the
    Predictor is not sure, "**Not sure**: this looks most like a 4 (52.0%), or a 9 (41.0%)."
    and the reason. When there is nothing to classify, the first two are ``None`` and the
    message says why.
    """
    image = _unwrap(image)
    if image is None:
        return None, None, EMPTY_MESSAGE
    try:
        prediction = predictor.predict(image)
    except NoDigitError as exc:
        return None, None, f"{_sentence(str(exc))} {EMPTY_MESSAGE}"
    except ImageError as exc:
        return None, None, f"This image cannot be used: {str(exc).rstrip('.')}."
    except OSError as exc:  # an upload that vanished or cannot be read
        return None, None, f"This file cannot be read: {_sentence(exc.strerror or str(exc))}"
    probabilities = {str(d): float(p) for d, p in enumerate(prediction.probabilities)}
    model_input = prediction.model_input
    if scale > 1:
        model_input = np.kron(model_input, np.ones((scale, scale), dtype=np.uint8))
    return probabilities, model_input, _describe(prediction)


def _a(digit: int) -> str:
    return f"an {digit}" if digit == 8 else f"a {digit}"


def _describe(prediction: Prediction) -> str:
    """The message (Markdown) for a prediction: the digit and how sure, or "Not sure" in
    words with the digits it looks like and the reason."""
    runner_up, runner_up_p = prediction.top3[1]
    if prediction.reason is None:
        return (
            f"**{prediction.digit}** with {100 * prediction.confidence:.1f}% confidence "
            f"(next: {runner_up} at {100 * runner_up_p:.1f}%)."
        )
    # Not sure is an answer, not an error: say what it looks like, and why it is unsure.
    likely = f"{_a(prediction.digit)} ({100 * prediction.confidence:.1f}%)"
    if runner_up_p >= RUNNER_UP_MIN:
        likely += f", or {_a(runner_up)} ({100 * runner_up_p:.1f}%)"
    return f"**Not sure**: this looks most like {likely}. {_sentence(prediction.reason.message)}"


def _enlarged(image: np.ndarray, min_side: int = INSIDE_MIN_SIDE) -> np.ndarray:
    """``image`` as uint8, enlarged by the smallest whole factor that brings its longest
    side to ``min_side`` (unchanged when it is that long already)."""
    from mnist_cnn.explain import enlarge, to_uint8

    pixels = to_uint8(image)
    longest = max(pixels.shape[:2])
    if longest == 0 or longest >= min_side:
        return pixels
    return enlarge(pixels, -(-min_side // longest))


def look_inside(predictor: Predictor, image: Any) -> tuple[Pictures | None, str]:
    """What the "Look inside" accordion shows for ``image``: (captioned pictures, legend).

    The pictures are the image as given and each preprocessing stage (the last is the
    model's input), the occlusion saliency over the input (red: evidence for the answer,
    blue: against), then the feature maps of the first two convolutions as grids (left out
    with ONNX Runtime). The legend (Markdown) names the answer's digit. Takes what
    ``classify`` takes; when there is nothing to explain (no image, no digit, not an image)
    it is ``(None, "")``: ``classify``'s message already says why. A large image file is
    shown as given in gray (``explain.PREVIEW_MAX_DECODE_BYTES``).
    """
    from mnist_cnn.explain import STAGE_LABELS, enlarge, explain, grid, overlay

    image = _unwrap(image)
    if image is None:
        return None, ""
    try:
        explanation = explain(predictor, image)
    except (ImageError, OSError):
        return None, ""
    digit = explanation.prediction.digit
    model_input = explanation.prediction.model_input
    pictures: Pictures = [(_enlarged(explanation.original), STAGE_LABELS["original"])]
    pictures += [
        (_enlarged(stage), STAGE_LABELS.get(name, name))
        for name, stage in explanation.stages.items()
    ]
    # The last stage is the model's input; the saliency is drawn over it, as large as the
    # interface shows the input itself.
    saliency = overlay(model_input, explanation.saliency, scale=DISPLAY_SCALE)
    pictures.append((saliency, f"saliency for {digit}: red for, blue against"))
    for name, maps in explanation.activations.items():
        channels, height, width = maps.shape
        # Tiles of 28 pixels doubled, of 14 tripled: each map about 50 pixels across.
        factor = 2 if height >= 28 else 3
        caption = f"{name}: {channels} feature maps of {height}×{width}"
        pictures.append((enlarge(grid(maps), factor), caption))
    legend = (
        f"**Saliency**: red is ink that is evidence for **{digit}** (erasing it lowers the "
        f"odds of {digit}), blue is ink that is evidence against it."
    )
    if not explanation.activations:
        legend += " The feature maps need the PyTorch backend."
    return pictures, legend


def read_number(
    predictor: Predictor, image: Any, scale: int = DISPLAY_SCALE
) -> tuple[Pictures | None, str]:
    """What the "Number" tab shows for ``image``: (a tile per digit, message).

    Each tile is that digit's uint8 28x28 model input enlarged ``scale`` times with
    nearest-neighbour sampling, captioned with the digit and its confidence ("4 · 99.9%"),
    or "4? · not sure" for a digit the model is not sure of. The message (Markdown) is the
    number and how sure ("**2026** with 99.1% confidence."), or "**Not sure**: this looks
    most like 2026." with the reason. Takes what ``classify`` takes; when there is nothing
    to read the gallery is ``None`` and the message says why.
    """
    image = _unwrap(image)
    if image is None:
        return None, NUMBER_EMPTY_MESSAGE
    try:
        reading = predictor.read_number(image)
    except NoDigitError as exc:
        return None, f"{_sentence(str(exc))} {NUMBER_EMPTY_MESSAGE}"
    except ImageError as exc:
        return None, f"This image cannot be used: {str(exc).rstrip('.')}."
    except OSError as exc:  # an upload that vanished or cannot be read
        return None, f"This file cannot be read: {_sentence(exc.strerror or str(exc))}"
    tiles: Pictures = []
    for d in reading.digits:
        p = d.prediction
        tile = np.kron(p.model_input, np.ones((scale, scale), dtype=np.uint8))
        caption = (
            f"{p.digit} · {100 * p.confidence:.1f}%"
            if p.reason is None
            else (f"{p.digit}? · not sure")
        )
        tiles.append((tile, caption))
    return tiles, _describe_number(reading)


def _describe_number(reading: NumberReading) -> str:
    """The message (Markdown) for a number: the number and how sure, or "Not sure" in words
    with the reason."""
    count = len(reading.digits)
    digits = f"{count} digit{'s' if count != 1 else ''}"
    if reading.reason is None:
        return f"**{reading.number}** with {100 * reading.confidence:.1f}% confidence ({digits})."
    return (
        f"**Not sure**: this looks most like {reading.number} ({digits}). "
        f"{_sentence(reading.reason.message)}"
    )


# --------------------------------------------------------------------------- the interface


def build_interface(predictor: Predictor, title: str = "Handwritten digit recogniser") -> gr.Blocks:
    """A ``gr.Blocks`` with a sketchpad and an upload box, both answered by ``classify``,
    and a "Look inside" accordion filled by ``look_inside`` after each answer.

    Two API endpoints serve the two inputs: ``/classify_drawing`` (a Sketchpad value) and
    ``/classify_upload`` (an image file); ``/look_inside_drawing`` and
    ``/look_inside_upload`` give the look inside (a gallery of captioned pictures and a
    legend); ``/read_number_drawing`` and ``/read_number_upload`` read a whole number
    (``read_number``: a gallery of the digits and a message), from the "Number" tab.
    Analytics are off, so nothing leaves the machine unless a share link is asked for.
    """
    gr = import_gradio()
    from mnist_cnn.explain import PATCH

    def run(image: Any) -> Outputs:
        return classify(predictor, image, scale=DISPLAY_SCALE)

    def run_inside(image: Any) -> tuple[Pictures | None, str]:
        return look_inside(predictor, image)

    def run_number(image: Any) -> tuple[Pictures | None, str]:
        return read_number(predictor, image)

    info = predictor.info
    accuracy = info.test_accuracy
    about = f"Model: {info.description}" + (
        f", {100 * accuracy:.2f}% on the MNIST test set" if accuracy else ""
    )
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\nPick the brush beside the canvas and draw a digit (0-9), or upload "
            f"a photo of one written on paper. The image is turned into what MNIST looks like "
            f"(a white digit on black, fitted in 20×20 and centred in 28×28) before the model "
            f"sees it. {about}."
        )
        with gr.Row(equal_height=False):
            with gr.Column():
                with gr.Tab("Draw"):
                    sketch = gr.Sketchpad(
                        label="Draw a digit",
                        type="numpy",
                        image_mode="RGBA",
                        canvas_size=(CANVAS_SIZE, CANVAS_SIZE),
                        fixed_canvas=True,
                        brush=gr.Brush(
                            default_size=BRUSH_SIZE, colors=["#000000"], color_mode="fixed"
                        ),
                        layers=False,
                    )
                    draw_button = gr.Button("Classify the drawing", variant="primary")
                with gr.Tab("Upload"):
                    upload = gr.Image(
                        label="Upload a photo of a digit",
                        type="filepath",
                        image_mode=None,  # keep the file as it is (transparency, 16 bits)
                        sources=["upload", "clipboard", "webcam"],
                    )
                    upload_button = gr.Button("Classify the photo", variant="primary")
                with gr.Tab("Number"):
                    # A whole number: a wide canvas or a photo, read digit by digit. Its
                    # answer is in the tab, under the inputs: the digit's outputs on the
                    # right are of one digit.
                    number_sketch = gr.Sketchpad(
                        label="Write a number (its digits side by side)",
                        type="numpy",
                        image_mode="RGBA",
                        canvas_size=NUMBER_CANVAS_SIZE,
                        fixed_canvas=True,
                        brush=gr.Brush(
                            default_size=BRUSH_SIZE, colors=["#000000"], color_mode="fixed"
                        ),
                        layers=False,
                        elem_id="number-sketch",
                    )
                    number_draw_button = gr.Button("Read the drawn number", variant="primary")
                    number_upload = gr.Image(
                        label="Or upload a photo of a number",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard", "webcam"],
                    )
                    number_upload_button = gr.Button("Read the photo's number", variant="primary")
                    number_message = gr.Markdown(NUMBER_EMPTY_MESSAGE, elem_id="number-message")
                    number_tiles = gr.Gallery(
                        label="Each digit, as the model saw it (28×28)",
                        format="png",  # lossless: the exact pixels the model saw
                        columns=6,
                        height="auto",
                        object_fit="contain",
                        interactive=False,
                        elem_id="number-tiles",
                    )
            with gr.Column():
                label = gr.Label(num_top_classes=TOP_CLASSES, label="Prediction")
                model_input = gr.Image(
                    label="What the model sees (28×28)",
                    type="numpy",
                    image_mode="L",
                    format="png",  # lossless: the exact pixels the model saw
                    interactive=False,
                    height=CANVAS_SIZE,
                    elem_id="model-input",
                )
                message = gr.Markdown(EMPTY_MESSAGE, label="Result")
        with gr.Accordion("Look inside", open=False, elem_id="look-inside"):
            gr.Markdown(INSIDE_HELP.format(patch=PATCH))
            inside = gr.Gallery(
                label="From your image to the answer",
                format="png",  # lossless: the pixels as the model had them
                columns=5,
                height="auto",
                object_fit="contain",
                interactive=False,
                elem_id="inside-gallery",
            )
            legend = gr.Markdown("", label="Legend")
        outputs = [label, model_input, message]
        # preprocess=False: the Predictor decodes the files itself (see _unwrap).
        events = {"fn": run, "outputs": outputs, "preprocess": False}
        # The look inside follows each answer (``then``): the answer is on screen first.
        inside_events = {"fn": run_inside, "outputs": [inside, legend], "preprocess": False}
        draw_button.click(inputs=sketch, api_name="classify_drawing", **events).then(
            inputs=sketch, api_name="look_inside_drawing", **inside_events
        )
        upload_button.click(inputs=upload, api_name="classify_upload", **events).then(
            inputs=upload, api_name="look_inside_upload", **inside_events
        )
        # A new upload is answered at once, without waiting for the button.
        upload.upload(inputs=upload, api_visibility="private", **events).then(
            inputs=upload, api_visibility="private", **inside_events
        )
        number_events = {
            "fn": run_number,
            "outputs": [number_tiles, number_message],
            "preprocess": False,
        }
        number_draw_button.click(
            inputs=number_sketch, api_name="read_number_drawing", **number_events
        )
        number_upload_button.click(
            inputs=number_upload, api_name="read_number_upload", **number_events
        )
        number_upload.upload(inputs=number_upload, api_visibility="private", **number_events)
        number_sketch.clear(
            lambda: (None, NUMBER_EMPTY_MESSAGE),
            None,
            [number_tiles, number_message],
            api_visibility="private",
        )
        sketch.clear(
            lambda: (None, None, EMPTY_MESSAGE, None, ""),
            None,
            [*outputs, inside, legend],
            api_visibility="private",
        )
    return demo


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool | None = False,
    block: bool = True,
    quiet: bool = False,
) -> str:
    """Start serving ``demo``; returns the local URL (and serves until Ctrl-C when ``block``).

    ``port`` None takes the first free port from 7860. ``share=True`` also opens a public
    ``*.gradio.live`` link through Gradio's tunnel (needs internet); ``None`` lets Gradio
    decide (it shares on Kaggle and Colab, where localhost is not reachable).
    """
    demo.queue(default_concurrency_limit=os.cpu_count() or 1)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=not block,
        inbrowser=False,
        quiet=quiet,
        show_error=False,
        height=820,  # of the inline view in a notebook: the whole interface, no scrolling
    )
    return demo.local_url
