"""The ``mnist-cnn`` command line: one sub-command per job, each a thin layer that parses
options, calls the library and prints what it returns.

Every training option is a field of ``TrainConfig``; its flag, type and default come from
the dataclass, so ``--help`` always shows the real defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_cnn import __version__

if TYPE_CHECKING:  # the sub-commands import what they run, so that --help stays fast
    import numpy as np

    from mnist_cnn.predict import NumberReading, Prediction, Predictor
    from mnist_cnn.train import TrainConfig

# Exit statuses: 0 success, 1 the job failed (bad file, failed check), 2 bad usage
# (argparse's own), 130 interrupted by Ctrl-C (the shell's convention).
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed pipeline member

# One line per sub-command, for ``mnist-cnn --help``.
COMMAND_HELP = {
    "train": "train a model on MNIST",
    "evaluate": "evaluate a checkpoint on the MNIST test set",
    "download": "download MNIST from the public mirrors (the repository already bundles it)",
    "serve": "serve the web app and its JSON API (production server)",
    "predict": "classify images of digits (photos, scans, drawings)",
    "export": "export a model to ONNX (checked against PyTorch)",
    "gradio": "serve the Gradio interface: draw or upload a digit",
    "promote": "make a training run's model the one used here (./models/)",
    "ensemble": "combine trained models into one ensemble checkpoint (averaged probabilities)",
    "explain": "show how the network reads an image: preprocessing, feature maps, saliency",
}

TRAIN_HELP = {
    "architecture": "network: MNISTCNN (the seed CNN), FastCNN, SprintCNN or BestCNN",
    "epochs": "passes over the training set",
    "batch_size": "images per optimisation step",
    "lr": "learning rate (the peak rate for the onecycle schedule)",
    "schedule": "learning-rate schedule: onecycle or constant",
    "weight_decay": "Adam weight decay",
    "augment": "random small rotations, scalings and shifts of training images",
    "translate": "largest augmentation shift, as a fraction of the image size",
    "label_smoothing": "cross-entropy label smoothing",
    "strokes": "augmentation also varies stroke weight and edge sharpness",
    "channels_last": "channels-last memory format (faster convolutions on CPU)",
    "precision": "fp32; bf16: the training forward pass in bfloat16 autocast (AVX512-BF16 and "
    "AMX on recent Xeon CPUs, tensor cores on GPUs); auto: bf16 where the device has it",
    "val_size": "validation images held out (stratified) from the training set",
    "train_subset": "train on only this many images (0: all)",
    "outlier_weight": "Outlier Exposure: weight of the 'none of the ten' loss on drawn "
    "non-digits (0: off)",
    "seed": "random seed: initialisation, split, shuffling, augmentation, dropout",
    "split_seed": "seed of the validation split (-1: the run's seed)",
    "dropout": "dropout rate of the networks that have dropout (MNISTCNN, BestCNN)",
    "compile": "torch.compile the network (slower for these small networks on CPU: README)",
    "threads": "torch CPU threads (0: one per core)",
    "device": "auto (cuda, then mps, then cpu), cpu, cuda or mps",
    "data_dir": "directory with the four MNIST IDX files, .gz or not (empty: ./data/mnist, else "
    "the repository's bundled copy, else the cache that `mnist-cnn download` fills)",
    "name": "run name: the run writes to runs/NAME/ (default: the preset's name)",
    "model_path": "write the weights here instead of runs/NAME/ (metadata beside them as .json); "
    "models/mnist_cnn_model.pth replaces the model the commands here use",
    "report_dir": "where the curves and the evaluation report go (empty: beside the model)",
}


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # how argparse names the type in its messages
    return parse


def _option_type(option: dataclasses.Field) -> Callable[[str], Any]:
    """An argparse type for a numeric ``TrainConfig`` field: the text as the field's type
    (int or float), checked against the field's own bounds by ``options.option_problem``,
    the check the library makes too. A value out of range is a usage error (exit 2), never a
    traceback or a run that diverges."""
    from mnist_cnn.options import option_problem

    integer = str(option.type) == "int"

    def parse(text: str) -> int | float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            expected = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        problem = option_problem(option, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "integer" if integer else "number"  # how argparse names the type
    return parse


def _train_option_type(name: str) -> Callable[[str], Any]:
    """``_option_type`` of the ``TrainConfig`` field ``name``: other commands' options that
    mean the same (``--threads``) take the same values."""
    from mnist_cnn.train import TrainConfig

    return _option_type(next(f for f in dataclasses.fields(TrainConfig) if f.name == name))


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    from mnist_cnn.train import PRESETS, TrainConfig

    p = sub.add_parser(
        "train",
        help=COMMAND_HELP["train"],
        description="Train on the bundled MNIST. Options not given take the preset's value; "
        "the defaults shown are those of the default preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="a recipe: default, best (most accurate single network, ~15 min on 2 cores), "
        "seed (the seed's baseline), fast (>=99%% in <10 s on 2 cores)",
    )
    p.add_argument(
        "--members",
        type=_at_least(1),
        default=1,
        help="train this many networks (seeds SEED, SEED+1, ...) and write their ensemble "
        "(averaged probabilities); members train side by side when there are cores for it",
    )
    p.add_argument(
        "--jobs",
        type=_at_least(0),
        default=0,
        help="members that train at once, in separate processes (0: one per CPU core, "
        "one at a time on a GPU)",
    )
    p.add_argument(
        "--nproc",
        type=_at_least(1),
        default=1,
        help="train one model in this many data-parallel processes on this machine (torchrun "
        "--standalone --nproc-per-node=N; gloo on CPU, nccl on CUDA). For several machines "
        "run torchrun yourself (README)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its last epoch checkpoint",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar per epoch (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--promote",
        action="store_true",
        help="when the run succeeds, make its model the one used here (mnist-cnn promote)",
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        # SUPPRESS keeps flags the user did not give out of the namespace, so the preset's
        # value applies; the default shown in --help is the dataclass's.
        if f.type in ("bool", bool):
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{TRAIN_HELP[f.name]} (default: {f.default})",
            )
        else:
            numeric = str(f.type) in ("int", "float")
            p.add_argument(
                flag,
                type=_option_type(f) if numeric else str,
                choices=f.metadata.get("choices") or None,
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=f"{TRAIN_HELP[f.name]} (default: {f.default})",
            )
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from mnist_cnn import distributed
    from mnist_cnn.data import DatasetError
    from mnist_cnn.train import (
        TrainConfig,
        TrainingError,
        config_for,
        configure_process,
        resolve_device,
        train,
    )

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    try:
        config = config_for(args.preset, **overrides)
    except (ValueError, TypeError) as exc:
        return _fail(str(exc))
    if args.nproc > 1 and args.members > 1:
        return _fail("--nproc and --members cannot be combined: members train side by side")
    if args.nproc > 1 and not distributed.launched():
        try:
            distributed.launch(
                args.nproc, ["-m", "mnist_cnn", *distributed.without_option(args.argv, "--nproc")]
            )
        except distributed.DistributedError as exc:
            return _fail(str(exc))
        return 0
    if args.members > 1:
        return _train_ensemble(args, config)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        rank = distributed.join(resolve_device(config.device).type)
    except (ValueError, RuntimeError, distributed.DistributedError) as exc:
        return _fail(str(exc))
    # Several processes on one machine share its cores (torchrun's default is one thread).
    configure_process(config.threads or (distributed.threads_per_process() if rank.parallel else 0))
    if rank.main:
        processes = f" in {rank.world_size} processes" if rank.parallel else ""
        print(
            f"training {config.architecture} ({args.preset} preset) for {config.epochs} "
            f"epochs{processes}"
        )
    try:
        # Flushed per line: a log piped to `tee` or a file shows each epoch as it ends.
        result = train(
            config, resume=args.resume, progress=progress, log=lambda line: print(line, flush=True)
        )
    except (DatasetError, TrainingError, ValueError) as exc:
        prefix = f"process {rank.rank}: " if rank.parallel else ""
        return _fail(prefix + str(exc))
    finally:
        distributed.leave()
    if result.interrupted:
        return EXIT_INTERRUPTED
    if not rank.main:
        return 0  # rank 0 reports and writes
    print(
        f"test accuracy {100 * (result.test_accuracy or 0):.2f}% (loss {result.test_loss:.4f}) "
        f"after {result.seconds:.0f}s of training"
    )
    return _after_training(args, config, dict(result.outputs))


def _train_ensemble(args: argparse.Namespace, config: TrainConfig) -> int:
    from mnist_cnn.checkpoint import CheckpointError
    from mnist_cnn.data import DatasetError
    from mnist_cnn.ensemble import train_ensemble
    from mnist_cnn.train import TrainingError, configure_process

    if args.resume:
        return _fail("--resume continues one run; resume an ensemble's members one by one")
    configure_process(config.threads)
    print(
        f"training an ensemble of {args.members} {config.architecture} ({args.preset} preset), "
        f"seeds {config.seed} to {config.seed + args.members - 1}"
    )
    try:
        result = train_ensemble(
            config, args.members, jobs=args.jobs, log=lambda line: print(line, flush=True)
        )
    except (DatasetError, TrainingError, CheckpointError, ValueError) as exc:
        return _fail(str(exc))
    print(
        f"ensemble of {args.members}: validation {100 * (result.val_accuracy or 0):.2f}%, test "
        f"{100 * (result.test_accuracy or 0):.2f}% (loss {result.test_loss:.4f}) after "
        f"{result.seconds:.0f}s"
    )
    return _after_training(args, config, dict(result.outputs))


def _after_training(args: argparse.Namespace, config: TrainConfig, outputs: dict[str, Path]) -> int:
    """The evaluation report beside a finished run's model, and its promotion if asked."""
    from mnist_cnn.checkpoint import CheckpointError, promote
    from mnist_cnn.data import DatasetError

    try:
        # The run's evaluation report (per class, confusion matrix, mistakes) beside its model.
        outputs.update(_evaluation_report(outputs["model"], config.data_dir, config.reports)[1])
        if args.promote:
            outputs["promoted model"] = promote(outputs["model"])
    except (CheckpointError, DatasetError, OSError) as exc:
        # OSError: the report could not be written (atomic.WriteError names the file); the
        # run's model is complete and finite, and stays.
        return _fail(str(exc))
    for what, path in outputs.items():
        print(f"wrote {what}: {path}")
    if not args.promote:
        run = outputs["model"].parent
        print(
            f"serve it with `mnist-cnn serve --model {run}`; make it the model used here with "
            f"`mnist-cnn promote {run}`"
        )
    return 0


