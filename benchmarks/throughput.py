"""Throughput benchmark: training steps and inference per second, NCHW against channels-last,
float32 against bfloat16 autocast; and the shipped model's batched inference in both.

    python benchmarks/throughput.py [--seconds 5] [--threads 2] [--model PATH] [--repeats 5]

1. Every architecture, freshly initialised: the evidence for training and serving in
   channels-last memory format on CPU (oneDNN's convolutions run much faster on NHWC
   tensors), and what bfloat16 autocast does to inference. Random inputs (speed does not
   depend on the pixels); Adam and cross-entropy as in training.
2. The shipped model (or ``--model``) over the 10,000 MNIST test images in chunks of 256,
   channels-last, as evaluation and the Predictor run it (``model.logits_of``), in float32
   and in bfloat16 autocast, with the test accuracy of each beside its speed: bfloat16
   keeps 8 bits of mantissa, so its answers can differ, and a speed is only worth
   reporting with the accuracy it costs. Each is timed ``--repeats`` times and its fastest
   run kept (a shared machine slows some runs); "per CPU-second" divides by the process's
   CPU time (all threads) instead of the wall clock.

Prints markdown tables. Target: >= 20,000 images/s for the shipped model in float32 on 2
threads (exits 1 below it). bfloat16 pays on CPUs with AVX512-BF16 or AMX; elsewhere it
may well be slower than float32.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from mnist_cnn import data
from mnist_cnn.checkpoint import load_model
from mnist_cnn.model import ARCHITECTURES, build_model, logits_of
from mnist_cnn.paths import SHIPPED_MODEL

TARGET = 20_000  # images/s, the shipped model in float32


def rate(step: Callable[[], object], batch: int, seconds: float) -> float:
    """Images per second of ``step()`` over about ``seconds`` (after a warm-up)."""
    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - start)


def autocast(bf16: bool) -> AbstractContextManager[object]:
    """bfloat16 autocast on the CPU, or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def measure(
    architecture: str, channels_last: bool, batch: int, seconds: float
) -> tuple[float, float, float]:
    """(training img/s, inference img/s in float32, in bfloat16 autocast) for one setting."""
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
    infer = []
    for bf16 in (False, True):
        with torch.inference_mode(), autocast(bf16):
            infer.append(rate(lambda: model(x_eval), 256, seconds))
    return train_rate, infer[0], infer[1]


def shipped(path: str, repeats: int) -> list[tuple[str, float, float, float, int]]:
    """(precision, best images/s, best images per CPU-second, test accuracy, predictions
    unlike float32's) of the model at ``path`` over the MNIST test set, in float32, then in
    bfloat16 autocast."""
    loaded = load_model(path)
    test = data.load_split("test")
    x = data.normalise(test.images, loaded.info.mean, loaded.info.std)

    def forward(bf16: bool) -> torch.Tensor:
        with autocast(bf16):
            return logits_of(loaded.model, x)

    predictions, best, per_cpu = {}, {}, {}
    # Each precision in a block of its own, float32 first, as predict_speed.py times it.
    for bf16 in (False, True):
        predictions[bf16] = forward(bf16).argmax(1)  # also the warm-up
        best[bf16] = per_cpu[bf16] = 0.0
        for _ in range(repeats):
            start, cpu = time.perf_counter(), time.process_time()
            forward(bf16)
            best[bf16] = max(best[bf16], len(x) / (time.perf_counter() - start))
            per_cpu[bf16] = max(per_cpu[bf16], len(x) / (time.process_time() - cpu))
    return [
        (
            "bfloat16 autocast" if bf16 else "float32",
            best[bf16],
            per_cpu[bf16],
            (predictions[bf16] == test.labels).double().mean().item(),
            int((predictions[bf16] != predictions[False]).sum()),
        )
        for bf16 in (False, True)
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the tables; 1 when the shipped model's float32 throughput misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads")
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="weights of table 2 (.pth)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes of table 2, each")
    parser.add_argument(
        "--shipped-only", action="store_true", help="only the shipped model's table (quick)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"training batch {args.batch_size}, inference batch 256"
    )
    if not args.shipped_only:
        print()
        print(
            "| network | memory format | training img/s | inference img/s | "
            "inference img/s, bf16 autocast |"
        )
        print("|---|---|---:|---:|---:|")
        for architecture in ARCHITECTURES:
            for channels_last in (False, True):
                train_rate, infer_rate, bf16_rate = measure(
                    architecture, channels_last, args.batch_size, args.seconds
                )
                fmt = "channels-last (NHWC)" if channels_last else "contiguous (NCHW)"
                print(
                    f"| {architecture} | {fmt} | {train_rate:,.0f} | {infer_rate:,.0f} | "
                    f"{bf16_rate:,.0f} |"
                )

    rows = shipped(args.model, args.repeats)
    print()
    print(f"model: {args.model}")
    print(
        "| the 10,000 MNIST test images, batches of 256, channels-last | images/s | "
        "images per CPU-second | test accuracy | predictions unlike float32's |"
    )
    print("|---|---:|---:|---:|---:|")
    for precision, images_per_second, cpu_rate, accuracy, changed in rows:
        print(
            f"| {precision} | {images_per_second:,.0f} | {cpu_rate:,.0f} | {accuracy:.2%} | "
            f"{changed} |"
        )
    same = rows[0][3] == rows[1][3] and rows[1][4] == 0
    print(
        f"\nbfloat16's test accuracy {'equals' if same else 'differs from'} float32's: "
        f"{rows[1][3]:.2%} against {rows[0][3]:.2%}, predictions changed: {rows[1][4]}."
    )
    if rows[0][1] < TARGET:
        print(f"TARGET MISSED: float32 {rows[0][1]:,.0f} images/s < {TARGET:,}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
