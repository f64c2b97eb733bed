"""The optional parts of mnist-cnn, and the one line that says how to install each.

The core (training, evaluation, prediction, the command line) needs only the dependencies
every install has. The rest are extras; when one is missing, every command says the same
thing, naming what is missing and the command that installs it.
"""

from __future__ import annotations

EXTRAS = {
    "web": "the web app",
    "onnx": "the ONNX export and backend",
    "gradio": "the Gradio interface",
    "notebooks": "running the notebooks",
    "test": "the test suite",
}


def install_hint(extra: str, missing: str | None = None) -> str:
    """``the web app needs the web extra (flask is missing): pip install 'mnist-cnn[web]'
    (from a clone: pip install -e '.[web]')``."""
    what = EXTRAS[extra]
    because = f" ({missing} is missing)" if missing else ""
    return (
        f"{what} needs the {extra} extra{because}: pip install 'mnist-cnn[{extra}]' "
        f"(from a clone: pip install -e '.[{extra}]')"
    )
