"""Prediction speed: one photo end to end on one CPU thread, and batched throughput.

1. Latency: a 640x480 JPEG phone photo of a digit (the "paper photo" of
   realistic_uploads.py), from its bytes to the Prediction (decode, preprocess, forward),
   on one thread; p50/p90/p99 over many runs, with the time of each stage: alone (the same
   call repeated) and in sequence (the stages of each end-to-end request, timed as it runs
   them). Then the same for a full-size 12 MP (4000x3000) phone JPEG, quality 90: a sheet
   of paper with the digit on a desk, in slight perspective (``renders.big_phone_photo``).
2. Throughput: the forward pass over the 10,000 MNIST test images, batched, on 2 threads,
   with PyTorch (channels-last, chunks of 256: ``model.logits_of``) and ONNX Runtime.

    python benchmarks/predict_speed.py [--model models/mnist_cnn_model.pth] [--runs 300]
        [--big-runs 60]

Every row is measured in the same interleaved blocks (a few calls of each in turn), so that
a machine shared with other work slows them alike; "CPU" is the calling thread's own CPU
time (``time.thread_time``), which waiting for a core does not inflate. A stage alone is
faster than within a request: repeated, its code and data stay in the CPU's caches, while
a request runs decode, preprocessing and the network one after the other, each evicting
the others' (and on a shared machine, other processes evict them all). The "in sequence"
rows add up to the end-to-end time.

Targets: p50 <= 2 ms for the 640x480 photo on one thread (issue 3 asked for 3 ms) and
<= 40 ms for the 12 MP photo (issue 9), end to end with PyTorch; >= 20,000 images/s batched
on 2 cores with PyTorch. On a shared machine the figures are indicative. Exits 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from renders import big_phone_photo, photo  # the renderers of the accuracy benchmark

from mnist_cnn import data
from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Predictor
from mnist_cnn.preprocess import WORK_SIDE, decode, load_image, locate, to_mnist

# Calls of each measurement per block: small enough that every row sees the machine's
# whole run, large enough that switching rows does not dominate.
BLOCK = 10


@dataclass
class Timed:
    """Milliseconds of a measurement's calls: wall clock and the thread's CPU time."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall * 1e3)
        self.cpu.append(cpu * 1e3)


class InSequence:
    """One end-to-end request whose stages time themselves as it runs them: what
    ``Predictor.predict`` does (``prepare``'s decode and locate, then the network)."""

    STAGES = ("decode", "locate", "forward and answer")

    def __init__(self, jpeg: bytes, predictor: Predictor) -> None:
        self.jpeg, self.predictor = jpeg, predictor
        self.stages = {name: Timed() for name in self.STAGES}

    def __call__(self) -> None:
        marks = [(time.perf_counter(), time.thread_time())]
        decoded = decode(self.jpeg, self.predictor.max_pixels, max_side=WORK_SIDE)
        marks.append((time.perf_counter(), time.thread_time()))
        located = locate(decoded.gray)
        marks.append((time.perf_counter(), time.thread_time()))
        self.predictor.predict_located([located])
        marks.append((time.perf_counter(), time.thread_time()))
        for name, (w0, c0), (w1, c1) in zip(self.STAGES, marks, marks[1:], strict=False):
            self.stages[name].add(w1 - w0, c1 - c0)


