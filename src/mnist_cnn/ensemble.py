"""Ensembles: several networks trained from different seeds, their probabilities averaged.

``mnist-cnn train --members N`` trains N members of one recipe, seeds ``seed`` to
``seed + N - 1``, each a complete run of its own under ``runs/NAME/members/seed-K/``, and
writes one ensemble checkpoint, ``runs/NAME/mnist_cnn_model.pth`` with its JSON manifest
(``checkpoint.save_ensemble``): every command that loads a model loads it.

The members share one validation split (the base seed's), so the ensemble's validation
accuracy is measured on images no member trained on. They train in parallel processes when
the machine has a core for each (one thread each: small networks use cores better side by
side than together), else in turn with all cores; on a GPU, in turn.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mnist_cnn import data, distributed
from mnist_cnn.checkpoint import build_ensemble, find_model, read_metadata, save_model
from mnist_cnn.model import logits_of
from mnist_cnn.train import (
    MODEL_FILE,
    TrainConfig,
    TrainingError,
    check_config,
    configure_process,
    resolve_device,
    split_data,
    train,
)

MAX_MEMBERS = 64  # the largest ensemble a checkpoint may hold (checkpoint's bound too)


@dataclass
class EnsembleResult:
    """What ``train_ensemble`` produced: the members' results and the ensemble's figures."""

    members: list[dict[str, Any]] = field(default_factory=list)
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    seconds: float = 0.0
    outputs: dict[str, Path] = field(default_factory=dict)


def member_configs(config: TrainConfig, members: int) -> list[TrainConfig]:
    """The configs of the members: seeds ``config.seed + k``, one shared validation split,
    each member's run in ``<ensemble run>/members/seed-<seed>/``."""
    if not 1 <= members <= MAX_MEMBERS:
        raise TrainingError(f"--members must be 1 to {MAX_MEMBERS}, got {members}")
    root = config.model_file.parent / "members"
    split_seed = config.seed if config.split_seed < 0 else config.split_seed
    out = []
    for k in range(members):
        seed = config.seed + k
        run = root / f"seed-{seed}"
        out.append(
            dataclasses.replace(
                config,
                seed=seed,
                split_seed=split_seed,
                model_path=str(run / MODEL_FILE),
                report_dir=str(run),
            )
        )
    return out


def _die_with_parent(parent: int) -> None:
    """Ask Linux to stop this worker when ``parent``, the process that started it, dies:
    killed (not interrupted, which reaches the workers too), it would leave members
    training for nobody. A parent that died before the request was made is noticed too (the
    worker then belongs to another process). Elsewhere this does nothing."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1  # from <sys/prctl.h>
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)


def _train_member(config: TrainConfig, threads: int, index: int) -> dict[str, Any]:
    """One member, in a worker process: the process's threads, then the run."""
    configure_process(threads)
    result = train(config, log=lambda line: print(f"[member {index}] {line}", flush=True))
    if result.interrupted:
        raise TrainingError(f"member {index} was interrupted")
    return {
        "seed": config.seed,
        "run": str(config.model_file.parent),
        "model": str(result.outputs["model"]),
        "val_accuracy": result.history[-1]["val_accuracy"],
        "test_accuracy": result.test_accuracy,
        "seconds": round(result.seconds, 1),
    }


