"""The JSON API: ``POST /api/predict``, ``POST /api/explain``, ``GET /api/health``,
``GET /api/model``.

``/api/predict`` (and ``/api/explain``) reads an image from whichever form the client sends:

- ``multipart/form-data`` with a file field ``image`` (a file picker, ``curl -F image=@x.png``),
  or a text field ``image`` holding a data URL (an HTML form around a canvas);
- ``application/json`` ``{"image": "data:image/png;base64,..."}`` (what the page's canvas
  sends; bare base64 without the ``data:`` prefix is accepted too);
- the image's bytes as the body with an ``image/*`` or ``application/octet-stream`` type
  (``curl --data-binary @x.png -H 'Content-Type: image/png'``).

It answers with the prediction, the 28x28 image the model saw (a PNG data URL, so the page
can show it without a second request), a summary of the model and the time it took. The
prediction's ``status`` is "ok", or "unsure" with a ``reason`` (``{"code", "message"}``)
when the input is probably not one digit or the model cannot tell: "not sure" is an answer
(200), not an error. What goes wrong is an error with a status (``errors.py``): 400 for a
request we cannot read (any body that is not JSON when it says it is, however it fails to
parse), 413 for a body over the limit, 415 for what is not an image, 422 for an image
without a digit or too large to decode, 503 when too many large images are being decoded.

**Numbers.** ``/api/predict`` reads a whole number (``Predictor.read_number``: a single
line of up to ``segment.MAX_DIGITS`` digits) when the request says ``mode`` is ``"number"``:
a JSON field (``{"image": ..., "mode": "number"}``), a multipart/form field ``mode``, or the
query parameter ``?mode=number`` (the only way with raw image bytes). The default,
``"digit"``, is the single-digit answer above, unchanged. Any other mode is a 400
(``bad_mode``), as are a query and a body that name different modes. The same image forms,
errors, statuses and large-decode slots apply. The answer:

- ``mode`` (``"number"``), ``number`` (the digits as a string, ``"2026"``), ``confidence``
  (the product of the digits'), ``status`` and ``reason`` (``{"code", "message"}``, the
  code ``"segmentation"`` when the cutting into digits is doubtful; null when ok);
- ``digits``: one per digit, left to right, with the single-digit answer's ``digit``,
  ``confidence``, ``status``, ``reason``, ``probabilities`` and ``top3``, then ``box``
  (``[x0, y0, x1, y1]``, end exclusive, in the image's own upright pixels) and
  ``input_28x28`` (that digit's 28x28 input, a PNG data URL);
- ``image``: ``{"width", "height"}``, the size of the upright image the boxes are in;
- ``model`` and ``elapsed_ms``.

A single digit in number mode is read by the single-digit path: a one-digit ``number``.

``/api/explain`` takes the same image forms and answers with the same statuses; it is the
page's "Look inside" panel (``mnist_cnn.explain``), computed only when asked for, so that
``/api/predict`` costs what it always did (an explanation costs a few hundred forward
passes). Its answer has the prediction's fields as ``/api/predict`` has them (``digit`` ..
``top3``, ``input_28x28``), then:

- ``stages``: ``[{"name", "label", "png", "width", "height", "scale"}]``, the image as given
  (``"original"``; in gray for a large image: ``explain.PREVIEW_MAX_DECODE_BYTES``) and then each
  preprocessing stage (``preprocess.STAGES``) as a PNG data URL; ``scale`` is the whole
  factor by which a small stage (the 20x20 fit, the 28x28 input) was enlarged with
  nearest-neighbour sampling, 1 for the others (at most 320 pixels a side);
- ``saliency``: ``{"method": "occlusion", "patch", "png", "meaning"}``: the 28x28 input
  enlarged 8 times, red where its ink is evidence for the answer, blue where against;
- ``activations``: ``{"conv1": {"png", "shape", "scale"}, "conv2": ...}``, the feature maps
  of the first two convolutions as one grid of tiles each (left out with ONNX Runtime,
  which has no layers to read);
- ``model`` and ``elapsed_ms``, as ``/api/predict`` has them.

It explains one digit: ``mode`` ``"number"`` is a 400 (``bad_mode``) there.

A large image (one whose decoding needs more than ``WebConfig.large_decode_bytes``, read
from its header) is decoded only while it holds one of the process's
``max_large_decodes`` slots: the memory of a server is then bounded by its workers, not by
how many people send large images at once. A few may wait for a slot; others get a 503
with Retry-After at once, so that waiting requests never hold all of a server's threads.
While it waits or decodes, the request steps aside (``STEP_ASIDE``): the production
server lets the worker's normal requests run meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from flask import Blueprint, Request, request
from PIL import ExifTags, Image

from mnist_cnn.decode import estimate_decode_bytes
from mnist_cnn.explain import (
    PATCH,
    STAGE_LABELS,
    Explanation,
    enlarge,
    explain,
    grid,
    overlay,
    saliency_meaning,
    to_uint8,
)
from mnist_cnn.locate import WORK_SIDE
from mnist_cnn.predict import NumberReading, Unsure
from mnist_cnn.segment import NUMBER_WORK_SIDE
from mnist_cnn.web import STEP_ASIDE, AppState, state
from mnist_cnn.web.errors import ApiError

bp = Blueprint("api", __name__, url_prefix="/api")
log = logging.getLogger("mnist_cnn.web")

# Body types sent as the raw image bytes.
RAW_IMAGE_TYPES = ("application/octet-stream",)

# What /api/predict reads: one digit (the default) or a whole number, digit by digit.
DIGIT = "digit"
NUMBER = "number"
MODES = (DIGIT, NUMBER)

# The pictures of /api/explain. A stage smaller than STAGE_MIN_SIDE on its longest side (the
# 20x20 fit, the 28x28 input) is enlarged by a whole factor with nearest-neighbour sampling,
# so that each pixel the model got is a sharp square, not a blur; one larger than
# STAGE_MAX_SIDE is shrunk, so that the answer stays small whatever size of working copy
# the preprocessing records.
STAGE_MIN_SIDE = 112
STAGE_MAX_SIDE = 320
# Activation tiles are enlarged to about this many pixels (2x or 3x: 28x28 maps to 56, 14x14
# ones to 42); the 32 and 64 tiles of a grid stay within a phone's width at 2x and 3x.
ACTIVATION_TILE_SIDE = 48


def decode_data_url(value: str) -> bytes:
    """The bytes of a base64 ``data:`` URL (or of bare base64). Raises ``ApiError`` (400)."""
    payload = value
    if value[:5].lower() == "data:":
        header, comma, payload = value.partition(",")
        if not comma:
            raise ApiError(400, "bad_data_url", "the data URL has no ',' before its data")
        if not header.lower().endswith(";base64"):
            raise ApiError(
                400,
                "bad_data_url",
                "only base64 data URLs are accepted (data:image/png;base64,...)",
            )
    # Some encoders wrap base64 at 76 columns; whitespace is not data.
    payload = "".join(payload.split())
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "bad_base64", f"the image is not valid base64 ({exc})") from exc
    if not data:
        raise ApiError(400, "empty_image", "the image is empty")
    return data


def check_mode(value: object, where: str) -> str:
    """``value`` as a mode ("digit" or "number"; case is ignored). Raises ``ApiError`` (400)."""
    if isinstance(value, str) and value.strip().lower() in MODES:
        return value.strip().lower()
    shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
    raise ApiError(400, "bad_mode", f'the {where} mode must be "digit" or "number", not {shown}')


def request_mode(req: Request, body_mode: object = None) -> str:
    """The mode a request asks for: ``?mode=`` or the body's ``mode`` field (JSON or form),
    "digit" when neither says. Raises ``ApiError`` (400) for an unknown mode, or when the
    query and the body name different modes."""
    query = req.args.get("mode")
    modes = []
    if query is not None:
        modes.append(check_mode(query, "query's"))
    if body_mode is not None:
        modes.append(check_mode(body_mode, "body's"))
    if len(set(modes)) > 1:
        raise ApiError(
            400,
            "bad_mode",
            f"the query says mode={modes[0]} and the body mode={modes[1]}; send one mode",
        )
    return modes[0] if modes else DIGIT


def read_image(req: Request) -> tuple[bytes, str]:
    """The uploaded image's bytes and where they came from ("upload", "data_url", "body").

    Raises ``ApiError`` for a request that does not carry an image we can read; a body over
    the size limit raises Werkzeug's ``RequestEntityTooLarge`` (413) when it is read.
    """
    data, source, _ = read_request(req)
    return data, source


def read_request(req: Request) -> tuple[bytes, str, str]:
    """``read_image``'s bytes and source, and the mode the request asks for
    (``request_mode``: "digit" or "number")."""
    # The query's mode first: a bad one is reported before a large body is read.
    if req.args.get("mode") is not None:
        request_mode(req)
    mimetype = req.mimetype
    if mimetype == "multipart/form-data" and not req.mimetype_params.get("boundary"):
        # Werkzeug would parse such a body as an empty form; say what is really wrong.
        raise ApiError(400, "malformed_body", "the multipart body has no boundary parameter")
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        mode = request_mode(req, req.form.get("mode"))
        upload = req.files.get("image")
        if upload is not None:
            data = upload.read()
            if not data:
                raise ApiError(400, "empty_image", "the uploaded file is empty")
            return data, "upload", mode
        text = req.form.get("image")
        if text is not None:
            return decode_data_url(text), "data_url", mode
        raise ApiError(
            400, "missing_image", "the form has no field 'image'; send the file as 'image'"
        )
    if req.is_json:
        raw = req.get_data(cache=False)
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            # ValueError: bad syntax or encoding; RecursionError: nesting deeper than the
            # parser's stack (json.loads("[" * 100_000)). Either way the client's mistake.
            detail = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
            raise ApiError(400, "malformed_json", f"the body is {detail}") from exc
        mode = request_mode(req, payload.get("mode") if isinstance(payload, dict) else None)
        if not isinstance(payload, dict) or "image" not in payload:
            raise ApiError(
                400,
                "missing_image",
                'the JSON body has no "image"; send {"image": "data:image/png;base64,..."}',
            )
        value = payload["image"]
        if not isinstance(value, str):
            raise ApiError(400, "bad_data_url", '"image" must be a string: a data URL or base64')
        return decode_data_url(value), "data_url", mode
    if mimetype.startswith("image/") or mimetype in RAW_IMAGE_TYPES:
        data = req.get_data(cache=False)
        if not data:
            raise ApiError(400, "missing_image", "the request body is empty")
        return data, "body", request_mode(req)
    if not mimetype and not req.content_length:
        raise ApiError(
            400,
            "missing_image",
            "no image: send a multipart file field 'image', JSON "
            '{"image": "data:image/png;base64,..."} or the image bytes',
        )
    raise ApiError(
        415,
        "unsupported_media_type",
        f"cannot read a body of type {mimetype or 'unknown'}; send multipart/form-data with a "
        f"file field 'image', application/json with a data URL, or image/* bytes",
    )


def png_data_url(image: np.ndarray) -> str:
    """A uint8 image as a PNG ``data:`` URL: grayscale (H, W) or RGB (H, W, 3)."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    mode = "RGB" if pixels.ndim == 3 else "L"
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _busy() -> ApiError:
    return ApiError(
        503,
        "busy",
        "the server is decoding other large images; retry in a few seconds, or send a "
        "smaller image",
        headers={"Retry-After": "2"},
    )