def _evaluation_report(
    model: Path, data_dir: str | None, report_dir: str | Path, tta: bool = False
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate ``model`` (with test-time augmentation when ``tta``) on the test set and
    write the report: (report, {what: path}). Raises ``CheckpointError`` and
    ``DatasetError``."""
    from mnist_cnn import data
    from mnist_cnn.checkpoint import load_model
    from mnist_cnn.evaluate import build_report, evaluate, write_report

    loaded = load_model(model, tta=tta)
    test = data.load_split("test", data_dir or None)
    result = evaluate(loaded.model, test, loaded.mean, loaded.std)
    report = build_report(result, loaded.path, data.dataset_sha256())
    report["architecture"] = loaded.architecture
    report["description"] = loaded.info.description  # "ensemble of 5 BestCNN with shift TTA"
    report["tta"] = loaded.info.tta
    return report, write_report(report, test.images, result, report_dir)


def _add_promote_parser(sub: argparse._SubParsersAction) -> None:
    from mnist_cnn.paths import LOCAL_MODEL

    p = sub.add_parser(
        "promote",
        help=COMMAND_HELP["promote"],
        description="Copy a training run's weights and metadata to ./models/, where predict, "
        "evaluate, serve and gradio look first. Training alone never replaces that model. "
        "The run's model must load, and its JSON must describe its weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run directory (runs/NAME) or a weights file")
    p.add_argument("--to", default=str(LOCAL_MODEL), help="where the weights go")
    p.set_defaults(handler=_promote)


def _promote(args: argparse.Namespace) -> int:
    from mnist_cnn.checkpoint import CheckpointError, promote

    try:
        promoted = promote(Path(args.run), Path(args.to))
    except CheckpointError as exc:
        return _fail(str(exc))
    print(f"promoted {args.run} to {promoted} (and its metadata beside it)")
    return 0


def _add_ensemble_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help=COMMAND_HELP["ensemble"],
        description="Write the ensemble of models already trained (run directories or weights "
        "files of one architecture) as one checkpoint, scored on the test set and, when the "
        "members share a validation split (--split-seed), on it. `train --members N` trains "
        "the members and does this too.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("members", metavar="MODEL", nargs="+", help="a member: runs/NAME or a .pth")
    p.add_argument("--name", default="ensemble", help="the ensemble's run: runs/NAME/")
    p.add_argument("--model-path", default="", help="write the weights here instead")
    p.set_defaults(handler=_ensemble)


def _ensemble(args: argparse.Namespace) -> int:
    from mnist_cnn import paths
    from mnist_cnn.checkpoint import CheckpointError
    from mnist_cnn.data import DatasetError
    from mnist_cnn.ensemble import assemble
    from mnist_cnn.train import MODEL_FILE, TrainingError

    try:
        destination = (
            Path(args.model_path) if args.model_path else paths.run_dir(args.name) / MODEL_FILE
        )
        destination.parent.mkdir(parents=True, exist_ok=True)
        result = assemble([Path(m) for m in args.members], destination)
        _, written = _evaluation_report(destination, None, destination.parent)
    except (CheckpointError, DatasetError, TrainingError, ValueError, OSError) as exc:
        return _fail(str(exc))
    val = "" if result.val_accuracy is None else f"validation {100 * result.val_accuracy:.2f}%, "
    print(
        f"ensemble of {len(args.members)}: {val}test {100 * (result.test_accuracy or 0):.2f}% "
        f"(loss {result.test_loss:.4f})"
    )
    for what, path in {**result.outputs, **written}.items():
        print(f"wrote {what}: {path}")
    return 0


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help=COMMAND_HELP["evaluate"],
        description="Test accuracy and loss, per-class precision and recall, a confusion matrix, "
        "the worst mistakes and a JSON report. Works on any checkpoint, including a plain "
        "seed-format state_dict.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--data-dir", default=None, help=TRAIN_HELP["data_dir"])
    p.add_argument("--report-dir", default="reports", help="where to write the report and figures")
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    p.add_argument(
        "--threads",
        type=_train_option_type("threads"),
        default=0,
        help="torch CPU threads (0: one per core)",
    )
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from mnist_cnn.checkpoint import CheckpointError
    from mnist_cnn.data import DatasetError

    _use_threads(args.threads)
    try:
        # A model whose weights or outputs are NaN does not load (CheckpointError): its
        # report would otherwise say 9.8% (every answer "0") without a word of why.
        model = _model_path(args.model)
        report, paths = _evaluation_report(model, args.data_dir, args.report_dir, args.tta)
    except (CheckpointError, DatasetError, OSError) as exc:
        # OSError: atomic.WriteError, "cannot write <file>: <reason>"
        return _fail(str(exc))
    print(f"model: {model} ({report['description']})")
    print(
        f"test accuracy {100 * report['accuracy']:.2f}%  loss {report['loss']:.4f}  "
        f"errors {report['errors']}/{report['examples']}  "
        f"({report['seconds']:.2f}s, {report['images_per_second']} img/s)"
    )
    print(f"expected calibration error {100 * report['expected_calibration_error']:.2f}%")
    print("class  precision  recall  support")
    for row in report["per_class"]:
        print(
            f"{row['class']:>5}  {100 * row['precision']:>8.2f}%  {100 * row['recall']:>5.2f}%  "
            f"{row['support']:>7}"
        )
    for what, path in paths.items():
        print(f"wrote {what}: {path}")
    return 0


def _add_download_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help=COMMAND_HELP["download"],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dir",
        default=None,
        help="where to put the four .gz files (default: the user cache, "
        "$XDG_CACHE_HOME/mnist-cnn/mnist, where every command looks)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per connection attempt")
    p.set_defaults(handler=_download)


def _download(args: argparse.Namespace) -> int:
    from mnist_cnn import paths
    from mnist_cnn.data import DatasetError, download

    target = Path(args.dir) if args.dir else paths.user_data_dir()
    try:
        download(target, timeout=args.timeout, progress=sys.stderr.isatty())
    except DatasetError as exc:
        return _fail(str(exc))
    print(f"MNIST is complete and verified in {target}")
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from mnist_cnn.web.server import ServeConfig

    d = ServeConfig()
    p = sub.add_parser(
        "serve",
        help=COMMAND_HELP["serve"],
        description="Serve the web page and the JSON API with waitress: the model is loaded "
        "once, then shared by forked worker processes (one per core by default), each with "
        "one request thread and one torch thread.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=d.host, help="address to listen on (0.0.0.0: every interface)")
    fields = {f.name: f for f in dataclasses.fields(ServeConfig)}
    # Each numeric option is a ServeConfig field: its type and bounds come from there.
    numeric = (
        ("--port", "port", "TCP port"),
        ("--workers", "workers", "worker processes (0: one per core)"),
        ("--threads", "threads", "request threads per worker (2 suits slow requests: large "
         "photos)"),
        ("--max-connections", "connection_limit", "open connections per worker; more wait in "
         "the kernel's queue"),
        ("--header-timeout", "header_timeout_s", "seconds a client has to send a request's "
         "headers (then 408)"),
        ("--grace", "grace_s", "seconds SIGTERM or Ctrl-C waits for the requests in flight "
         "before stopping"),
    )  # fmt: skip
    for flag, name, text in numeric:
        p.add_argument(flag, type=_option_type(fields[name]), default=getattr(d, name), help=text)
    p.add_argument("--model", default=argparse.SUPPRESS, help=MODEL_HELP)
    p.add_argument(
        "--backend",
        choices=fields["backend"].metadata["choices"],
        default=d.backend,
        help="inference backend (onnx needs the onnx extra)",
    )
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=d.max_request_bytes / 1024 / 1024,
        help="largest request body accepted, in MB",
    )
    p.add_argument("--tta", action="store_true", default=d.tta, help=TTA_HELP)
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import logging

    from mnist_cnn.checkpoint import CheckpointError
    from mnist_cnn.web.server import ServeConfig, ServerError, serve

    # One line per prediction and per start/stop, with the worker's pid.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # waitress warns on every request that waits for a free thread: normal at full load.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    if args.max_request_mb <= 0:
        return _fail("--max-request-mb must be positive")
    try:
        config = ServeConfig(
            host=args.host,
            port=args.port,
            workers=args.workers,
            threads=args.threads,
            model=_model_path(getattr(args, "model", None)),
            backend=args.backend,
            tta=args.tta,
            max_request_bytes=int(args.max_request_mb * 1024 * 1024),
            connection_limit=args.max_connections,
            header_timeout_s=args.header_timeout,
            grace_s=args.grace,
        )
        serve(config)
    except (CheckpointError, ServerError, ValueError) as exc:
        return _fail(str(exc))
    except ModuleNotFoundError as exc:
        from mnist_cnn.extras import install_hint

        return _fail(install_hint("web", exc.name))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a foreground server is stopped
    print("server stopped", file=sys.stderr)
    return 0


# Files a directory walk picks up; files named on the command line are always tried (they
# are decoded by content, whatever their name).
IMAGE_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".mpo",
        ".gif",
        ".bmp",
        ".dib",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)


def _add_image_options(p: argparse.ArgumentParser) -> None:
    """--max-pixels and --threads, for the commands that read images (predict, explain)."""
    from mnist_cnn.preprocess import MAX_PIXELS

    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help="refuse images with more pixels (checked before decoding)",
    )
    p.add_argument(
        "--threads",
        type=_train_option_type("threads"),
        default=0,
        help="CPU threads (0: one per core)",
    )


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help=COMMAND_HELP["predict"],
        description="Print the digit, confidence and top 3 for each image. Directories are "
        "searched recursively for image files. A file that cannot be read is reported and "
        "the others are still classified; the exit status is 1 when any file failed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR", help="image files or directories")
    p.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help=MODEL_HELP + "; or a .onnx file with --backend onnx",
    )
    p.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="inference backend (onnx needs the onnx extra)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument(
        "--number",
        action="store_true",
        help="read each image as a whole number (one line of up to 12 digits), digit by "
        "digit, with a confidence for each",
    )
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    p.add_argument(
        "--save-inputs",
        metavar="DIR",
        default=None,
        help="also write the 28x28 image the model sees for each file as a PNG",
    )
    p.add_argument("--batch-size", type=_at_least(1), default=256, help="images per forward pass")
    _add_image_options(p)
    p.set_defaults(handler=_predict)


@dataclasses.dataclass(frozen=True)
class _Found:
    """A path that ``predict`` reports once: a file to classify, or why it cannot be."""

    path: Path | str  # as found under a directory given, or as given ("" is not ".")
    rel: Path  # relative to the argument it came from (where --save-inputs writes it)
    error: tuple[str, str] | None = None  # (code, message) when it cannot be classified


# File types that are never opened: reading a FIFO waits for a writer, a device never ends.
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _os_error(path: str | Path, exc: OSError, what: str = "file") -> tuple[str, str]:
    """(code, message) of a path that could not be read: a loop of links, a link to nothing,
    or the system's reason (no such file, permission denied, name too long...)."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ELOOP:
        return "symlink_loop", reason  # "Too many levels of symbolic links"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return "unreadable_file", f"{reason} (a broken symbolic link)"
    return f"unreadable_{what}", reason


def _not_regular(mode: int) -> tuple[str, str] | None:
    """(code, message) when ``mode`` is a special file, which is refused without opening."""
    for is_kind, kind in _SPECIAL_FILES:
        if is_kind(mode):
            return "not_a_file", f"not a regular file ({kind}): only files are read"
    return None if stat.S_ISREG(mode) else ("not_a_file", "not a regular file")


def _file_error(path: Path | str) -> tuple[str, str] | None:
    """Why ``path`` cannot be handed to the Predictor, or None for a regular file. Checked
    just before reading it: a FIFO or a device is refused without ever being opened."""
    try:
        return _not_regular(os.stat(path).st_mode)
    except OSError as exc:
        return _os_error(path, exc)


def _walk(root: Path, root_stat: os.stat_result) -> list[_Found]:
    """The image files under ``root`` (by name: ``IMAGE_SUFFIXES``; hidden names skipped),
    and every directory, link or file met on the way that could not be read.

    Links to directories are followed, but never back into a directory that the path already
    went through (a loop, reported once, where it closes). The walk is a loop over a stack,
    not a recursion, so no depth of folders exhausts Python's stack.
    """
    found: list[_Found] = []
    # (directory, its path relative to root, the (device, inode) of it and its ancestors)
    stack = [(root, Path(), frozenset({(root_stat.st_dev, root_stat.st_ino)}))]
    while stack:
        directory, rel, ancestors = stack.pop()
        try:
            with os.scandir(directory) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError as exc:
            found.append(_Found(directory, rel, _os_error(directory, exc, "directory")))
            continue
        for name in names:
            if name.startswith("."):
                continue
            path, sub = directory / name, rel / name
            try:
                info = os.stat(path)  # through links: a link counts as what it leads to
            except OSError as exc:
                # Whatever it was meant to be (a folder of images, perhaps), it is reported.
                found.append(_Found(path, sub, _os_error(path, exc)))
                continue
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) in ancestors:
                    loop = "a symbolic link back to a folder that contains it"
                    found.append(_Found(path, sub, ("symlink_loop", loop)))
                else:
                    inside = ancestors | {(info.st_dev, info.st_ino)}
                    stack.append((path, sub, inside))
            elif Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(_Found(path, sub, _not_regular(info.st_mode)))
    return sorted(found, key=lambda f: f.rel.parts)


