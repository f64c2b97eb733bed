"""Data-parallel training on torch.distributed: who this process is, and how to start many.

Training one model in several processes is ``torch.distributed``'s job, and starting them
is ``torchrun``'s (``torch.distributed.run``): it sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address in each process's environment, restarts nothing
unless asked, and when one process fails it stops the others and reports which one failed
and why. This module only reads what torchrun set up and starts torchrun for users who do
not know it (``mnist-cnn train --nproc N``):

    torchrun --standalone --nproc-per-node=2 -m mnist_cnn train --preset fast
    mnist-cnn train --preset fast --nproc 2          # the same

The process group is process-wide state, so the command joins it (``join``), and the
library's ``train`` uses whatever group the process is in (``Rank.current``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# How long a process waits for the others at a collective before it gives up. Rank 0
# validates and writes the checkpoint at each epoch's end while the others wait for the
# next step's gradients: seconds here, minutes at most for big validation sets. A peer
# that died is usually noticed at once (its socket closes, torchrun stops the group); the
# timeout bounds the rest (a frozen machine on another node).
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=10)


class DistributedError(Exception):
    """Data-parallel training cannot start as asked."""


@dataclass(frozen=True)
class Rank:
    """This process's place among the data-parallel processes (rank 0 of 1 alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's index on its machine: which GPU it uses

    @property
    def main(self) -> bool:
        """Rank 0: the one process that validates, logs and writes files."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """More than one process trains the model."""
        return self.world_size > 1

    @classmethod
    def current(cls) -> Rank:
        """The process group this process joined, or rank 0 of 1."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


def launched() -> bool:
    """This process was started by torchrun (or another launcher setting its variables)
    as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device_type: str) -> Rank:
    """Join the process group torchrun described in the environment: gloo on CPU, nccl on
    CUDA (then this process's GPU is ``cuda:LOCAL_RANK``). Alone (no torchrun), rank 0 of 1.
    Raises ``DistributedError``."""
    if not launched():
        return Rank()
    if not dist.is_available():
        raise DistributedError("this build of PyTorch has no torch.distributed")
    if dist.is_initialized():
        return Rank.current()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    except (RuntimeError, ValueError) as exc:  # no rendezvous, a port taken, a peer gone
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DistributedError(f"cannot join the other training processes: {detail}") from exc
    return Rank.current()


def leave() -> None:
    """Leave the process group (at the end of a command that joined it)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cores() -> int:
    """CPU cores this process may use (the affinity mask on Linux, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_process() -> int:
    """The cores of this machine each local process gets: all of them shared among the
    ``LOCAL_WORLD_SIZE`` processes torchrun started here (torchrun's own default is one
    thread each, which leaves cores idle when there are fewer processes than cores)."""
    return max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def gather(obj: Any, rank: Rank) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process ([obj] alone)."""
    if not rank.parallel:
        return [obj]
    out: list[Any] = [None] * rank.world_size
    dist.all_gather_object(out, obj)
    return out


def from_main(obj: Any, rank: Rank) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself alone)."""
    if not rank.parallel:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def without_option(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` minus ``flag VALUE`` and ``flag=VALUE`` (the processes torchrun starts must
    not start processes again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def launch(nproc: int, target: Sequence[str]) -> None:
    """Run ``python TARGET`` (``["-m", "mnist_cnn", "train", ...]`` or a script and its
    arguments) in ``nproc`` data-parallel processes on this machine, through torchrun
    (``torch.distributed.run``), and wait for them. Raises ``DistributedError`` naming the
    process that failed first."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # Each process's share of the cores (torchrun would set 1 and warn that it did).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores() // nproc)))
    # --standalone: a rendezvous on this machine, on a free port, for this run only.
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", *target])
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise DistributedError(
            f"training process {rank} of {nproc} failed (exit code {failure.exitcode}); "
            f"the others were stopped. Its error is printed above."
        ) from None
