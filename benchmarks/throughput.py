"""Throughput benchmark: training steps and inference per second, NCHW against channels-last.

    python benchmarks/throughput.py [--seconds 5]

The evidence for training and serving in channels-last memory format on CPU: oneDNN's
convolutions run much faster on NHWC tensors. Random inputs (speed does not depend on the
pixels); Adam and cross-entropy as in training. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mnist_cnn.model import ARCHITECTURES, build_model


def rate(step: object, batch: int, seconds: float) -> float:
    """Images per second of ``step()`` over about ``seconds`` (after a warm-up)."""
    for _ in range(3):
        step()  # type: ignore[operator]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()  # type: ignore[operator]
        n += 1
    return n * batch / (time.perf_counter() - start)


def measure(
    architecture: str, channels_last: bool, batch: int, seconds: float
) -> tuple[float, float]:
    """(training img/s, inference img/s) for one setting."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(architecture).to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    model.train()
    train_rate = rate(train_step, batch, seconds)
    model.eval()
    x_eval = torch.randn(256, 1, 28, 28).contiguous(memory_format=fmt)
    with torch.inference_mode():
        infer_rate = rate(lambda: model(x_eval), 256, seconds)
    return train_rate, infer_rate


def main() -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"training batch {args.batch_size}, inference batch 256"
    )
    print("| network | memory format | training img/s | inference img/s |")
    print("|---|---|---:|---:|")
    for architecture in ARCHITECTURES:
        for channels_last in (False, True):
            train_rate, infer_rate = measure(
                architecture, channels_last, args.batch_size, args.seconds
            )
            fmt = "channels-last (NHWC)" if channels_last else "contiguous (NCHW)"
            print(f"| {architecture} | {fmt} | {train_rate:,.0f} | {infer_rate:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
