"""The HTML page: one template, the JavaScript and CSS beside it in ``static/``."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    """The page where a person drops a photo or draws a digit."""
    state = current_app.extensions["mnist_cnn"]
    return render_template(
        "index.html",
        model=state["model_summary"],
        max_upload_bytes=state["config"].max_upload_bytes,
    )
