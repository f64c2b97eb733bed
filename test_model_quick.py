"""Ten-second smoke check of the shipped model, as the seed had: load it, predict a handful
of MNIST test digits (as they are, and printed on paper then photographed as a JPEG, through
the full preprocessing), print the results.

    python test_model_quick.py [--model src/mnist_cnn/shipped/mnist_cnn_model.pth] [--count 10]

Exits 1 when the model cannot be loaded or gets more than one in ten wrong.
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
from PIL import Image, ImageFilter

import _sources  # noqa: F401  (a fresh clone without `pip install -e .`: the sources in src/)
from mnist_cnn import data
from mnist_cnn.checkpoint import CheckpointError
from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Predictor


def as_photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """An MNIST digit printed dark on light paper, enlarged, blurred, noisy, saved as JPEG."""
    big = Image.fromarray(255 - digit).resize((168, 168), Image.Resampling.BICUBIC)
    page = Image.new("L", (320, 240), 235)
    page.paste(big, (int(rng.integers(10, 140)), int(rng.integers(10, 60))))
    page = page.filter(ImageFilter.GaussianBlur(0.8))
    noisy = np.asarray(page, np.float32) + rng.normal(0, 6, (240, 320))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="weights file (.pth)")
    parser.add_argument("--count", type=int, default=10, help="test digits to predict")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        predictor = Predictor.from_checkpoint(args.model)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = predictor.info
    accuracy = info.test_accuracy
    print(
        f"model: {info.path} ({info.architecture}, {info.parameters or 0:,} parameters, "
        f"MNIST test accuracy {'unknown' if accuracy is None else f'{100 * accuracy:.2f}%'})"
    )

    test = data.load_split("test")
    rng = np.random.default_rng(0)
    index = rng.choice(len(test), size=args.count, replace=False)
    digits, labels = test.images[index].numpy(), test.labels[index].tolist()
    raw = predictor.predict_inputs(digits)
    photos = predictor.predict_batch([as_photo(d, rng) for d in digits])

    print(f"{'index':>6}  {'true':>4}  {'raw 28x28':>16}  {'as a JPEG photo':>16}")
    wrong = 0
    for i, label, r, p in zip(index, labels, raw, photos, strict=True):
        wrong += (r.digit != label) + (p.digit != label)
        print(
            f"{i:>6}  {label:>4}  {r.digit:>5} ({100 * r.confidence:5.1f}%)  "
            f"{p.digit:>5} ({100 * p.confidence:5.1f}%)"
            + ("" if r.digit == p.digit == label else "  <- wrong")
        )
    total = 2 * len(labels)
    print(f"{total - wrong}/{total} correct in {time.perf_counter() - start:.1f} s")
    return 0 if wrong <= total // 10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
