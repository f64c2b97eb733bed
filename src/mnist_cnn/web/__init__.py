"""The web app: a page where a person drops a photo or draws a digit, and a JSON API.

``create_app`` is a Flask application factory (as in the Flask tutorial's ``flaskr``): it
takes a ``WebConfig``, loads the model through the ``Predictor`` and registers two
blueprints, ``pages`` (the HTML page) and ``api`` (``/api/...``, JSON only).

Answers are strict JSON: a non-finite number (NaN, infinity) anywhere in an answer is a
500 error, logged, never a bare ``NaN`` that most JSON parsers reject (``StrictJSONProvider``).

The model is the only global state in the project: it is loaded once per process and
cached here, keyed by what identifies it, so that every app created in a process (and every
request, on every server thread) shares it. Loading happens when the app is created, not on
the first request, so a missing or broken checkpoint stops the server at start-up with a
clear message instead of answering requests with errors.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_cnn import __version__

if TYPE_CHECKING:
    from flask import Flask, Response

    from mnist_cnn.checkpoint import ModelInfo
    from mnist_cnn.predict import Predictor

# The WSGI environ key under which a server may pass a context manager factory: the app
# enters it while it waits for or runs a large decode, so that the server can let another
# request run meanwhile (``server.py`` adds a request thread). Absent: nothing happens.
STEP_ASIDE = "mnist_cnn.step_aside"

# 10 MB: a full-resolution phone photo fits; anything larger is refused before it is read.
# The production server enforces a limit too (see ``server.py``), so that an oversized body
# is cut off at the socket instead of being buffered.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class WebConfig:
    """What the web app needs to know. ``model_path=None`` means the shipped model."""

    model_path: Path | None = None
    # The Predictor's backend ("torch", or "onnx" when the ONNX extra is installed).
    backend: str = "torch"
    # Test-time augmentation: each answer averaged over one-pixel shifts of the input.
    tta: bool = False
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    # Log one line per prediction (digit, confidence, top 3, elapsed, model file).
    log_predictions: bool = True
    # Images whose decoding needs more than large_decode_bytes (estimated from the header)
    # are decoded at most max_large_decodes at a time in a process; up to
    # large_decode_waiters more wait (at most large_decode_wait_s), and any other gets a
    # 503 at once. Small images never wait for these slots.
    max_large_decodes: int = 1
    large_decode_waiters: int = 1
    large_decode_bytes: int = 16 * 1024 * 1024
    large_decode_wait_s: float = 10.0


# The process-wide model cache: (path, backend, tta) -> Predictor.
_PREDICTORS: dict[tuple[str, str, bool], Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def get_predictor(config: WebConfig) -> Predictor:
    """The Predictor for ``config``, loaded on first use and then shared by the process.

    Raises ``mnist_cnn.checkpoint.CheckpointError`` when the model cannot be loaded.
    """
    from mnist_cnn.checkpoint import find_model
    from mnist_cnn.predict import Predictor

    path = find_model(config.model_path).path
    key = (str(path.resolve()), config.backend, config.tta)
    with _PREDICTORS_LOCK:
        # The lock makes concurrent first requests (or apps) load the model once, not twice.
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            predictor = Predictor.from_checkpoint(path, backend=config.backend, tta=config.tta)
            _PREDICTORS[key] = predictor
    return predictor


def model_info(info: ModelInfo) -> dict[str, Any]:
    """What ``/api/model`` says: the model's facts and its checkpoint's JSON metadata.

    The per-epoch training history is left out (it is long and for plots, not clients), and
    the server's directories are not disclosed: only the model's file name (and an
    ensemble's members' run names).
    """
    metadata = {k: v for k, v in info.metadata.items() if k != "history"}
    training = metadata.get("training")
    if isinstance(training, dict):
        metadata["training"] = {
            k: v for k, v in training.items() if k not in ("model_path", "report_dir", "data_dir")
        }
    ensemble = metadata.get("ensemble")
    if isinstance(ensemble, dict) and isinstance(ensemble.get("members"), list):
        # Each member's run directory, by its name only (runs/best-s3 -> best-s3).
        metadata["ensemble"] = {
            **ensemble,
            "members": [
                {**m, "run": Path(m["run"]).name}
                if isinstance(m, dict) and isinstance(m.get("run"), str)
                else m
                for m in ensemble["members"]
            ],
        }
    return {
        **model_summary(info),
        "parameters": info.parameters,
        "metrics": dict(info.metrics),
        "input": {"mean": info.mean, "std": info.std},
        "metadata": metadata,
    }


def model_summary(info: ModelInfo) -> dict[str, Any]:
    """What each prediction (and the page) says about the model that made it.

    ``architecture`` is ``"Ensemble"`` for an ensemble; ``description`` says what runs in
    words ("ensemble of 5 BestCNN with shift TTA"), ``members`` and ``tta`` as values.
    """
    return {
        "architecture": info.architecture,
        "description": info.description,
        "members": info.members,
        "member_architecture": info.member_architecture,
        "tta": info.tta,
        "file": info.path.name,
        "backend": info.backend,
        "test_accuracy": info.test_accuracy,
    }


@dataclass(frozen=True)
class AppState:
    """What the views need, built once per app and kept in ``app.extensions`` (``state()``
    reads it back): never a module global, so two apps in one process can differ."""

    config: WebConfig
    predictor: Predictor
    model_info: dict[str, Any]  # the body of /api/model
    model_summary: dict[str, Any]  # what every prediction says about its model
    started: float  # time.time() at creation, for /api/health's uptime
    version: str
    large_decodes: threading.BoundedSemaphore  # see WebConfig.max_large_decodes
    large_decode_room: threading.BoundedSemaphore  # see WebConfig.large_decode_waiters


def state(app: Flask | None = None) -> AppState:
    """The ``AppState`` of ``app`` (default: the app handling the current request)."""
    if app is None:
        from flask import current_app

        app = current_app
    return app.extensions["mnist_cnn"]


def _strict_json_provider() -> type:
    """Flask's JSON provider, refusing NaN and infinities (built on first use: Flask is the
    web extra's)."""
    from flask.json.provider import DefaultJSONProvider

    class StrictJSONProvider(DefaultJSONProvider):
        """JSON as RFC 8259 has it: ``json.dumps`` writes NaN and Infinity by default,
        which JavaScript's JSON.parse and most other parsers refuse. A non-finite number
        raises ValueError instead, and the request ends as a logged 500."""

        def dumps(self, obj: Any, **kwargs: Any) -> str:
            kwargs.setdefault("allow_nan", False)
            return super().dumps(obj, **kwargs)

    return StrictJSONProvider