def _image_files(paths: Sequence[str]) -> list[_Found]:
    """Every path to report, once each, in a stable order: the files named and the image
    files found under the directories named, with what made any of them unreadable."""
    found: list[_Found] = []
    for arg in paths:
        root = Path(arg)  # Path("") is ".": errors name, and os.stat checks, the argument itself
        if not arg or "\0" in arg:
            why = "the path contains a NUL character" if arg else "the path is empty"
            found.append(_Found(arg, Path(), ("invalid_path", why)))
            continue
        try:
            info = os.stat(arg)
        except OSError as exc:
            found.append(_Found(arg, Path(root.name), _os_error(arg, exc)))
            continue
        if stat.S_ISDIR(info.st_mode):
            found += _walk(root, info)
        else:
            # Files named on the command line are tried whatever their name (decoded by
            # content); special files are refused just before reading (``_file_error``).
            found.append(_Found(root, Path(root.name)))
    return found


def _shown(path: str | Path, terminal: bool = True) -> str:
    """A file name as text that any output can carry: bytes that are not valid in the file
    system's encoding become ``\\xNN`` (a str from the OS holds them as lone surrogates,
    which a strict UTF-8 stream refuses and JSON parsers reject). For a terminal, control
    characters are escaped too, so a name cannot break a line or send escape sequences."""
    text = os.fsencode(path).decode(sys.getfilesystemencoding(), "backslashreplace")
    if terminal:
        text = "".join(
            f"\\x{ord(c):02x}" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c for c in text
        )
    return text


