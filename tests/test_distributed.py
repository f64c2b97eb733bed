"""Data-parallel training (mnist_cnn.distributed, DDP in train.train): on CPU with gloo,
two processes started by torchrun, on a small subset of the bundled data.

The reference for "the same training" is one process: two processes with B images each
take one optimisation step equal to one process with 2B (DDP averages the gradients), and
keep identical weights; a run whose process is killed resumes to the weights of an
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _web_fixtures import DATA_DIR, worker_pids

from mnist_cnn import data, distributed
from mnist_cnn.ensemble import member_configs
from mnist_cnn.train import (
    TrainConfig,
    TrainingError,
    config_for,
    resolve_precision,
    train,
)

WORKER = Path(__file__).with_name("_ddp_worker.py")
# gloo on the loopback interface only: the test processes talk to nobody else.
ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
TIMEOUT = 240  # seconds any torchrun of these tests may take, however slow the machine


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", *args,
    ]  # fmt: skip


def _small(tmp_path: Path, **overrides: object) -> TrainConfig:
    """A config that trains in a second: a subset, no Outlier Exposure (its bank takes
    seconds to draw), outputs in tmp."""
    settings = {
        "train_subset": 512,
        "val_size": 500,
        "batch_size": 128,
        "epochs": 1,
        "outlier_weight": 0.0,
        "threads": 1,
        "data_dir": str(DATA_DIR),
        "model_path": str(tmp_path / "single" / "m.pth"),
        **overrides,
    }
    return dataclasses.replace(TrainConfig(), **settings)


def _run_workers(config: TrainConfig, out: Path, nproc: int = 2) -> list[dict[str, torch.Tensor]]:
    out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config, model_path=str(out / "m.pth"))
    proc = subprocess.run(
        _torchrun(str(WORKER), json.dumps(dataclasses.asdict(config)), str(out), nproc=nproc),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


# ----------------------------------------------------------------------------- fast units


def test_shards_partition_every_global_batch(train_split: data.Split) -> None:
    split = train_split.subset(torch.arange(1000))
    whole = list(
        data.batches(split, 96, 0.0, 1.0, shuffle=True, generator=torch.Generator().manual_seed(3))
    )
    shards = [
        list(
            data.batches(
                split,
                96,
                0.0,
                1.0,
                shuffle=True,
                generator=torch.Generator().manual_seed(3),
                shard=(rank, 3),
            )
        )
        for rank in range(3)
    ]
    assert all(len(s) == len(whole) for s in shards)
    for step, (x, y) in enumerate(whole):
        parts = [s[step] for s in shards]
        # Every image of the global batch is in exactly one process's share.
        assert sum(len(p[1]) for p in parts) == len(y)
        joined = torch.cat([p[0] for p in parts])
        assert sorted(joined.flatten(1).sum(1).tolist()) == pytest.approx(
            sorted(x.flatten(1).sum(1).tolist())
        )


def test_augmentation_draws_from_its_own_generator(train_split: data.Split) -> None:
    split = train_split.subset(torch.arange(64))

    def first_batch(aug_seed: int) -> torch.Tensor:
        return next(
            data.batches(
                split,
                64,
                0.0,
                1.0,
                shuffle=True,
                generator=torch.Generator().manual_seed(0),
                augment=True,
                augment_generator=torch.Generator().manual_seed(aug_seed),
            )
        )[0]

    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))


def test_alone_a_process_is_rank_0_of_1() -> None:
    rank = distributed.Rank.current()
    assert (rank.rank, rank.world_size, rank.main, rank.parallel) == (0, 1, True, False)
    assert distributed.gather("x", rank) == ["x"]
    assert distributed.from_main({"a": 1}, rank) == {"a": 1}


def test_nproc_is_not_passed_on_to_the_processes() -> None:
    argv = ["train", "--nproc", "2", "--preset", "fast", "--nproc=3", "--epochs", "1"]
    assert distributed.without_option(argv, "--nproc") == [
        "train",
        "--preset",
        "fast",
        "--epochs",
        "1",
    ]


def test_auto_precision_is_bf16_only_where_the_device_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"


def test_ensemble_members_share_one_validation_split(tmp_path: Path) -> None:
    config = config_for("fast", seed=5, model_path=str(tmp_path / "e" / "m.pth"))
    members = member_configs(config, 3)
    assert [m.seed for m in members] == [5, 6, 7]
    assert {m.split_seed for m in members} == {5}
    assert len({m.model_file for m in members}) == 3
    assert all(m.model_file.parent.parent == tmp_path / "e" / "members" for m in members)
    with pytest.raises(TrainingError, match="members"):
        member_configs(config, 0)


def test_resume_refuses_another_number_of_processes(tmp_path: Path) -> None:
    config = _small(tmp_path, epochs=2)
    train(config)
    state = torch.load(config.checkpoint_path, weights_only=True)
    state["world_size"] = 2
    torch.save(state, config.checkpoint_path)
    with pytest.raises(TrainingError, match="2 process"):
        train(config, resume=True)


# ------------------------------------------------------------------------ two processes


@pytest.mark.slow
def test_two_processes_keep_identical_weights(tmp_path: Path) -> None:
    # Dropout, augmentation and batch norm on: each process draws its own masks and
    # augmentations and normalises its own share, yet DDP keeps the weights equal.
    config = _small(tmp_path, architecture="SprintCNN", augment=True, batch_size=64)
    rank0, rank1 = _run_workers(config, tmp_path / "ddp")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # batch statistics are each process's own (DDP broadcasts rank 0's)
        assert torch.equal(rank0[key], rank1[key]), key
    untrained = _small(tmp_path, architecture="SprintCNN", epochs=1, train_subset=1)
    assert not torch.equal(rank0["head.weight"], train(untrained).model.state_dict()["head.weight"])


@pytest.mark.slow
def test_two_processes_of_b_step_as_one_process_of_2b(tmp_path: Path) -> None:
    # One step (256 images, one batch) of the seed CNN without dropout or augmentation:
    # the averaged gradient of two halves is the gradient of the whole. Adam's first moment
    # after one step is (1 - beta1) x the gradient, so the training checkpoints hold it.
    config = _small(
        tmp_path,
        train_subset=256,
        batch_size=256,
        dropout=0.0,
        augment=False,
        schedule="constant",
        lr=1e-3,
    )
    rank0, _ = _run_workers(config, tmp_path / "ddp")
    two = torch.load(tmp_path / "ddp" / "m.ckpt", weights_only=True)
    single = train(config)
    one = torch.load(config.checkpoint_path, weights_only=True)
    names = list(single.model.state_dict())
    for index, name in enumerate(names):
        g2 = two["optimizer"]["state"][index]["exp_avg"]
        g1 = one["optimizer"]["state"][index]["exp_avg"]
        assert g1.abs().max() > 0, name  # a real step, not two untouched models
        assert torch.allclose(g2, g1, rtol=1e-4, atol=1e-5 * float(g1.abs().max())), name
        # The weights too, where Adam's first step (about lr x the gradient's sign) does not
        # amplify rounding: where the gradient is not vanishingly small.
        clear = g1.abs() > 1e-3 * float(g1.abs().max())
        w2, w1 = rank0[name][clear], single.model.state_dict()[name][clear]
        assert torch.allclose(w2, w1, atol=1e-6), name


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnist_cnn", "train", *args]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_a_killed_process_stops_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    common = [
        "--nproc", "2", "--epochs", "3", "--train-subset", "4096", "--val-size", "500",
        "--outlier-weight", "0", "--data-dir", str(DATA_DIR), "--no-progress",
    ]  # fmt: skip
    killed = tmp_path / "killed" / "m.pth"
    run = subprocess.Popen(
        _cli(*common, "--model-path", str(killed)),
        env=ENV,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        checkpoint = killed.with_suffix(".ckpt")
        while not checkpoint.exists():  # epoch 1 is done: kill process 1 in epoch 2
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "no epoch ended"
            time.sleep(0.05)
        ranks = {_rank_of(pid): pid for pid in worker_pids(run.pid)}
        os.kill(ranks[1], signal.SIGKILL)
        out, err = run.communicate(timeout=60)  # the others are stopped, not left waiting
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, out + err
    assert "training process 1 of 2 failed" in err
    assert not killed.exists()  # no model from a run that did not finish

    resumed = subprocess.run(
        _cli(*common, "--model-path", str(killed), "--resume"),
        env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    whole = tmp_path / "whole" / "m.pth"
    straight = subprocess.run(
        _cli(*common, "--model-path", str(whole)),
        env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = torch.load(killed, weights_only=True)
    b = torch.load(whole, weights_only=True)
    for key in b:
        assert torch.equal(a[key], b[key]), key
