"""The ``mnist-cnn`` command line: one sub-command per job, each a thin layer that parses
options, calls the library and prints what it returns.

Every training option is a field of ``TrainConfig``; its flag, type and default come from
the dataclass, so ``--help`` always shows the real defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mnist_cnn import __version__

# Exit statuses: 0 success, 1 the job failed (bad file, failed check), 2 bad usage
# (argparse's own), 130 interrupted by Ctrl-C (the shell's convention).
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

TRAIN_HELP = {
    "architecture": "network: MNISTCNN (the seed CNN) or FastCNN",
    "epochs": "passes over the training set",
    "batch_size": "images per optimisation step",
    "lr": "learning rate (the peak rate for the onecycle schedule)",
    "schedule": "learning-rate schedule: onecycle or constant",
    "weight_decay": "Adam weight decay",
    "augment": "random small rotations, scalings and shifts of training images",
    "label_smoothing": "cross-entropy label smoothing",
    "channels_last": "channels-last memory format (faster convolutions on CPU)",
    "val_size": "validation images held out (stratified) from the training set",
    "train_subset": "train on only this many images (0: all)",
    "seed": "random seed: initialisation, split, shuffling, augmentation, dropout",
    "threads": "torch CPU threads (0: one per core)",
    "device": "auto (cuda, then mps, then cpu), cpu, cuda or mps",
    "data_dir": "directory with the four MNIST IDX files (.gz or not)",
    "model_path": "where to write the weights; metadata goes beside it as .json",
    "report_dir": "where to write training_curves.png",
}


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    from mnist_cnn.train import PRESETS, TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model on MNIST",
        description="Train on the bundled MNIST. Options not given take the preset's value; "
        "the defaults shown are those of the default preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="a recipe: default (best), seed (the seed's baseline), fast (>=99%% in <30 s)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last epoch checkpoint")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar per epoch (default: when stderr is a terminal)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        # SUPPRESS keeps flags the user did not give out of the namespace, so the preset's
        # value applies; the default shown in --help is the dataclass's.
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"{TRAIN_HELP[f.name]} (default: {f.default})")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=f.name.upper(),
                           help=f"{TRAIN_HELP[f.name]} (default: {f.default})")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from mnist_cnn.data import DatasetError
    from mnist_cnn.train import TrainConfig, TrainingError, config_for, train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    try:
        config = config_for(args.preset, **overrides)
    except (ValueError, TypeError) as exc:
        return _fail(str(exc))
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    print(f"training {config.architecture} ({args.preset} preset) for {config.epochs} epochs")
    try:
        result = train(config, resume=args.resume, progress=progress, log=print)
    except (DatasetError, TrainingError, ValueError) as exc:
        return _fail(str(exc))
    if result.interrupted:
        return EXIT_INTERRUPTED
    print(
        f"test accuracy {100 * (result.test_accuracy or 0):.2f}% (loss {result.test_loss:.4f}) "
        f"after {result.seconds:.0f}s of training"
    )
    for what, path in result.outputs.items():
        print(f"wrote {what}: {path}")
    return 0


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on the MNIST test set",
        description="Test accuracy and loss, per-class precision and recall, a confusion matrix, "
        "the worst mistakes and a JSON report. Works on any checkpoint, including a plain "
        "seed-format state_dict.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="models/mnist_cnn_model.pth", help="weights file (.pth)")
    p.add_argument("--data-dir", default="data/mnist", help="directory with the MNIST IDX files")
    p.add_argument("--report-dir", default="reports", help="where to write the report and figures")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: one per core)")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from mnist_cnn import data
    from mnist_cnn.checkpoint import CheckpointError, load_model
    from mnist_cnn.evaluate import build_report, evaluate, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        loaded = load_model(args.model)
        test = data.load_split("test", args.data_dir)
    except (CheckpointError, data.DatasetError) as exc:
        return _fail(str(exc))
    result = evaluate(loaded.model, test, loaded.mean, loaded.std)
    report = build_report(result, loaded.path, data.dataset_sha256())
    paths = write_report(report, test.images, result, args.report_dir)
    print(f"model: {loaded.path} ({loaded.architecture})")
    print(
        f"test accuracy {100 * report['accuracy']:.2f}%  loss {report['loss']:.4f}  "
        f"errors {report['errors']}/{report['examples']}  "
        f"({report['seconds']:.2f}s, {report['images_per_second']} img/s)"
    )
    print("class  precision  recall  support")
    for row in report["per_class"]:
        print(f"{row['class']:>5}  {100 * row['precision']:>8.2f}%  {100 * row['recall']:>5.2f}%  "
              f"{row['support']:>7}")
    for what, path in paths.items():
        print(f"wrote {what}: {path}")
    return 0


def _add_download_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download MNIST from the public mirrors (the repository already bundles it)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dir", default="data/mnist", help="where to put the four .gz files")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per connection attempt")
    p.set_defaults(handler=_download)


def _download(args: argparse.Namespace) -> int:
    from mnist_cnn.data import DatasetError, download

    try:
        download(Path(args.dir), timeout=args.timeout, progress=sys.stderr.isatty())
    except DatasetError as exc:
        return _fail(str(exc))
    print(f"MNIST is complete and verified in {args.dir}")
    return 0


def _fail(message: str) -> int:
    print(f"mnist-cnn: error: {message}", file=sys.stderr)
    return EXIT_FAILED


# Each later capability registers its sub-command here.
PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train_parser,
    _add_evaluate_parser,
    _add_download_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The full ``mnist-cnn`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mnist-cnn",
        description="Train, evaluate and use a CNN for handwritten digits (MNIST).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
