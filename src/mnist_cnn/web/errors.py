"""Errors as the API's clients see them: ``{"error": {"code", "message"}}`` and a status.

Every failure a request can cause ends here with the right status and a message a person
can act on: ``ApiError`` for what the views detect, the preprocessing's ``ImageError``
subclasses for bad images, Werkzeug's HTTP errors (404, 405, 413...) and, last, anything
unexpected (500, logged with its traceback, the server stays up). Under ``/api/`` the answer
is always JSON; elsewhere a person with a browser gets a small HTML page.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from mnist_cnn.preprocess import (
    ImageError,
    ImageTooLargeError,
    NoDigitError,
    UnsupportedImageError,
)

log = logging.getLogger("mnist_cnn.web")

# The status of each image error: 415 for what is not an image we decode, 422 for an image
# we decoded (or measured from its header) but cannot classify.
IMAGE_ERROR_STATUS: dict[type[ImageError], int] = {
    UnsupportedImageError: 415,
    ImageTooLargeError: 422,
    NoDigitError: 422,
}

# Machine-readable codes of Werkzeug's HTTP errors that clients may meet.
HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error a view reports to the client as it is (with ``headers``: such as a 503's
    Retry-After)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    """The JSON body and status of an error."""
    return jsonify(error={"code": code, "message": message}), status


def image_error_status(exc: ImageError) -> int:
    """The HTTP status for an image the preprocessing refused."""
    for cls in type(exc).__mro__:
        if cls in IMAGE_ERROR_STATUS:
            return IMAGE_ERROR_STATUS[cls]
    return 422  # an ImageError subclass added later: the image is the problem, not the request


def human_size(n: int) -> str:
    """A byte count for people: 10 MB, 512 kB."""
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.3g} MB"
    return f"{n / 1024:.3g} kB"


def _wants_json() -> bool:
    return request.path.startswith("/api/") or (
        request.accept_mimetypes.best_match(["application/json", "text/html"]) == "application/json"
    )


def register(app: Flask) -> None:
    """Install the error handlers on ``app``."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        response = app.make_response(error_response(exc.status, exc.code, exc.message))
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(ImageError)
    def image_error(exc: ImageError) -> tuple[Response, int]:
        return error_response(image_error_status(exc), exc.code, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = HTTP_CODES.get(status, f"http_{status}")
        message = exc.description or exc.name
        if status == 413:
            message = (
                f"the request is larger than the limit of "
                f"{human_size(app.config['MAX_CONTENT_LENGTH'])}; send a smaller image"
            )
        if _wants_json():
            response = app.make_response(error_response(status, code, message))
        else:
            html = render_template("error.html", status=status, name=exc.name, message=message)
            response = app.make_response((html, status))
        # Keep the headers the error defines, such as the Allow list of a 405.
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    @app.errorhandler(InternalServerError)
    def internal_error(exc: InternalServerError) -> tuple[Response | str, int]:
        # Flask hands unhandled exceptions here wrapped in InternalServerError. The traceback
        # goes to the server log; the client gets a message without internals.
        original = getattr(exc, "original_exception", None)
        if original is not None:
            log.error(
                "unhandled error on %s %s",
                request.method,
                request.path,
                exc_info=(type(original), original, original.__traceback__),
            )
        message = "the server failed to handle this request; the error has been logged"
        if _wants_json():
            return error_response(500, "internal_error", message)
        return render_template(
            "error.html", status=500, name="Internal Server Error", message=message
        ), 500
