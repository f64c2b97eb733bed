"""Training: the loop, its configuration, resumable checkpoints and the files it leaves.

One ``TrainConfig`` (a frozen dataclass, mapped one-to-one onto ``mnist-cnn train``'s
options) describes a run completely; with the same config a CPU run is bit-for-bit
reproducible, including one that was interrupted and resumed.

At the end of every epoch the full training state (model, optimizer, scheduler, epoch,
history and every random generator) is written atomically to ``<model>.ckpt``. Ctrl-C
stops the run cleanly; ``--resume`` restarts the interrupted epoch from that state and
ends with exactly the weights an uninterrupted run would have produced.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn import atomic, data, paths
from mnist_cnn.checkpoint import save_model
from mnist_cnn.model import (
    ARCHITECTURES,
    INPUT_SIZE,
    MNIST_MEAN,
    MNIST_STD,
    build_model,
    count_parameters,
    logits_of,
)

SCHEDULES = ("onecycle", "constant")
MODEL_FILE = paths.MODEL_FILENAME  # the weights' name inside a run directory
DEVICES = ("auto", "cpu", "cuda", "mps")


def _option(default: Any, *, choices: tuple[str, ...] = (), minimum: int | None = None) -> Any:
    """A field whose valid values the command line checks as it parses (argparse's choices,
    or a lower bound for integers): a bad option is a usage error, not a traceback."""
    return field(default=default, metadata={"choices": choices, "minimum": minimum})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults are the ``default`` preset."""

    architecture: str = _option("MNISTCNN", choices=tuple(ARCHITECTURES))
    epochs: int = _option(12, minimum=1)
    batch_size: int = _option(128, minimum=1)
    lr: float = 3e-3
    schedule: str = _option("onecycle", choices=SCHEDULES)
    weight_decay: float = 0.0
    augment: bool = True
    translate: float = data.MAX_TRANSLATE  # largest augmentation shift, fraction of the image
    strokes: bool = True  # also vary stroke weight and edge sharpness (data.random_strokes)
    label_smoothing: float = 0.0
    # Outlier Exposure: weight of the loss that teaches "none of the ten" on drawn
    # non-digits (mnist_cnn.outliers); 0 turns it off.
    outlier_weight: float = 0.25
    channels_last: bool = True
    val_size: int = _option(5000, minimum=1)
    # train on this many images only (0: all); for quick runs and tests
    train_subset: int = _option(0, minimum=0)
    seed: int = 0
    # torch intra-op threads (0: one per core); process-wide, so the command sets them
    # (configure_process), not train()
    threads: int = _option(0, minimum=0)
    device: str = _option("auto", choices=DEVICES)  # auto picks cuda, then mps, then cpu
    data_dir: str = ""  # empty: paths.find_data (./data/mnist, the clone's copy, the cache)
    # A run writes into its own directory, runs/NAME/ (the model, its JSON, the epoch
    # checkpoint, the curves and the evaluation report), so that an experiment never replaces
    # the model the other commands use; ``mnist-cnn promote`` (or ``train --promote``) does
    # that deliberately. The presets name their runs after themselves.
    name: str = "default"
    model_path: str = ""  # empty: runs/NAME/mnist_cnn_model.pth; given: the weights go there
    report_dir: str = ""  # empty: beside the model

    @property
    def model_file(self) -> Path:
        """Where the weights go (their JSON beside them)."""
        return Path(self.model_path) if self.model_path else paths.run_dir(self.name) / MODEL_FILE

    @property
    def reports(self) -> Path:
        """Where the curves (and the command's evaluation report) go."""
        return Path(self.report_dir) if self.report_dir else self.model_file.parent

    @property
    def checkpoint_path(self) -> Path:
        """Where the full training state goes at each epoch's end."""
        return self.model_file.with_suffix(".ckpt")