def _say(text: str, stream: Any = None) -> None:
    """Print a line on ``stream`` (stdout), escaping what its encoding cannot carry (an
    ASCII-only stdout, a name in another alphabet) instead of failing."""
    stream = stream or sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding, "replace"), file=stream)


# A runner-up worth naming in a "not sure" line: at least this probability.
_RUNNER_UP_MIN = 0.05


def _prediction_line(path: Path, prediction: Prediction) -> str:
    """One line of ``mnist-cnn predict`` for a classified file.

    ``photo.jpg: 3  (97.1%)  top 3: 3 97.1%, 5 2.2%, 8 0.4%`` when the model is sure;
    ``photo.jpg: not sure (4 or 9: <reason>)  top 3: ...`` when it is not.
    """
    top3 = ", ".join(f"{d} {100 * q:.1f}%" for d, q in prediction.top3)
    name = _shown(path)
    if prediction.reason is None:
        return f"{name}: {prediction.digit}  ({100 * prediction.confidence:.1f}%)  top 3: {top3}"
    contenders = [str(prediction.digit)] + [
        str(d) for d, q in prediction.top3[1:2] if q >= _RUNNER_UP_MIN
    ]
    why = f"{' or '.join(contenders)}: {prediction.reason.message}"
    return f"{name}: not sure ({why})  top 3: {top3}"