@contextmanager
def decode_slot(
    app: AppState, data: bytes, step_aside: Callable[[], Any], max_side: int = WORK_SIDE
) -> Iterator[None]:
    """Hold one of the process's large-decode slots while ``data`` is decoded, if it is a
    large image, stepping aside (``step_aside()``) while waiting and decoding. Raises
    ``ApiError`` (503) when no slot frees up in time or too many wait already.

    ``max_side`` is the working copy's longest side the decode keeps (a number's is larger
    than a digit's, so a JPEG of it decodes at a larger reduced size)."""
    config = app.config
    need = estimate_decode_bytes(data, app.predictor.max_pixels, max_side=max_side)
    if need <= config.large_decode_bytes:
        yield
        return
    slots, room = app.large_decodes, app.large_decode_room
    with step_aside():
        if not slots.acquire(blocking=False):
            if not room.acquire(blocking=False):
                raise _busy()
            try:
                if not slots.acquire(timeout=config.large_decode_wait_s):
                    raise _busy()
            finally:
                room.release()
        try:
            yield
        finally:
            slots.release()


# The EXIF orientations that turn an image a quarter (its width and height swap).
QUARTER_TURNS = frozenset({5, 6, 7, 8})


def image_size(data: bytes) -> dict[str, int] | None:
    """The upright size of the image file ``data``, from its header (the frame a number's
    boxes are in: the EXIF orientation applied, as the decoder applies it); None when the
    header cannot be read."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # the prediction read the image: the size is only a courtesy
        return None
    if orientation in QUARTER_TURNS:
        width, height = height, width
    return {"width": int(width), "height": int(height)}


def number_body(reading: NumberReading) -> dict[str, Any]:
    """A reading's answer: ``NumberReading.to_dict`` with each digit's 28x28 input as a PNG
    data URL (the module docstring lists the fields)."""
    body: dict[str, Any] = {"mode": NUMBER, **reading.to_dict()}
    for digit, shown in zip(reading.digits, body["digits"], strict=True):
        shown["input_28x28"] = png_data_url(digit.prediction.model_input)
    return body


def _finish(body: dict[str, Any], app: AppState, started: float) -> None:
    """The fields every answer ends with: the model's summary and the time it took."""
    body["model"] = app.model_summary
    body["elapsed_ms"] = round(1000 * (time.perf_counter() - started), 2)


