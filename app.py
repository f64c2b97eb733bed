"""Run the web app with Flask's development server, as the original project did:

    python app.py            # then open http://localhost:5000

For anything but local development use the production server: ``mnist-cnn serve``
(``make serve``), which runs several workers, limits request sizes and logs each prediction.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import _sources  # noqa: F401  (a fresh clone without `pip install -e .`: the sources in src/)
from mnist_cnn.checkpoint import CheckpointError

try:
    from mnist_cnn.web import WebConfig, create_app
except ModuleNotFoundError as exc:  # the web extra is not installed: say so in one line
    from mnist_cnn.extras import install_hint

    raise SystemExit(f"python app.py: {install_hint('web', exc.name)}") from None


def main(argv: list[str] | None = None) -> int:
    """Start the development server; returns the exit status."""
    parser = argparse.ArgumentParser(
        description="The mnist-cnn web app on Flask's development server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5000, help="TCP port")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="weights file or run directory (default: ./models/mnist_cnn_model.pth when it exists, "
        "else the model shipped with the package)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="Flask debug mode: reload on code changes, interactive tracebacks "
        "(never expose it: the debugger runs code)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        app = create_app(WebConfig(model_path=args.model))
    except CheckpointError as exc:
        print(f"app.py: error: {exc}", file=sys.stderr)
        return 1
    app.run(host=args.host, port=args.port, debug=args.debug)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