def _number_line(path: Path, reading: NumberReading) -> str:
    """One line of ``mnist-cnn predict --number`` for a file read as a number.

    ``note.jpg: 2026  (97.1%)  digits: 2 99.9%, 0 99.5%, 2 98.8%, 6 98.9%`` when sure;
    ``note.jpg: not sure (2026?: <reason>)  digits: ...`` when not.
    """
    digits = ", ".join(
        f"{d.prediction.digit} {100 * d.prediction.confidence:.1f}%"
        + ("?" if d.prediction.reason is not None else "")
        for d in reading.digits
    )
    name = _shown(path)
    if reading.reason is None:
        return f"{name}: {reading.number}  ({100 * reading.confidence:.1f}%)  digits: {digits}"
    return f"{name}: not sure ({reading.number}?: {reading.reason.message})  digits: {digits}"


def _save_input(image: np.ndarray, target: Path, used: set[Path]) -> Path:
    """Write a 28x28 model input as a PNG at ``target`` (or at ``target``'s name + .png when
    another file took that name); returns where."""
    from PIL import Image

    from mnist_cnn import atomic

    if target in used:
        target = target.with_name(target.name + ".png")
    used.add(target)
    picture = Image.fromarray(image, mode="L")
    atomic.write_with(target, lambda f: picture.save(f, "PNG"))
    return target


