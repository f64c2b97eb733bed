"""Let the repository's scripts run from a fresh clone without ``pip install -e .``.

``python app.py``, ``python test_model_quick.py`` and the seed's ``python src/train.py``
import this first: when the ``mnist_cnn`` package is not installed, its sources beside this
file (``src/``) become importable. An installed package always wins.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("mnist_cnn") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