# Presets fix the settings that matter for a recipe; explicit options override them.
PRESETS: dict[str, dict[str, Any]] = {
    # The improved recipe (see the README's evidence table).
    "default": {},
    # The seed's recipe, as the baseline: Adam at a constant 1e-3, plain cross-entropy.
    "seed": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 1e-3,
        "schedule": "constant",
        "augment": False,
        "strokes": False,
        "channels_last": False,
        "outlier_weight": 0.0,
    },
    # >= 99% in well under 30 s on 2 CPU cores: a smaller batch-norm network, high peak LR.
    "fast": {
        "architecture": "FastCNN",
        "epochs": 3,
        "batch_size": 128,
        "lr": 1e-2,
        "augment": False,
        "strokes": False,
        "outlier_weight": 0.0,
    },
}

# Settings that may change between an interrupted run and its resumption without changing
# the result: where things are and how many threads compute them.
RESUMABLE_CHANGES = {"threads", "data_dir", "report_dir", "device", "name"}


def config_for(preset: str = "default", **overrides: Any) -> TrainConfig:
    """The config of a preset with ``overrides`` applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return dataclasses.replace(TrainConfig(), **{"name": preset, **PRESETS[preset], **overrides})


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed blocks for reuse; True when it agreed.

    Every training step allocates and frees the same 1-13 MB activation buffers. By default
    glibc returns such blocks to the kernel (munmap, heap trimming) and takes them back a
    page fault per 4 KB later: 1.5 million faults per epoch, seconds of system time and a
    run time that varies with the heap's history. Holding blocks up to 32 MB in the heap,
    and trimming only above 1 GB, keeps them for the next step. It changes no result, only
    speed; the memory kept is at most the training peak. Elsewhere (macOS, Windows, musl)
    this does nothing.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def configure_process(threads: int = 0) -> None:
    """The process-wide settings of a training command (``mnist-cnn train``, the benchmarks,
    the notebooks), which the library's ``train`` leaves alone: torch's intra-op threads
    (``TrainConfig.threads``; 0 keeps torch's default, one per core) and an allocator that
    keeps freed memory (``keep_freed_memory``)."""
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; anything else as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    return device


@dataclass
class TrainResult:
    """What a run produced. ``interrupted`` runs have no final metrics and wrote no model."""

    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    test_accuracy: float | None = None
    test_loss: float | None = None
    seconds: float = 0.0
    outputs: dict[str, Path] = field(default_factory=dict)
    model: nn.Module | None = None


class TrainingError(Exception):
    """A run cannot start or resume as asked."""


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"data": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_resume_state(config: TrainConfig) -> dict[str, Any]:
    path = config.checkpoint_path
    if not path.is_file():
        raise TrainingError(f"{path}: no training checkpoint to resume from; run without --resume.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"{path}: cannot read the training checkpoint ({exc}).") from exc
    saved = state.get("config", {})
    differ = {
        k: (saved.get(k), v)
        for k, v in dataclasses.asdict(config).items()
        if k not in RESUMABLE_CHANGES and saved.get(k) != v
    }
    if differ:
        listed = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise TrainingError(
            f"{path}: cannot resume with different settings ({listed}). Resume with the "
            f"original options, or start a new run without --resume."
        )
    return state


# Outlier Exposure: a bank of drawn non-digits, made once per run from the seed, and how
# many of them join each batch of digits. A quarter batch keeps the extra cost near 25%;
# the bank is large enough that each outlier is seen a few times per run, augmented anew.
OUTLIER_BANK = 12_000
OUTLIER_SHARE = 4  # one outlier per this many digits in a batch


@dataclass(frozen=True)
class Score:
    """Loss and accuracy on a held-out split."""

    loss: float
    accuracy: float


def _score(model: nn.Module, split: data.Split) -> Score:
    # Validation after each epoch and the test at the end need only these two numbers; the
    # full report (per class, confusion, mistakes) is ``mnist_cnn.evaluate``'s, run after.
    logits = logits_of(model, data.normalise(split.images))
    loss = F.cross_entropy(logits, split.labels).item()
    return Score(loss, (logits.argmax(1) == split.labels).float().mean().item())


def uniform_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the uniform distribution over the classes, minus its minimum
    (log C), so that it is 0 when the network answers "all equally likely"."""
    return -F.log_softmax(logits, dim=1).mean(dim=1).mean() - math.log(logits.shape[1])


def _split_data(config: TrainConfig) -> tuple[data.Split, data.Split]:
    full = data.load_split("train", config.data_dir or None)
    train_idx, val_idx = data.stratified_split(full.labels, config.val_size, config.seed)
    if config.train_subset:
        gen = torch.Generator().manual_seed(config.seed)
        train_idx = train_idx[torch.randperm(len(train_idx), generator=gen)[: config.train_subset]]
    return full.subset(train_idx), full.subset(val_idx)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda line: None,
    on_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a model as ``config`` says and write the model, its metadata and the curves.

    ``log`` receives one summary line per epoch; ``progress`` shows a tqdm bar per epoch;
    ``on_epoch(model, record)`` is called after each epoch (benchmarks use it to follow test
    accuracy; raising ``KeyboardInterrupt`` there interrupts like Ctrl-C).
    """
    from tqdm import tqdm

    if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0:
        raise TrainingError("epochs and batch size must be at least 1, and lr positive")
    if not 0 <= config.translate < 0.5:
        raise TrainingError(f"translate must be in [0, 0.5), got {config.translate}")
    if config.schedule not in ("onecycle", "constant"):
        raise TrainingError(f"unknown schedule {config.schedule!r}; use onecycle or constant")
    if not (math.isfinite(config.outlier_weight) and config.outlier_weight >= 0):
        raise TrainingError(f"outlier weight must be 0 or more, got {config.outlier_weight}")
    try:
        config.model_file  # noqa: B018 (a bad run name raises here, before any work)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    device = resolve_device(config.device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    train_set, val_set = _split_data(config)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    outliers: torch.Tensor | None = None
    if config.outlier_weight > 0:
        from mnist_cnn.outliers import outlier_bank  # OpenCV, needed only here

        # Pairs are made of training digits only: validation and test digits stay unseen.
        count = min(OUTLIER_BANK, len(train_set))  # quick runs on a subset: a smaller bank
        bank = outlier_bank(count, train_set.images.numpy(), seed=config.seed)
        outliers = torch.from_numpy(bank).float().div_(255.0).unsqueeze_(1)
        n_out = max(1, config.batch_size // OUTLIER_SHARE)

    torch.manual_seed(config.seed)  # weight init and dropout
    gen = torch.Generator().manual_seed(config.seed)  # shuffling and augmentation
    model = build_model(config.architecture).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.schedule == "onecycle":
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    result = TrainResult(config=config, model=model)
    start_epoch = 1
    if resume:
        state = _load_resume_state(config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(gen, state["rng"])
        result.history = list(state["history"])
        result.seconds = float(state["seconds"])
        start_epoch = int(state["epoch"]) + 1
        log(f"resumed from {config.checkpoint_path} after epoch {start_epoch - 1}")

    try:
        for epoch in range(start_epoch, config.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64)
            correct = torch.zeros((), dtype=torch.int64)
            seen = 0
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{config.epochs}",
                unit="batch",
                leave=False,
                disable=not progress,
            )
            for x, y in data.batches(
                train_set,
                config.batch_size,
                MNIST_MEAN,
                MNIST_STD,
                shuffle=True,
                generator=gen,
                augment=config.augment,
                max_translate=config.translate,
                strokes=config.strokes,
            ):
                y = y.to(device)
                if outliers is not None:
                    pick = torch.randint(len(outliers), (n_out,), generator=gen)
                    xo = data.random_affine(outliers[pick], gen)
                    x = torch.cat([x, data.normalise(xo)])
                x = x.to(device, memory_format=memory_format)
                # One forward pass over digits and outliers: batch statistics (FastCNN's
                # batch norm) and the cost per image stay those of one batch.
                out = model(x)
                logits = out[: len(y)]
                digit_loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                loss = digit_loss
                if outliers is not None:
                    loss = loss + config.outlier_weight * uniform_loss(out[len(y) :])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                # Accumulate on-device; a .item() per step would stall a GPU.
                # The digits' loss only: comparable with validation and with runs without OE.
                loss_sum += digit_loss.detach().double().cpu() * len(y)
                correct += (logits.argmax(1) == y).sum().cpu()
                seen += len(y)
                bar.update()
            bar.close()
            train_seconds = time.perf_counter() - t0
            val = _score(model, val_set)
            epoch_seconds = time.perf_counter() - t0
            result.seconds += epoch_seconds
            record = {
                "epoch": epoch,
                "train_loss": round(loss_sum.item() / seen, 6),
                "train_accuracy": round(correct.item() / seen, 6),
                "val_loss": round(val.loss, 6),
                "val_accuracy": round(val.accuracy, 6),
                "lr_end": optimizer.param_groups[0]["lr"],
                "seconds": round(epoch_seconds, 2),
                "images_per_second": round(seen / train_seconds),
            }
            result.history.append(record)
            atomic.write_with(
                config.checkpoint_path,
                lambda f, epoch=epoch: torch.save(
                    {
                        "config": dataclasses.asdict(config),
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": _rng_state(gen),
                        "history": result.history,
                        "seconds": result.seconds,
                    },
                    f,
                ),
            )
            log(
                f"epoch {epoch:>2}/{config.epochs}  "
                f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:.2f}%  "
                f"val loss {record['val_loss']:.4f} acc {100 * record['val_accuracy']:.2f}%  "
                f"{epoch_seconds:.1f}s  {record['images_per_second']} img/s"
            )
            if on_epoch is not None:
                on_epoch(model, record)
    except KeyboardInterrupt:
        done = len(result.history)
        result.interrupted = True
        log(
            f"interrupted; the state after epoch {done} is in {config.checkpoint_path}: continue "
            f"with the same options and --resume"
            if done
            else "interrupted before the first epoch ended; nothing was saved"
        )
        return result

    test_set = data.load_split("test", config.data_dir or None)
    test = _score(model, test_set)
    result.test_accuracy, result.test_loss = test.accuracy, test.loss
    result.outputs = write_outputs(
        model, result, device, len(train_set), len(val_set), len(test_set)
    )
    return result


def write_outputs(
    model: nn.Module,
    result: TrainResult,
    device: torch.device,
    n_train: int,
    n_val: int,
    n_test: int,
) -> dict[str, Path]:
    """Save the weights, their metadata and the training curves (all atomically)."""
    # matplotlib is imported only here: the CLI imports this module to build its parser, and
    # `mnist-cnn serve` would otherwise carry 35 MB of plotting code in every worker.
    from mnist_cnn import plots

    config = result.config
    last = result.history[-1]
    metadata = {
        "format_version": 1,
        "architecture": config.architecture,
        "parameters": count_parameters(model),
        "input": {
            "size": INPUT_SIZE,
            "channels": 1,
            "mean": MNIST_MEAN,
            "std": MNIST_STD,
            "description": "white digit on black, fitted in 20x20, centred by mass in 28x28",
        },
        "classes": list(range(10)),
        "metrics": {
            "val_accuracy": last["val_accuracy"],
            "val_loss": last["val_loss"],
            "test_accuracy": round(result.test_accuracy or 0.0, 6),
            "test_loss": round(result.test_loss or 0.0, 6),
        },
        "dataset": {
            "name": "MNIST",
            "sha256": data.dataset_sha256(),
            "train_examples": n_train,
            "val_examples": n_val,
            "test_examples": n_test,
        },
        "training": {
            **dataclasses.asdict(config),
            "model_path": str(config.model_file),
            "report_dir": str(config.reports),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "seconds": round(result.seconds, 1),
        },
        "history": result.history,
        "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    model_path = config.model_file
    save_model(model, model_path, metadata)
    curves = config.reports / "training_curves.png"
    plots.save_figure(plots.curves_figure(result.history), curves)
    return {"model": model_path, "metadata": model_path.with_suffix(".json"), "curves": curves}


__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "config_for",
    "configure_process",
    "keep_freed_memory",
    "train",
]
