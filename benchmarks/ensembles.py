"""Ensembles and test-time augmentation: what averaging buys, on validation and on test.

    mnist-cnn train --preset best --members 5 --name best-x5      # members + ensemble of 5
    python benchmarks/ensembles.py runs/best-x5
    python benchmarks/ensembles.py runs/s0 runs/s1 runs/s2 --sizes 1,3   # runs trained apart

Reads the members of an ensemble run (``runs/NAME/members/seed-*/``, trained by ``mnist-cnn
train --members N``), or the runs given (trained with one ``--split-seed``, so that they
share a validation split), and prints, for each member alone and for
the ensembles of the first k members (``--sizes``), with and without shift TTA
(``model.ShiftTTA``): validation accuracy (the split no member trained on, where settings
are chosen), test accuracy and test NLL, and the time to classify the 10,000 test images.
Ensembles are assembled in memory from the members' checkpoints (``checkpoint.build_ensemble``),
exactly as ``save_ensemble`` writes them.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_cnn import data
from mnist_cnn.checkpoint import build_ensemble
from mnist_cnn.ensemble import member_config, validation_split
from mnist_cnn.model import ShiftTTA, logits_of
from mnist_cnn.train import split_data


def _score(model: torch.nn.Module, split: data.Split, mean: float, std: float) -> tuple:
    start = time.perf_counter()
    logits = logits_of(model, data.normalise(split.images, mean, std))
    seconds = time.perf_counter() - start
    accuracy = (logits.argmax(1) == split.labels).float().mean().item()
    # Logits or log-probabilities (ensembles, TTA): log_softmax makes both log-probabilities.
    nll = F.nll_loss(F.log_softmax(logits, 1), split.labels).item()
    return accuracy, nll, seconds


def main() -> int:
    """Score the members and their ensembles and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs",
        type=Path,
        nargs="+",
        help="an ensemble run directory (train --members N), or the members' runs",
    )
    parser.add_argument("--sizes", default="1,3,5", help="ensemble sizes (first k members)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if len(args.runs) == 1 and (args.runs[0] / "members").is_dir():
        members = sorted(
            (args.runs[0] / "members").glob("seed-*/mnist_cnn_model.pth"),
            key=lambda p: int(p.parent.name.removeprefix("seed-")),
        )
    else:
        members = [r / "mnist_cnn_model.pth" if r.is_dir() else r for r in args.runs]
    if not members or not all(m.is_file() for m in members):
        parser.error(f"{' '.join(map(str, args.runs))}: no members found")
    # The members' shared validation split, rebuilt from their recorded settings.
    configs = [member_config(m) for m in members]
    if None in configs:
        parser.error("a member's JSON records no training settings")
    if len({validation_split(c) for c in configs}) > 1:
        parser.error(
            "the members were validated on different splits: train them with one --split-seed"
        )
    config = configs[0]
    _, val_set = split_data(config)
    test_set = data.load_split("test", config.data_dir or None)
    sizes = [int(k) for k in args.sizes.split(",") if int(k) <= len(members)]

    rows = []
    for k in range(len(members)):  # each member alone
        model, manifest = build_ensemble(members[k : k + 1])
        mean, std = manifest["input"]["mean"], manifest["input"]["std"]
        rows.append((f"member seed {configs[k].seed}", model, mean, std))
    for k in sizes:
        if k > 1:
            model, manifest = build_ensemble(members[:k])
            mean, std = manifest["input"]["mean"], manifest["input"]["std"]
            rows.append((f"ensemble of {k}", model, mean, std))
    lines = [
        f"{len(members)} members of {config.architecture}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}",
        "",
        "| model | TTA | validation accuracy | test accuracy | test NLL | test errors "
        "| 10,000 test images |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, model, mean, std in rows:
        for tta in (False, True):
            net = ShiftTTA(model).eval() if tta else model
            val = _score(net, val_set, mean, std)
            test = _score(net, test_set, mean, std)
            errors = round((1 - test[0]) * len(test_set))
            lines.append(
                f"| {name} | {'shifts' if tta else 'no'} | {100 * val[0]:.2f}% | "
                f"{100 * test[0]:.2f}% | {test[1]:.4f} | {errors} | {test[2]:.1f} s |"
            )
            print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