def _predict_numbers(
    args: argparse.Namespace, predictor: Predictor, files: list[_Found]
) -> tuple[list[dict], int, int]:
    """``predict --number``: each file read as a whole number, one at a time (each has its
    own digits). Returns (records, failed, unsure), as the single-digit loop does."""
    from mnist_cnn.preprocess import ImageError

    out_dir = Path(args.save_inputs) if args.save_inputs else None
    used: set[Path] = set()
    records: list[dict] = []
    failed = unsure = 0
    for found in files:
        path = found.path
        record: dict[str, Any] = {"path": _shown(path, terminal=False)}
        error = found.error or _file_error(path)
        if error is None:
            try:
                reading = predictor.read_number(path)
            except ImageError as exc:
                error = exc.code, str(exc)
            except OSError as exc:
                error = _os_error(path, exc)
        if error is not None:
            failed += 1
            code, message = error
            _say(f"mnist-cnn: error: {_shown(path)}: {message}", sys.stderr)
            records.append({**record, "error": {"code": code, "message": message}})
            continue
        record.update(reading.to_dict())
        unsure += reading.reason is not None
        if out_dir is not None:
            # a/2026.jpg -> DIR/a/2026-1.png, DIR/a/2026-2.png, ...: one per digit.
            for k, (digit, d) in enumerate(zip(record["digits"], reading.digits, strict=True)):
                target = out_dir / found.rel.with_name(f"{found.rel.stem}-{k + 1}.png")
                where = _save_input(d.prediction.model_input, target, used)
                digit["model_input"] = _shown(where, terminal=False)
        records.append(record)
        if not args.json:
            _say(_number_line(path, reading))
    return records, failed, unsure


def _predict(args: argparse.Namespace) -> int:
    import json

    from PIL import Image

    from mnist_cnn import atomic
    from mnist_cnn.checkpoint import CheckpointError
    from mnist_cnn.predict import Predictor
    from mnist_cnn.preprocess import ImageError

    if args.batch_size < 1:
        return _fail("--batch-size must be at least 1")
    _use_threads(args.threads)
    try:
        predictor = Predictor.from_checkpoint(
            _model_path(getattr(args, "model", None)),
            backend=args.backend,
            threads=args.threads or None,
            max_pixels=args.max_pixels,
            tta=args.tta,
        )
    except CheckpointError as exc:
        return _fail(str(exc))
    info = predictor.info
    if info.description != info.architecture:
        # "using model runs/x/..." names the file; an ensemble or TTA is worth a word more.
        print(f"model: {info.description}", file=sys.stderr)
    files = _image_files(args.paths)
    if not files:
        return _fail(f"no image files found in {', '.join(map(_shown, args.paths))}")
    out_dir = Path(args.save_inputs) if args.save_inputs else None
    used: set[Path] = set()
    results: list[dict] = []
    failed = 0
    unsure = 0  # "not sure" is an answer, not a failure: it does not change the exit status
    if args.number:
        results, failed, unsure = _predict_numbers(args, predictor, files)

    for start in range(0, 0 if args.number else len(files), args.batch_size):
        # Records stay in the order of the files; errors are also reported on stderr.
        records: list[dict] = []
        batch, inputs = [], []
        for found in files[start : start + args.batch_size]:
            path = found.path
            # Special files are refused here, unopened: a FIFO would wait for a writer.
            error = found.error or _file_error(path)
            if error is None:
                try:
                    inputs.append(predictor.prepare(path))
                    batch.append((len(records), path, found.rel))
                    records.append({"path": _shown(path, terminal=False)})
                    continue
                except ImageError as exc:
                    error = exc.code, str(exc)
                except OSError as exc:
                    error = _os_error(path, exc)
            failed += 1
            code, message = error
            _say(f"mnist-cnn: error: {_shown(path)}: {message}", sys.stderr)
            records.append(
                {"path": _shown(path, terminal=False), "error": {"code": code, "message": message}}
            )
        for (slot, path, rel), prediction in zip(
            batch, predictor.predict_inputs(inputs), strict=True
        ):
            records[slot].update(prediction.to_dict())
            unsure += prediction.reason is not None
            if out_dir is not None:
                # a/1.jpg -> DIR/a/1.png, or DIR/a/1.jpg.png when a/1.png took that name.
                target = out_dir / rel.with_suffix(".png")
                if target in used:
                    target = out_dir / rel.with_name(rel.name + ".png")
                used.add(target)
                image = Image.fromarray(prediction.model_input, mode="L")
                atomic.write_with(target, lambda f, im=image: im.save(f, "PNG"))
                records[slot]["model_input"] = _shown(target, terminal=False)
            if not args.json:
                _say(_prediction_line(path, prediction))
        results += records
    if args.json:
        document = {
            "model": {
                "path": str(info.path),
                "architecture": info.architecture,
                "description": info.description,
                "members": info.members,
                "tta": info.tta,
                "backend": info.backend,
                "test_accuracy": info.test_accuracy,
            },
            "results": results,
            "predicted": len(results) - failed,
            "failed": failed,
            "unsure": unsure,
        }
        print(json.dumps(document, indent=2))
    else:
        summary = f"{len(results) - failed} predicted, {failed} failed"
        print(summary + (f", {unsure} not sure" if unsure else ""), file=sys.stderr)
    return EXIT_FAILED if failed else 0