def _logged_status(status: str, reason: Unsure | None) -> str:
    """A status as the log lines write it: "ok", or "unsure reason=ambiguous" (grep-able)."""
    return status if reason is None else f"{status} reason={reason.code}"


def read_number(app: AppState, data: bytes, source: str, started: float) -> dict[str, Any]:
    """``/api/predict`` in number mode: the whole number in ``data``, digit by digit."""
    step_aside = request.environ.get(STEP_ASIDE, contextlib.nullcontext)
    # The number's working copy is larger than a digit's: its decode is measured at that size.
    with decode_slot(app, data, step_aside, max_side=max(WORK_SIDE, NUMBER_WORK_SIDE)):
        reading = app.predictor.read_number(data)
    body = number_body(reading)
    body["image"] = image_size(data)
    _finish(body, app, started)
    if app.config.log_predictions:
        status = _logged_status(reading.status, reading.reason)
        digits = ",".join(
            f"{d.prediction.digit}:{d.prediction.confidence:.4f}" for d in reading.digits
        )
        # "number", not "prediction": counts of single-digit predictions in the logs stay
        # what they were; one line per reading, as per prediction.
        log.info(
            "number number=%s confidence=%.4f status=%s digits=%s elapsed_ms=%.1f source=%s "
            "model=%s",
            reading.number,
            reading.confidence,
            status,
            digits,
            body["elapsed_ms"],
            source,
            app.model_summary["file"],
        )
    return body