def interleaved(
    measurements: dict[str, Callable[[], object]], runs: int, warmup: int = 20
) -> dict[str, Timed]:
    """``runs`` timed calls of each function, in turns of ``BLOCK`` calls (after ``warmup``
    untimed calls of each)."""
    for fn in measurements.values():
        for _ in range(warmup):
            fn()
        if isinstance(fn, InSequence):
            fn.stages = {name: Timed() for name in fn.STAGES}  # forget the warm-up
    out = {name: Timed() for name in measurements}
    done = 0
    while done < runs:
        n = min(BLOCK, runs - done)
        for name, fn in measurements.items():
            timed = out[name]
            for _ in range(n):
                wall, cpu = time.perf_counter(), time.thread_time()
                fn()
                timed.add(time.perf_counter() - wall, time.thread_time() - cpu)
        done += n
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def row(label: str, timed: Timed, bold: bool = False) -> str:
    """A markdown row: p50, p90, p99 of the wall clock, then the p50 of the CPU time."""
    p50 = f"{percentile(timed.wall, 50):.2f} ms"
    if bold:
        label, p50 = f"**{label}**", f"**{p50}**"
    return (
        f"| {label} | {p50} | {percentile(timed.wall, 90):.2f} ms | "
        f"{percentile(timed.wall, 99):.2f} ms | {percentile(timed.cpu, 50):.2f} ms |"
    )


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

    # ---- latency, one thread: PyTorch's and OpenCV's pools, as each server worker has them
    torch.set_num_threads(1)
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    backends = {"PyTorch": Predictor.from_checkpoint(args.model)}
    try:
        backends["ONNX Runtime"] = Predictor.from_checkpoint(args.model, backend="onnx", threads=1)
    except Exception as exc:  # the optional extra may be missing
        print(f"(ONNX Runtime skipped: {exc})", file=sys.stderr)
    gray = load_image(jpeg, max_side=WORK_SIDE)
    image = to_mnist(gray)
    measurements: dict[str, Callable[[], object]] = {
        "decode": lambda: load_image(jpeg, max_side=WORK_SIDE),
        "preprocess": lambda: to_mnist(gray),
    }
    for name, predictor in backends.items():
        measurements[f"forward {name}"] = lambda p=predictor: p.predict_inputs(image[None])
        measurements[f"total {name}"] = lambda p=predictor: p.predict(jpeg)
    sequence = InSequence(jpeg, backends["PyTorch"])
    measurements["in sequence"] = sequence
    timed = interleaved(measurements, args.runs)

    print(
        f"model: {args.model}; input: a {len(jpeg) / 1024:.0f} kB 640x480 JPEG photo, "
        f"{args.runs} runs\n"
    )
    print("| one 640x480 JPEG, 1 thread | p50 | p90 | p99 | p50 CPU |")
    print("|---|---:|---:|---:|---:|")
    print(row("decode alone (JPEG at reduced scale)", timed["decode"]))
    print(row("preprocess alone (to the 28x28 input)", timed["preprocess"]))
    for name in backends:
        print(row(f"forward alone, {name}", timed[f"forward {name}"]))
        print(row(f"end to end, {name}", timed[f"total {name}"], bold=True))
    print()
    print("| one 640x480 JPEG, PyTorch: the stages of each request | p50 | p90 | p99 | p50 CPU |")
    print("|---|---:|---:|---:|---:|")
    for name, values in sequence.stages.items():
        print(row(name, values))
    print(row("all three", timed["in sequence"]))

    # ---- the 12 MP phone photo, one thread: fewer runs, each is ~10x longer
    big_gray = load_image(big_jpeg, max_side=WORK_SIDE)
    big = {
        "decode (JPEG at reduced scale)": lambda: load_image(big_jpeg, max_side=WORK_SIDE),
        "preprocess (to the 28x28 input)": lambda: to_mnist(big_gray),
    }
    for name, predictor in backends.items():
        big[f"end to end, {name}"] = lambda p=predictor: p.predict(big_jpeg)
    big_timed = interleaved(big, args.big_runs, warmup=3)
    print()
    print(
        f"| one 4000x3000 (12 MP) JPEG, {len(big_jpeg) / 1e6:.1f} MB, 1 thread, "
        f"{args.big_runs} runs | p50 | p90 | p99 | p50 CPU |"
    )
    print("|---|---:|---:|---:|---:|")
    for label, values in big_timed.items():
        print(row(label, values, bold=label.startswith("end to end")))

    # ---- throughput, 2 threads: the Predictors' own forward functions
    torch.set_num_threads(2)
    cv2.setNumThreads(cv_threads)
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
    p50 = statistics.median(timed["total PyTorch"].wall)
    if p50 > 2.0:
        failures.append(f"end-to-end p50 {p50:.2f} ms > 2 ms")
    big_p50 = statistics.median(big_timed["end to end, PyTorch"].wall)
    if big_p50 > 40.0:
        failures.append(f"12 MP end-to-end p50 {big_p50:.2f} ms > 40 ms")
    if rates["PyTorch"] < 20_000:
        failures.append(f"PyTorch throughput {rates['PyTorch']:,.0f} images/s < 20,000")
    for failure in failures:
        print(f"TARGET MISSED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
