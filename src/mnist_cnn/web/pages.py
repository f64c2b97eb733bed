"""The HTML page: one template, the JavaScript and CSS beside it in ``static/``."""

from __future__ import annotations

from flask import Blueprint, render_template

from mnist_cnn.web import state

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    """The page where a person drops a photo or draws a digit."""
    app = state()
    return render_template(
        "index.html", model=app.model_summary, max_upload_bytes=app.config.max_upload_bytes
    )