def _add_explain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help=COMMAND_HELP["explain"],
        description="Follow one image through the preprocessing and the network and draw it "
        "all in one figure: the image, each preprocessing stage, the 28x28 input, the feature "
        "maps of the first two convolutions, an occlusion saliency map (which strokes the "
        "answer rests on) and the probabilities. --json prints the same data. With --figures, "
        "write the figures of the beginner's guide (docs/guide.md) instead.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("image", nargs="?", metavar="IMAGE", help="the image to explain")
    p.add_argument(
        "--out",
        metavar="FIG.png",
        default=None,
        help="where to write the figure (default: IMAGE's name + '-explained.png' here; "
        "none with --json unless given)",
    )
    p.add_argument("--json", action="store_true", help="print the explanation as JSON on stdout")
    p.add_argument("--model", default=argparse.SUPPRESS, help=MODEL_HELP)
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    p.add_argument(
        "--figures",
        metavar="DIR",
        default=None,
        help="instead of one image: write the guide's figures into DIR, from the model, its "
        "training history and the MNIST test set (make docs: docs/img)",
    )
    p.add_argument(
        "--photo",
        default=None,
        help="with --figures: the example photo (default: DIR/example-photo.jpg)",
    )
    p.add_argument("--data-dir", default=None, help=TRAIN_HELP["data_dir"])
    _add_image_options(p)
    p.set_defaults(handler=_explain, parser=p)


