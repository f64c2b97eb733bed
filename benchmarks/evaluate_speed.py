"""Evaluation benchmark: the time to evaluate a checkpoint on the 10,000 MNIST test images.

    python benchmarks/evaluate_speed.py [--model models/mnist_cnn_model.pth] [--repeats 5]

Measures what `mnist-cnn evaluate` does before writing its report: loading the verified
test set, loading the model, and the forward pass over all 10,000 images, for 1 thread and
for every core. Prints a markdown table of medians. Target: under 2 seconds in all.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mnist_cnn import data
from mnist_cnn.checkpoint import load_model
from mnist_cnn.evaluate import evaluate
from mnist_cnn.paths import SHIPPED_MODEL


def measure(model_path: str, data_dir: str, threads: int, repeats: int) -> dict[str, float]:
    """Median seconds of each step over ``repeats`` runs (after one warm-up run)."""
    torch.set_num_threads(threads)
    steps: dict[str, list[float]] = {"data": [], "model": [], "forward": [], "total": []}
    accuracy = 0.0
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        test = data.load_split("test", data_dir or None)
        t1 = time.perf_counter()
        loaded = load_model(model_path)
        t2 = time.perf_counter()
        result = evaluate(loaded.model, test, loaded.mean, loaded.std)
        t3 = time.perf_counter()
        accuracy = result.accuracy
        if i == 0:
            continue  # warm-up: first-call allocations and oneDNN kernel selection
        for key, value in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            steps[key].append(value)
    return {**{k: statistics.median(v) for k, v in steps.items()}, "accuracy": accuracy}


def main() -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument(
        "--data-dir", default="", help="MNIST directory (default: mnist_cnn.paths' rule)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cores = torch.get_num_threads()
    print(
        "| threads | read + verify test set | load model | forward 10,000 | total | img/s "
        "(forward) | accuracy |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for threads in sorted({1, cores}):
        m = measure(args.model, args.data_dir, threads, args.repeats)
        print(
            f"| {threads} | {m['data']:.3f} s | {m['model']:.3f} s | {m['forward']:.3f} s | "
            f"{m['total']:.3f} s | {10_000 / m['forward']:,.0f} | {100 * m['accuracy']:.2f}% |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
