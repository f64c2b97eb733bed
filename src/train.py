"""The seed's ``python src/train.py``: training is now ``mnist-cnn train`` (``make train``).

This file forwards to it, options included, after saying so; it is not part of the package.
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # src/: the package's sources
    print("src/train.py is now `mnist-cnn train` (or `make train`); running it:", file=sys.stderr)
    sys.argv = ["mnist-cnn", "train", *sys.argv[1:]]
    runpy.run_module("mnist_cnn", run_name="__main__")