def _explain(args: argparse.Namespace) -> int:
    import json

    from mnist_cnn.checkpoint import CheckpointError
    from mnist_cnn.data import DatasetError
    from mnist_cnn.preprocess import ImageError

    if (args.image is None) == (args.figures is None):
        args.parser.error("give one IMAGE to explain, or --figures DIR (not both)")
    _use_threads(args.threads)
    try:
        model = _model_path(getattr(args, "model", None))
        if args.figures is not None:
            from mnist_cnn.figures import write_guide_figures

            for path in write_guide_figures(args.figures, model, args.data_dir, args.photo):
                print(f"wrote {path}")
            return 0
        from mnist_cnn import explain, plots
        from mnist_cnn.predict import Predictor

        predictor = Predictor.from_checkpoint(model, max_pixels=args.max_pixels, tta=args.tta)
        if (error := _file_error(args.image)) is not None:
            return _fail(f"{_shown(args.image)}: {error[1]}")
        explanation = explain.explain(predictor, args.image)
        out = args.out
        if out is None and not args.json:
            out = f"{Path(args.image).stem}-explained.png"
        if out is not None:
            plots.save_figure(explain.figure(explanation), out)
    except (CheckpointError, DatasetError, FileNotFoundError) as exc:
        return _fail(str(exc))
    except ImageError as exc:
        return _fail(f"{_shown(args.image)}: {exc}")
    except OSError as exc:  # unreadable image, unwritable figure (atomic.WriteError)
        return _fail(str(exc))
    if args.json:
        print(json.dumps(explanation.to_dict()))
    else:
        _say(_prediction_line(Path(args.image), explanation.prediction))
    if out is not None:
        print(f"wrote {out}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    from mnist_cnn.train import TrainConfig  # export reads where training writes

    p = sub.add_parser(
        "export",
        help=COMMAND_HELP["export"],
        description="Write the model as ONNX with a dynamic batch axis, after checking on MNIST "
        "test digits that ONNX Runtime gives the same argmax as PyTorch and logits within "
        "1e-4. Needs the onnx extra: pip install 'mnist-cnn[onnx]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format")
    p.add_argument("--tta", action="store_true", help=TTA_HELP + ", in the exported graph")
    p.add_argument(
        "--output",
        default=None,
        help="where to write it (default: beside the weights, with .onnx; for the shipped "
        f"model, ./{TrainConfig.model_path[:-4]}.onnx)",
    )
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from mnist_cnn import paths
    from mnist_cnn.checkpoint import CheckpointError
    from mnist_cnn.export import ExportError, export_onnx

    try:
        model = _model_path(args.model)
        # Never beside the shipped weights: they live inside the installed package.
        beside = paths.LOCAL_MODEL if model == paths.SHIPPED_MODEL else model
        output = Path(args.output) if args.output else beside.with_suffix(".onnx")
        result = export_onnx(model, output, tta=args.tta)
    except (CheckpointError, ExportError) as exc:
        return _fail(str(exc))
    print(
        f"wrote {result.path} ({result.description}, {result.bytes / 1e6:.1f} MB, dynamic "
        f"batch axis)"
    )
    print(
        f"parity with PyTorch on {result.examples} MNIST test digits, batch sizes "
        f"{', '.join(map(str, result.batch_sizes))}: max |delta logit| "
        f"{result.max_abs_diff:.1e}, same argmax: {'yes' if result.argmax_agree else 'no'}"
    )
    return 0


def _add_gradio_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gradio",
        help=COMMAND_HELP["gradio"],
        description="A sketchpad and an upload box; shows the top probabilities and the 28x28 "
        "image the model sees, through the same Predictor as the web app. Needs the gradio "
        "extra: pip install '.[gradio]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=argparse.SUPPRESS, help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=7860, help="TCP port")
    p.add_argument(
        "--share",
        action="store_true",
        help="also open a public *.gradio.live link through Gradio's tunnel (needs internet)",
    )
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    p.set_defaults(handler=_gradio)


def _gradio(args: argparse.Namespace) -> int:
    from mnist_cnn.checkpoint import CheckpointError
    from mnist_cnn.gradio_app import build_interface, import_gradio, launch
    from mnist_cnn.predict import Predictor

    try:
        import_gradio()  # before loading anything: the likeliest failure, with its fix
    except ImportError as exc:
        return _fail(str(exc))
    try:
        predictor = Predictor.from_checkpoint(
            _model_path(getattr(args, "model", None)), tta=args.tta
        )
    except (ImportError, CheckpointError) as exc:
        return _fail(str(exc))
    info = predictor.info
    print(f"model: {info.path} ({info.description})")
    try:
        launch(build_interface(predictor), host=args.host, port=args.port, share=args.share)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        return _fail(str(exc))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a foreground server is stopped
    return 0


TTA_HELP = (
    "test-time augmentation: average each answer over the image and its four one-pixel "
    "shifts (five times the compute)"
)

# Every command that reads a model says the same about where it comes from (mnist_cnn.paths).
MODEL_HELP = (
    "weights file (.pth), or a training run's directory (default: "
    "./models/mnist_cnn_model.pth when it exists, else the model shipped with the package)"
)


def _model_path(given: str | None) -> Path:
    """The model to use (``mnist_cnn.paths``' rule), after saying which on stderr. Raises
    ``CheckpointError`` when there is none, which every command reports already."""
    from mnist_cnn.checkpoint import find_model

    found = find_model(given)
    print(f"using model {found.describe()}", file=sys.stderr)
    return found.path


def _use_threads(threads: int) -> None:
    """The command's CPU threads (0: the libraries' default, one per core). Thread pools are
    process-wide: the command that owns the process sets them, never the library."""
    if threads:
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)  # the image front end's pool


def _fail(message: str) -> int:
    print(f"mnist-cnn: error: {message}", file=sys.stderr)
    return EXIT_FAILED


# Each capability registers its sub-command here, in the order --help lists them.
PARSERS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "train": _add_train_parser,
    "promote": _add_promote_parser,
    "ensemble": _add_ensemble_parser,
    "evaluate": _add_evaluate_parser,
    "download": _add_download_parser,
    "predict": _add_predict_parser,
    "explain": _add_explain_parser,
    "export": _add_export_parser,
    "serve": _add_serve_parser,
    "gradio": _add_gradio_parser,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mnist-cnn`` argument parser: every sub-command with its options, or with
    ``command``, only that one (the others are listed by name; "" lists them all so).
    Building the train and serve options imports torch and Flask, seconds that
    ``mnist-cnn --help`` and ``--version`` need not wait."""
    parser = argparse.ArgumentParser(
        prog="mnist-cnn",
        description="Train, evaluate and use a CNN for handwritten digits (MNIST).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, add in PARSERS.items():
        if command is None or name == command:
            add(sub)
        else:
            sub.add_parser(name, help=COMMAND_HELP[name])
    return parser


def _command(argv: Sequence[str]) -> str:
    """The sub-command named on the command line ("" when none): the first word that is
    not an option (the only global options, --help and --version, take no value)."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    # An unknown command, or none (--help, --version): argparse answers from the names alone.
    args = build_parser(command if command in PARSERS else "").parse_args(argv)
    args.argv = argv  # `train --nproc N` hands its own command line to torchrun
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`mnist-cnn evaluate | head -1`): stop quietly, as a shell
        # pipeline's tools do. Python would otherwise complain again when it flushes stdout
        # at exit, so stdout goes to /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
