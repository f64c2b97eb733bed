"""Write docs/img/example-photo.jpg: the guide's example, a phone-style photo of an MNIST
*test* digit written on ruled paper with uneven light (``benchmarks/renders.py``).

The photo is committed, so the guide's figures (``mnist-cnn explain --figures docs/img``)
read the same input on every machine; this script says where it came from and makes it
again (``make docs`` runs it first; it is deterministic for a given Pillow/libjpeg).

    python tools/make_example_photo.py [--index 0] [--seed 4] [--out docs/img/example-photo.jpg]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mnist_cnn import atomic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import renders  # noqa: E402  (benchmarks/ is not a package)


def main() -> int:
    """Render the example photo and write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, default=0, help="the MNIST test digit")
    parser.add_argument("--seed", type=int, default=4, help="the renderer's random seed")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "example-photo.jpg"))
    args = parser.parse_args()
    images, labels = renders.mnist_digits("test")
    photo = renders.ruled_paper(images[args.index], np.random.default_rng(args.seed))
    atomic.write_bytes(args.out, photo)
    print(
        f"wrote {args.out}: MNIST test digit {args.index} (a {labels[args.index]}) on ruled paper"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