def train_ensemble(
    config: TrainConfig,
    members: int,
    *,
    jobs: int = 0,
    log: Callable[[str], None] = lambda line: None,
) -> EnsembleResult:
    """Train ``members`` networks of ``config``'s recipe and write their ensemble.

    ``jobs`` members train at once in separate processes (0: one per core, at most
    ``members``), each with ``cores // jobs`` threads. Raises ``TrainingError`` (a member
    that fails stops the ensemble; the members finished are kept in their runs).
    """
    check_config(config)
    configs = member_configs(config, members)
    cores = distributed.cores()
    # A GPU is busy with one member at a time; a CPU's cores are shared among members.
    on_gpu = resolve_device(config.device).type != "cpu"
    jobs = min(members, jobs or (1 if on_gpu else cores))
    threads = max(1, cores // jobs)
    log(f"training {members} members, {jobs} at a time with {threads} thread(s) each")
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    if jobs == 1:
        for k, member in enumerate(configs):
            results.append(_train_member(member, threads, k))
    else:
        # spawn, not fork: a forked child inherits torch's thread pools half-initialised.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = [pool.submit(_train_member, m, threads, k) for k, m in enumerate(configs)]
            try:
                results = [f.result() for f in futures]
            except Exception:
                for f in futures:
                    f.cancel()
                raise
    result = EnsembleResult(members=results, seconds=time.perf_counter() - t0)
    for r in results:
        log(
            f"member seed {r['seed']}: val {100 * r['val_accuracy']:.2f}%, "
            f"test {100 * r['test_accuracy']:.2f}%, {r['seconds']:.0f}s"
        )

    training = {"members": members, "jobs": jobs, "seconds": round(result.seconds, 1)}
    assembled = assemble([Path(r["model"]) for r in results], config.model_file, training)
    result.val_accuracy = assembled.val_accuracy
    result.test_accuracy, result.test_loss = assembled.test_accuracy, assembled.test_loss
    result.outputs = assembled.outputs
    return result


def member_config(path: Path) -> TrainConfig | None:
    """The training config a model's JSON records (None when it records none)."""
    settings = read_metadata(path).get("training")
    if not isinstance(settings, dict):
        return None
    known = {k: v for k, v in settings.items() if k in TrainConfig.__dataclass_fields__}
    try:
        return dataclasses.replace(TrainConfig(), **known)
    except TypeError:
        return None


def validation_split(config: TrainConfig) -> tuple[int, int, str]:
    """What decides a run's validation images: two runs with the same were validated on
    the same images."""
    return (
        config.seed if config.split_seed < 0 else config.split_seed,
        config.val_size,
        config.data_dir,
    )


def assemble(
    member_paths: list[Path], destination: Path, training: dict[str, Any] | None = None
) -> EnsembleResult:
    """Write the ensemble of the models at ``member_paths`` (weights or run directories) to
    ``destination``, with its own figures: test accuracy and loss, and validation ones
    when the members share one validation split (as ``train --members`` trains them; their
    JSON says) that no member trained on. Raises ``CheckpointError``, ``TrainingError``."""
    ensemble, manifest = build_ensemble(member_paths)
    mean, std = manifest["input"]["mean"], manifest["input"]["std"]
    configs = [member_config(find_model(p).path) for p in member_paths]
    result = EnsembleResult(members=list(manifest["ensemble"]["members"]))
    metrics: dict[str, float] = {}
    splits = {validation_split(c) if c else None for c in configs}
    if len(splits) == 1 and None not in splits and configs[0] is not None:
        _, val_set = split_data(configs[0])
        val_accuracy, val_loss = _accuracy_loss(ensemble, val_set, mean, std)
        metrics.update(val_accuracy=round(val_accuracy, 6), val_loss=round(val_loss, 6))
        result.val_accuracy = val_accuracy
    data_dir = configs[0].data_dir if configs[0] else ""
    test_accuracy, test_loss = _accuracy_loss(
        ensemble, data.load_split("test", data_dir or None), mean, std
    )
    metrics.update(test_accuracy=round(test_accuracy, 6), test_loss=round(test_loss, 6))
    result.test_accuracy, result.test_loss = test_accuracy, test_loss
    extra = {"metrics": metrics, **({"training": training} if training else {})}
    save_model(ensemble, destination, {**manifest, **extra})
    result.outputs = {"model": destination, "metadata": destination.with_suffix(".json")}
    return result


def _accuracy_loss(
    model: torch.nn.Module, split: data.Split, mean: float, std: float
) -> tuple[float, float]:
    log_probs = logits_of(model, data.normalise(split.images, mean, std))
    loss = F.nll_loss(log_probs, split.labels).item()
    accuracy = (log_probs.argmax(1) == split.labels).float().mean().item()
    if not math.isfinite(loss):
        raise TrainingError(f"the ensemble's loss is {loss}")
    return accuracy, loss


__all__ = [
    "EnsembleResult",
    "assemble",
    "member_config",
    "member_configs",
    "train_ensemble",
    "validation_split",
]
