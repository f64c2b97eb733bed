"""Prediction speed: one photo end to end on one CPU thread, and batched throughput.

1. Latency: a 640x480 JPEG phone photo of a digit (the "paper photo" of
   realistic_uploads.py), from its bytes to the Prediction (decode, preprocess, forward),
   on one thread; p50/p90/p99 over many runs, with the time of each stage. Then the same
   for a full-size 12 MP (4000x3000) phone JPEG, quality 90: a sheet of paper with the
   digit on a desk, in slight perspective (``renders.big_phone_photo``).
2. Throughput: the forward pass over the 10,000 MNIST test images, batched, on 2 threads,
   with PyTorch (channels-last, chunks of 256: ``model.logits_of``) and ONNX Runtime.

    python benchmarks/predict_speed.py [--model models/mnist_cnn_model.pth] [--runs 300]
        [--big-runs 60]

Targets: p50 <= 3 ms for the 640x480 photo on one thread (issue 3) and <= 40 ms for the
12 MP photo (issue 9), end to end with PyTorch; >= 10,000 images/s batched on 2 cores with
PyTorch. On a shared machine the figures are indicative. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from renders import big_phone_photo, photo  # the renderers of the accuracy benchmark

from mnist_cnn import data
from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Predictor
from mnist_cnn.preprocess import WORK_SIDE, load_image, to_mnist


def timings(fn: Callable[[], object], runs: int, warmup: int = 20) -> list[float]:
    """Milliseconds of each of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def best_rate(fn: Callable[[], object], count: int, repeats: int = 5) -> float:
    """Images per second of the fastest of ``repeats`` runs over ``count`` images."""
    fn()
    best = min(_seconds(fn) for _ in range(repeats))
    return count / best


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="weights file (.pth)")
    parser.add_argument("--runs", type=int, default=300, help="timed single-image runs")
    parser.add_argument("--big-runs", type=int, default=60, help="timed runs of the 12 MP JPEG")
    args = parser.parse_args(argv)

    digit = data.load_split("test").images[0].numpy()
    jpeg = photo(digit, np.random.default_rng(0))
    # Upright (no EXIF turn) so that the stages time the same pixels; quality 90 as phones.
    big_jpeg = big_phone_photo(
        digit, np.random.default_rng(0), frame=(3000, 4000), orientation=1, quality=90
    )
    rows = []

    # ---- latency, one thread
    torch.set_num_threads(1)
    backends = {"PyTorch": Predictor.from_checkpoint(args.model)}
    try:
        backends["ONNX Runtime"] = Predictor.from_checkpoint(args.model, backend="onnx", threads=1)
    except Exception as exc:  # the optional extra may be missing
        print(f"(ONNX Runtime skipped: {exc})", file=sys.stderr)
    gray = load_image(jpeg, max_side=WORK_SIDE)
    decode = timings(lambda: load_image(jpeg, max_side=WORK_SIDE), args.runs)
    prep = timings(lambda: to_mnist(gray), args.runs)
    image = to_mnist(gray)
    latency = {}
    for name, predictor in backends.items():
        forward = timings(lambda p=predictor: p.predict_inputs(image[None]), args.runs)
        total = timings(lambda p=predictor: p.predict(jpeg), args.runs)
        latency[name] = total
        rows.append((name, total, forward))

    print(
        f"model: {args.model}; input: a {len(jpeg) / 1024:.0f} kB 640x480 JPEG photo, "
        f"{args.runs} runs\n"
    )
    print("| one 640x480 JPEG, 1 thread | p50 | p90 | p99 |")
    print("|---|---:|---:|---:|")
    print(
        f"| decode (JPEG at reduced scale) | {percentile(decode, 50):.2f} ms | "
        f"{percentile(decode, 90):.2f} ms | {percentile(decode, 99):.2f} ms |"
    )
    print(
        f"| preprocess (to the 28x28 input) | {percentile(prep, 50):.2f} ms | "
        f"{percentile(prep, 90):.2f} ms | {percentile(prep, 99):.2f} ms |"
    )
    for name, total, forward in rows:
        print(
            f"| forward, {name} | {percentile(forward, 50):.2f} ms | "
            f"{percentile(forward, 90):.2f} ms | {percentile(forward, 99):.2f} ms |"
        )
        print(
            f"| **end to end, {name}** | **{percentile(total, 50):.2f} ms** | "
            f"{percentile(total, 90):.2f} ms | {percentile(total, 99):.2f} ms |"
        )

    # ---- the 12 MP phone photo, one thread: fewer runs, each is ~10x longer
    big_gray = load_image(big_jpeg, max_side=WORK_SIDE)
    big_rows = [
        (
            "decode (JPEG at reduced scale)",
            timings(lambda: load_image(big_jpeg, max_side=WORK_SIDE), args.big_runs, 3),
        ),
        ("preprocess (to the 28x28 input)", timings(lambda: to_mnist(big_gray), args.big_runs, 3)),
    ]
    for name, predictor in backends.items():
        total = timings(lambda p=predictor: p.predict(big_jpeg), args.big_runs, 3)
        latency[f"{name} 12 MP"] = total
        big_rows.append((f"**end to end, {name}**", total))
    print()
    print(
        f"| one 4000x3000 (12 MP) JPEG, {len(big_jpeg) / 1e6:.1f} MB, 1 thread, "
        f"{args.big_runs} runs | p50 | p90 | p99 |"
    )
    print("|---|---:|---:|---:|")
    for label, values in big_rows:
        p50 = f"{percentile(values, 50):.2f} ms"
        if label.startswith("**"):
            p50 = f"**{p50}**"
        p90, p99 = percentile(values, 90), percentile(values, 99)
        print(f"| {label} | {p50} | {p90:.2f} ms | {p99:.2f} ms |")

    # ---- throughput, 2 threads: the Predictors' own forward functions
    torch.set_num_threads(2)
    test = data.load_split("test")
    x = data.normalise(test.images, backends["PyTorch"].mean, backends["PyTorch"].std)
    rates = {"PyTorch": best_rate(lambda: backends["PyTorch"].logits(x), len(x))}
    if "ONNX Runtime" in backends:
        onnx2 = Predictor.from_checkpoint(args.model, backend="onnx", threads=2)
        rates["ONNX Runtime"] = best_rate(
            lambda: [onnx2.logits(chunk) for chunk in x.split(256)], len(x)
        )
    print()
    print("| batched forward, 10,000 MNIST test images, 2 threads | images/s |")
    print("|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} (batches of 256) | {rate:,.0f} |")

    failures = []
    p50 = statistics.median(latency["PyTorch"])
    if p50 > 3.0:
        failures.append(f"end-to-end p50 {p50:.2f} ms > 3 ms")
    big_p50 = statistics.median(latency["PyTorch 12 MP"])
    if big_p50 > 40.0:
        failures.append(f"12 MP end-to-end p50 {big_p50:.2f} ms > 40 ms")
    if rates["PyTorch"] < 10_000:
        failures.append(f"PyTorch throughput {rates['PyTorch']:,.0f} images/s < 10,000")
    for failure in failures:
        print(f"TARGET MISSED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
