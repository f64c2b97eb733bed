"""The seed's ``from src.model import MNISTCNN``: the network is now ``mnist_cnn.model``.

Kept so that the seed's notebooks and scripts still import it; new code should write
``from mnist_cnn.model import MNISTCNN``. This file is not part of the package.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # src/: the package's sources

from mnist_cnn.model import MNIST_MEAN, MNIST_STD, MNISTCNN

__all__ = ["MNISTCNN", "MNIST_MEAN", "MNIST_STD"]