def create_app(config: WebConfig | None = None) -> Flask:
    """Build the Flask app around a loaded model.

    Raises ``mnist_cnn.checkpoint.CheckpointError`` when the model cannot be loaded.
    """
    # Flask is imported here, not at the top, so that `mnist-cnn --help` and the other
    # sub-commands work without the optional web extra installed.
    from flask import Flask

    config = config or WebConfig()
    app = Flask(__name__)
    app.config.update(
        # Flask answers 413 for larger bodies; our error handler turns that into JSON.
        MAX_CONTENT_LENGTH=config.max_upload_bytes,
        # Flask 3.1 limits non-file multipart fields to 500 kB by default; a canvas data URL
        # sent as a form field may be larger, and the overall cap above is what matters.
        MAX_FORM_MEMORY_SIZE=config.max_upload_bytes,
    )
    app.json = _strict_json_provider()(app)
    # Keep the documented key order in JSON answers (digit first, not alphabetical).
    app.json.sort_keys = False  # type: ignore[attr-defined]
    from mnist_cnn.web import api, errors, pages

    predictor = get_predictor(config)
    app.extensions["mnist_cnn"] = AppState(
        config=config,
        predictor=predictor,
        model_info=model_info(predictor.info),
        model_summary=model_summary(predictor.info),
        started=time.time(),
        version=__version__,
        large_decodes=threading.BoundedSemaphore(config.max_large_decodes),
        large_decode_room=threading.BoundedSemaphore(config.large_decode_waiters),
    )

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    errors.register(app)

    @app.context_processor
    def template_globals() -> dict[str, Any]:
        # The version busts browser caches of app.js and style.css after an upgrade.
        return {"version": __version__}

    @app.after_request
    def security_headers(response: Response) -> Response:
        # Everything is served from this origin (no CDN), so the policy can be strict; data:
        # and blob: images are the model's 28x28 input and the preview of an uploaded file.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    return app


__all__ = [
    "MAX_UPLOAD_BYTES",
    "STEP_ASIDE",
    "AppState",
    "WebConfig",
    "create_app",
    "get_predictor",
    "state",
]