@bp.post("/predict")
def predict() -> dict[str, Any]:
    """Classify one image, or read the number in it with ``mode`` "number"; see the module
    docstring for the accepted forms and the answers."""
    started = time.perf_counter()
    app = state()
    data, source, mode = read_request(request)
    if mode == NUMBER:
        return read_number(app, data, source, started)
    step_aside = request.environ.get(STEP_ASIDE, contextlib.nullcontext)
    with decode_slot(app, data, step_aside):
        prediction = app.predictor.predict(data)
    body = prediction.to_dict()
    body["input_28x28"] = png_data_url(prediction.model_input)
    _finish(body, app, started)
    if app.config.log_predictions:
        top3 = ",".join(f"{d}:{p:.4f}" for d, p in prediction.top3)
        # "status=unsure reason=ambiguous": grep-able, and one line per prediction as before.
        status = _logged_status(prediction.status, prediction.reason)
        log.info(
            "prediction digit=%d confidence=%.4f status=%s top3=%s elapsed_ms=%.1f source=%s "
            "model=%s",
            prediction.digit,
            prediction.confidence,
            status,
            top3,
            body["elapsed_ms"],
            source,
            app.model_summary["file"],
        )
    return body


def stage_picture(image: np.ndarray) -> tuple[np.ndarray, int]:
    """A stage as shown: uint8, small ones enlarged (see ``STAGE_MIN_SIDE``), large ones
    shrunk; with the whole factor it was enlarged by (1 when it was not)."""
    pixels = to_uint8(image)
    longest = max(pixels.shape[:2])
    if 0 < longest < STAGE_MIN_SIDE:
        factor = -(-STAGE_MIN_SIDE // longest)
        return enlarge(pixels, factor), factor
    if longest > STAGE_MAX_SIDE:
        shown = Image.fromarray(pixels)
        shown.thumbnail((STAGE_MAX_SIDE, STAGE_MAX_SIDE), Image.Resampling.BOX)
        return np.asarray(shown), 1
    return pixels, 1


def explanation_body(explanation: Explanation) -> dict[str, Any]:
    """The pictures of an explanation for ``/api/explain``: stages, saliency, activations."""
    digit = explanation.prediction.digit
    stages = []
    pictures = {"original": explanation.original, **explanation.stages}
    for name, image in pictures.items():
        shown, factor = stage_picture(image)
        stages.append(
            {
                "name": name,
                "label": STAGE_LABELS.get(name, name),
                "png": png_data_url(shown),
                "width": int(shown.shape[1]),
                "height": int(shown.shape[0]),
                "scale": factor,
            }
        )
    body: dict[str, Any] = {
        "stages": stages,
        "saliency": {
            "method": "occlusion",
            "patch": PATCH,
            "png": png_data_url(overlay(explanation.prediction.model_input, explanation.saliency)),
            "meaning": saliency_meaning(digit),
        },
    }
    activations = {}
    for name, maps in explanation.activations.items():
        height = maps.shape[1]
        factor = min(3, max(2, -(-ACTIVATION_TILE_SIDE // height)))
        activations[name] = {
            "png": png_data_url(enlarge(grid(maps), factor)),
            "shape": list(maps.shape),
            "scale": factor,
        }
    if activations:  # empty with ONNX Runtime, which has no layers to read
        body["activations"] = activations
    return body


@bp.post("/explain", endpoint="explain")
def explain_image() -> dict[str, Any]:
    """Classify one image and show why: the preprocessing's stages, the occlusion saliency
    and the first feature maps (the module docstring lists the fields). The same image
    forms, errors and large-image slots as ``/api/predict``."""
    started = time.perf_counter()
    app = state()
    data, source, mode = read_request(request)
    if mode != DIGIT:
        raise ApiError(
            400,
            "bad_mode",
            'the explanation is of one digit: send mode "digit" (or none), or ask '
            '/api/predict with mode "number" for a number',
        )
    step_aside = request.environ.get(STEP_ASIDE, contextlib.nullcontext)
    with decode_slot(app, data, step_aside):
        explanation = explain(app.predictor, data)
    prediction = explanation.prediction
    body = prediction.to_dict()
    body["input_28x28"] = png_data_url(prediction.model_input)
    body.update(explanation_body(explanation))
    _finish(body, app, started)
    if app.config.log_predictions:
        status = _logged_status(prediction.status, prediction.reason)
        # "explanation", not "prediction": counts of predictions in the logs stay what they were.
        log.info(
            "explanation digit=%d confidence=%.4f status=%s elapsed_ms=%.1f source=%s model=%s",
            prediction.digit,
            prediction.confidence,
            status,
            body["elapsed_ms"],
            source,
            app.model_summary["file"],
        )
    return body


@bp.get("/health")
def health() -> dict[str, Any]:
    """Liveness and readiness: the app only exists once its model is loaded."""
    app = state()
    return {
        "status": "ok",
        "model": app.model_summary["file"],
        "version": app.version,
        "uptime_s": round(time.time() - app.started, 1),
    }


@bp.get("/model")
def model() -> dict[str, Any]:
    """The checkpoint's metadata and test accuracy."""
    return state().model_info
