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
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn import atomic, data, distributed, paths
from mnist_cnn.checkpoint import (
    TRAINING_STATE_SUFFIX,
    CheckpointError,
    nonfinite_tensors,
    save_model,
    state_bytes,
)
from mnist_cnn.model import (
    ARCHITECTURES,
    DROPOUT_DEFAULTS,
    INPUT_SIZE,
    MNIST_MEAN,
    MNIST_STD,
    build_model,
    count_parameters,
    logits_of,
)
from mnist_cnn.options import config_problems, option, option_problem

SCHEDULES = ("onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
MODEL_FILE = paths.MODEL_FILENAME  # the weights' name inside a run directory
DEVICES = ("auto", "cpu", "cuda", "mps")


# The most torch CPU threads a command may ask for: more than any machine here has cores,
# and the same bound on every machine (torch starts as many as asked: a million crashed it).
MAX_THREADS = 256
TRAIN_IMAGES = data.SPLITS["train"][2]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults are the ``default`` preset."""

    architecture: str = option("MNISTCNN", choices=tuple(ARCHITECTURES))
    epochs: int = option(12, minimum=1)
    batch_size: int = option(128, minimum=1)
    lr: float = option(3e-3, above=0.0)
    schedule: str = option("onecycle", choices=SCHEDULES)
    weight_decay: float = option(0.0, minimum=0.0)
    augment: bool = True
    # largest augmentation shift, as a fraction of the image: half of it moves the digit out
    translate: float = option(data.MAX_TRANSLATE, minimum=0.0, below=0.5)
    strokes: bool = True  # also vary stroke weight and edge sharpness (data.random_strokes)
    # 1 would make every target uniform: nothing left to learn
    label_smoothing: float = option(0.0, minimum=0.0, below=1.0)
    # Outlier Exposure: weight of the loss that teaches "none of the ten" on drawn
    # non-digits (mnist_cnn.outliers); 0 turns it off.
    outlier_weight: float = option(0.25, minimum=0.0)
    channels_last: bool = True
    # bf16: the training forward pass under torch.autocast (bfloat16 units: AVX512-BF16 and
    # AMX on recent Xeons, tensor cores on GPUs); weights, optimizer and evaluation stay
    # float32. auto: bf16 where the device computes it natively (resolve_precision).
    precision: str = option("fp32", choices=PRECISIONS)
    # the dropout rate of networks that have dropout (model.DROPOUT_DEFAULTS); 0 turns it off
    dropout: float = option(DROPOUT_DEFAULTS["MNISTCNN"], minimum=0.0, below=1.0)
    compile: bool = False  # torch.compile the network (measured slower here: README)
    # at least one image held out, and at least one left to train on
    val_size: int = option(5000, minimum=1, below=TRAIN_IMAGES)
    # train on this many images only (0: all); for quick runs and tests
    train_subset: int = option(0, minimum=0)
    seed: int = option(0, minimum=0, maximum=2**63 - 1)  # what torch and NumPy both take
    # the seed of the validation split; -1: the run's seed. An ensemble's members share one
    # split, so that no member trains on the images the ensemble is validated on.
    split_seed: int = option(-1, minimum=-1, maximum=2**63 - 1)
    # torch intra-op threads (0: one per core); process-wide, so the command sets them
    # (configure_process), not train()
    threads: int = option(0, minimum=0, maximum=MAX_THREADS)
    device: str = option("auto", choices=DEVICES)  # auto picks cuda, then mps, then cpu
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
        return self.model_file.with_suffix(TRAINING_STATE_SUFFIX)


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
    # The most accurate single network in <= 15 minutes on 2 CPU cores: a wider VGG-style
    # batch-norm network in bf16 where the CPU has it, more epochs of the default's shifts
    # and rotations; no Outlier Exposure or stroke augmentation, which cost accuracy on
    # MNIST for robustness elsewhere (README, "best").
    "best": {
        "architecture": "BestCNN",
        "epochs": 30,
        "precision": "auto",
        "dropout": 0.4,
        "strokes": False,
        "outlier_weight": 0.0,
    },
    # >= 99% in under 10 s on 2 CPU cores: a small batch-norm network whose element-wise
    # work runs on pooled maps, bf16 where the CPU has it, two epochs of large batches at a
    # high peak rate (chosen on the validation split: README, "fast").
    "fast": {
        "architecture": "SprintCNN",
        "epochs": 2,
        "batch_size": 512,
        "lr": 2e-2,
        "precision": "auto",
        "augment": False,
        "strokes": False,
        "outlier_weight": 0.0,
    },
}

# Settings that may change between an interrupted run and its resumption without changing
# the result: where things are and how many threads compute them.
RESUMABLE_CHANGES = {"threads", "data_dir", "report_dir", "device", "name"}


def _rank_seed(seed: int, rank: int) -> int:
    """A seed of its own for each data-parallel process (its augmentation and dropout),
    derived from the run's: rank 0 of 1 keeps the run's seed, so one process trains as
    before."""
    return (seed + rank * 0x9E3779B97F4A7C15) % 2**63


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the device has native bfloat16 arithmetic (a CUDA GPU that
    supports it; a CPU with AVX512-BF16 or AMX, where oneDNN runs bf16 convolutions faster
    than float32), else fp32; anything else as given. Emulated bf16 is slower than fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch >= 2.3
        if any(getattr(torch.cpu, probe, lambda: False)() for probe in probes):
            return "bf16"
    return "fp32"


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


# What every training state written at an epoch's end holds (see ``train``).
_STATE_KEYS = ("config", "epoch", "model", "optimizer", "scheduler", "rng", "history", "seconds")


def _load_resume_state(config: TrainConfig, world_size: int = 1) -> dict[str, Any]:
    """The training state to resume from, checked before anything uses it: its settings
    are the run's, its epoch is one of the run's, its history is as long, its numbers are
    finite. Raises ``TrainingError``."""
    path = config.checkpoint_path
    if not path.is_file():
        raise TrainingError(f"{path}: no training checkpoint to resume from; run without --resume.")
    fix = "Start a new run without --resume."
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or unsafe: torch raises many kinds
        detail = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        raise TrainingError(
            f"{path}: cannot read the training checkpoint ({detail}). {fix}"
        ) from exc

    def damaged(what: str) -> TrainingError:
        return TrainingError(f"{path}: the training checkpoint is damaged: {what}. {fix}")

    if not isinstance(state, dict):
        raise damaged(f"expected a training state, found {type(state).__name__}")
    missing = [key for key in _STATE_KEYS if key not in state]
    if missing:
        raise damaged(f"it has no {', '.join(missing)}")
    saved = state["config"]
    if not isinstance(saved, dict):
        raise damaged(f"its config is a {type(saved).__name__}, not a mapping")
    # A setting added since the checkpoint was written had its default value then.
    defaults = dataclasses.asdict(TrainConfig())
    differ = {
        k: (saved.get(k, defaults[k]), v)
        for k, v in dataclasses.asdict(config).items()
        if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v
    }
    if differ:
        listed = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise TrainingError(
            f"{path}: cannot resume with different settings ({listed}). Resume with the "
            f"original options, or start a new run without --resume."
        )
    saved_world = state.get("world_size", 1)
    if saved_world != world_size:
        raise TrainingError(
            f"{path}: this run was trained by {saved_world} process(es), and would resume in "
            f"{world_size}: each process's random streams are in the checkpoint, so resume "
            f"with the same number (--nproc {saved_world})."
        )
    rng_ranks = state.get("rng_ranks")
    if world_size > 1 and not (isinstance(rng_ranks, list) and len(rng_ranks) == world_size):
        raise damaged(f"it has no random-generator state for each of the {world_size} processes")
    epoch, history, seconds = state["epoch"], state["history"], state["seconds"]
    # Written after epoch 1 at the earliest; epochs == config.epochs is a finished run whose
    # outputs were not written yet (interrupted after its last epoch).
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= config.epochs:
        raise damaged(f"epoch {epoch!r} is not one of this run's epochs 1 to {config.epochs}")
    if not isinstance(history, list) or len(history) != epoch:
        raise damaged(f"its history does not list the {epoch} epochs done")
    if not all(isinstance(record, dict) for record in history):
        raise damaged("its history holds other things than epoch records")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not (math.isfinite(seconds) and seconds >= 0)
    ):
        raise damaged(f"its time spent, {seconds!r}, is not a duration")
    weights = state["model"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise damaged("its model is not a state_dict")
    bad = nonfinite_tensors(weights) + [
        f"optimizer state of parameter {index}"
        for index, moments in _optimizer_moments(state["optimizer"])
        if nonfinite_tensors(moments)
    ]
    if bad:
        raise damaged(
            f"NaN or infinite values in {', '.join(bad[:4])} (the run had diverged when it "
            f"was saved)"
        )
    return state


def _optimizer_moments(optimizer_state: Any) -> list[tuple[Any, dict[str, torch.Tensor]]]:
    """(parameter index, its tensors) of an optimizer's state_dict, as far as it has them."""
    if not isinstance(optimizer_state, dict) or not isinstance(optimizer_state.get("state"), dict):
        return []
    return [
        (index, {k: v for k, v in moments.items() if isinstance(v, torch.Tensor)})
        for index, moments in optimizer_state["state"].items()
        if isinstance(moments, dict)
    ]


def _restore(
    state: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    augment_gen: torch.Generator,
    rank: distributed.Rank,
) -> None:
    """Put a checked training state (``_load_resume_state``) back into the run's objects;
    whatever does not fit them is a ``TrainingError``."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(gen, state["rng"])
        if rank.parallel:  # this process's own augmentation and dropout streams
            own = state["rng_ranks"][rank.rank]
            augment_gen.set_state(own["augment"])
            torch.set_rng_state(own["torch"])
    except Exception as exc:  # load_state_dict and set_state raise several kinds
        detail = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
        raise TrainingError(
            f"{path}: the training checkpoint does not fit this run ({detail}). Start a new "
            f"run without --resume."
        ) from exc


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


def split_data(config: TrainConfig) -> tuple[data.Split, data.Split]:
    """The run's training and validation images (stratified, from the split seed)."""
    full = data.load_split("train", config.data_dir or None)
    split_seed = config.seed if config.split_seed < 0 else config.split_seed
    train_idx, val_idx = data.stratified_split(full.labels, config.val_size, split_seed)
    if config.train_subset:
        gen = torch.Generator().manual_seed(config.seed)
        train_idx = train_idx[torch.randperm(len(train_idx), generator=gen)[: config.train_subset]]
    return full.subset(train_idx), full.subset(val_idx)


def check_config(config: TrainConfig) -> None:
    """Refuse a config that ``mnist-cnn train`` would refuse as it parses: every field is
    checked against its own definition (``options.option``). Also a run name that is not
    one directory. Raises ``TrainingError``."""
    problems = config_problems(config)
    if problems:
        raise TrainingError("; ".join(problems))
    try:
        config.model_file  # noqa: B018 (a bad run name raises here, before any work)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


def _check_writable(directories: list[Path]) -> None:
    """Create the output directories and write a file in each, before the first epoch: a
    read-only or missing place is found in a second, not after the training (when it would
    lose the run). Raises ``TrainingError`` naming the directory."""
    for directory in dict.fromkeys(directories):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise TrainingError(
                f"cannot write in {directory}: {exc.strerror or exc}; nothing was trained. "
                f"Choose other places with --model-path and --report-dir."
            ) from None


def _diverged(where: str, config: TrainConfig, saved_epoch: int) -> TrainingError:
    kept = (
        f"the state after epoch {saved_epoch} is still in {config.checkpoint_path}"
        if saved_epoch
        else "no state was saved"
    )
    return TrainingError(
        f"training diverged: {where}. No model was written (nothing at {config.model_file} "
        f"was replaced; {kept}). Train with a lower learning rate (--lr, now {config.lr:g})."
    )


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

    Raises ``TrainingError`` for a config outside its options' ranges, a training state
    that cannot be resumed, output places that cannot be written, a loss or weights that
    become NaN or infinite (nothing is written then), and a write that fails (full disk:
    one line naming the file). An existing model is replaced only by a complete, finite one,
    and only after the curves are written.
    """
    from tqdm import tqdm

    check_config(config)
    # Several processes train one model when the process joined a group (torchrun:
    # mnist_cnn.distributed): each takes its share of every global batch, DDP averages the
    # gradients, and rank 0 alone validates, logs and writes.
    rank = distributed.Rank.current()
    try:
        device = resolve_device(config.device)
    except (ValueError, RuntimeError) as exc:
        raise TrainingError(str(exc)) from None
    if rank.parallel and device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)
    precision = resolve_precision(config.precision, device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    if not rank.main:
        log, progress, on_epoch = (lambda line: None), False, None
    # Everything that can refuse the run is checked before the data is read and the first
    # epoch is spent: the resumed state, and the places the outputs go. Rank 0 reads the
    # state and hands it to the others (their machines need not see its file).
    state = None
    if rank.main:
        state = _load_resume_state(config, rank.world_size) if resume else None
        _check_writable([config.model_file.parent, config.reports])
    state = distributed.from_main(state, rank)

    train_set, val_set = split_data(config)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    outliers: torch.Tensor | None = None
    if config.outlier_weight > 0:
        from mnist_cnn.outliers import outlier_bank  # OpenCV, needed only here

        # Pairs are made of training digits only: validation and test digits stay unseen.
        count = min(OUTLIER_BANK, len(train_set))  # quick runs on a subset: a smaller bank
        bank = outlier_bank(count, train_set.images.numpy(), seed=config.seed)
        outliers = torch.from_numpy(bank).float().div_(255.0).unsqueeze_(1)
        n_out = max(1, config.batch_size // OUTLIER_SHARE // rank.world_size)

    torch.manual_seed(config.seed)  # weight init and dropout
    gen = torch.Generator().manual_seed(config.seed)  # shuffling (and alone, augmentation)
    model = build_model(config.architecture, config.dropout).to(device, memory_format=memory_format)
    # Each process draws its own augmentations and dropout masks (the same global batch
    # with the same augmentations would be the same as one process, but slower).
    augment_gen = gen
    if rank.parallel:
        augment_gen = torch.Generator().manual_seed(_rank_seed(config.seed, rank.rank))
        torch.manual_seed(_rank_seed(config.seed, rank.rank))
    net: nn.Module = model
    if rank.parallel:
        from torch.nn.parallel import DistributedDataParallel

        # DDP copies rank 0's initial weights to every process and averages gradients in
        # the backward pass; batch norm keeps per-process batch statistics (its running
        # averages follow rank 0), as DDP does by default.
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.schedule == "onecycle":
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    result = TrainResult(config=config, model=model)
    start_epoch = 1
    if state is not None:
        _restore(state, config.checkpoint_path, model, optimizer, scheduler, gen, augment_gen, rank)
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
            for step, (x, y) in enumerate(
                data.batches(
                    train_set,
                    config.batch_size,
                    MNIST_MEAN,
                    MNIST_STD,
                    shuffle=True,
                    generator=gen,
                    augment=config.augment,
                    max_translate=config.translate,
                    strokes=config.strokes,
                    shard=(rank.rank, rank.world_size),
                    augment_generator=augment_gen,
                ),
                start=1,
            ):
                y = y.to(device)
                if outliers is not None:
                    pick = torch.randint(len(outliers), (n_out,), generator=augment_gen)
                    xo = data.random_affine(outliers[pick], augment_gen)
                    x = torch.cat([x, data.normalise(xo)])
                x = x.to(device, memory_format=memory_format)
                # One forward pass over digits and outliers: batch statistics (FastCNN's
                # batch norm) and the cost per image stay those of one batch.
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    out = net(x).float()
                logits = out[: len(y)]
                digit_loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                loss = digit_loss
                if outliers is not None:
                    loss = loss + config.outlier_weight * uniform_loss(out[len(y) :])
                # Checked at once: one NaN step makes every weight NaN, and the rest of the
                # epoch would be spent computing NaN. (The .cpu() below syncs anyway.)
                if not bool(torch.isfinite(loss.detach()).cpu()):
                    raise _diverged(
                        f"the loss is {loss.item()} at step {step} of epoch {epoch}",
                        config,
                        len(result.history),
                    )
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
            if rank.parallel:  # the epoch's figures over all processes' shares
                totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen))])
                torch.distributed.all_reduce(totals)
                loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
            train_seconds = time.perf_counter() - t0
            # A finite loss can still leave the weights infinite (a step too large for
            # float32): nothing non-finite is saved, not even as the state to resume from.
            bad = nonfinite_tensors(model.state_dict())
            if bad:
                raise _diverged(
                    f"the weights ({', '.join(bad[:3])}) became NaN or infinite in epoch {epoch}",
                    config,
                    len(result.history),
                )
            # Every process's own random streams, for --resume (a collective: all take part).
            rng_ranks = distributed.gather(
                {"augment": augment_gen.get_state(), "torch": torch.get_rng_state()}, rank
            )
            if not rank.main:
                result.history.append({"epoch": epoch})
                continue
            val = _score(model, val_set)
            if not math.isfinite(val.loss):
                raise _diverged(
                    f"the validation loss is {val.loss} after epoch {epoch}",
                    config,
                    len(result.history),
                )
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
            training_state = {
                "config": dataclasses.asdict(config),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(gen),
                "history": result.history,
                "seconds": result.seconds,
                "world_size": rank.world_size,
            }
            if rank.parallel:
                training_state["rng_ranks"] = rng_ranks
            try:
                atomic.write_bytes(config.checkpoint_path, state_bytes(training_state))
            except OSError as exc:  # atomic.WriteError: "cannot write <path>: <reason>"
                raise TrainingError(f"{exc}; the run stopped after epoch {epoch}.") from exc
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
    if not rank.main:
        return result  # rank 0 tests and writes the model

    test_set = data.load_split("test", config.data_dir or None)
    test = _score(model, test_set)
    result.test_accuracy, result.test_loss = test.accuracy, test.loss
    if not math.isfinite(test.loss):
        raise _diverged(f"the test loss is {test.loss}", config, len(result.history))
    try:
        result.outputs = write_outputs(
            model, result, device, len(train_set), len(val_set), len(test_set)
        )
    except (OSError, CheckpointError) as exc:
        # Written in an order that keeps the old model unless the new pair is complete
        # (write_outputs): the message need not say more than what failed, and the way on.
        raise TrainingError(
            f"{exc}; the run's outputs were not all written (its state after the last epoch "
            f"is in {config.checkpoint_path}: --resume, with other places if need be, writes "
            f"them again)."
        ) from exc
    return result


def write_outputs(
    model: nn.Module,
    result: TrainResult,
    device: torch.device,
    n_train: int,
    n_val: int,
    n_test: int,
) -> dict[str, Path]:
    """Save the training curves, then the weights and their metadata (all atomically).

    The curves go first: when they cannot be written (a read-only report directory, a full
    disk), the model that was there stays, rather than being replaced by a run that then
    fails. The weights and JSON are replaced together, and only when finite
    (``checkpoint.save_model``). Raises ``atomic.WriteError`` and ``CheckpointError``.
    """
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
            "precision": resolve_precision(config.precision, device),
            "world_size": distributed.Rank.current().world_size,
            "threads": torch.get_num_threads(),
            "seconds": round(result.seconds, 1),
        },
        "history": result.history,
        "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    curves = config.reports / "training_curves.png"
    plots.save_figure(plots.curves_figure(result.history), curves)
    model_path = config.model_file
    save_model(model, model_path, metadata)
    return {"model": model_path, "metadata": model_path.with_suffix(".json"), "curves": curves}


__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "check_config",
    "config_for",
    "configure_process",
    "keep_freed_memory",
    "option_problem",
    "train",
]
