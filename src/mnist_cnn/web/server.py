"""The production server: waitress, in forked worker processes of one thread each.

Why this shape. A request costs about 3 ms of CPU (an uploaded MNIST-sized PNG): HTTP
parsing, Flask, decoding and preprocessing the image (NumPy on small arrays, about half of
it) and a forward pass of a 0.4 M-parameter network (about 0.6 ms). Nearly all of that
holds Python's GIL, so one process computes on one core however many threads it has, and
extra threads in a process make each request dearer: every forward pass releases and
re-takes the GIL a dozen times, and each hand-over between busy threads costs context
switches. Measured on 2 cores (``benchmarks/load_test.py``, concurrency 8): 2 workers x 1
thread, 3.2 ms of CPU per prediction, 586 predictions/s, p99 26 ms; 2 x 2 threads, 4.0 ms,
472/s, p99 36 ms; 1 worker x 4 threads, 6.2 ms, 198/s, p99 61 ms. So:

- One worker process per core, each with one request thread (workers x threads = cores).
  Waitress's own event-loop thread in each worker still reads and writes sockets
  asynchronously, so a slow client never holds the request thread. ``--threads 2`` suits
  traffic of large photos, whose preprocessing takes tens of milliseconds.
- The workers share one listening socket and take new connections least-connections
  first (``_Balance``): left to the kernel, one worker would get most keep-alive clients.
- The model is loaded once, in the parent, and warmed up before forking: the workers share
  its memory and PyTorch's (about 160 MB of anonymous memory that copy-on-write keeps
  shared; ``gc.freeze`` keeps the collector from touching it), so the parent and two
  workers use about 290 MB with every physical page counted once (``load_test.py``).
  ``mnist-cnn serve`` imports only what serving needs (its parser builds the serve
  options alone), so nothing else the command line can run (matplotlib, for training) is
  part of it.
- One torch thread per worker: parallelism comes from the processes; intra-op threads on
  top would fight over the same cores, and forking a process whose OpenMP pool has
  started is unsafe.
- The request body limit is enforced twice: waitress refuses a body over the limit (plus
  room for multipart headers) from its Content-Length, before buffering it, and Flask's
  ``MAX_CONTENT_LENGTH`` turns what gets through into the API's JSON 413.
- The parent only supervises: it restarts a worker that dies (the server stays up) and
  stops them all on SIGINT or SIGTERM.

Forking needs a POSIX system; elsewhere one worker serves from the main process.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_cnn.web import MAX_UPLOAD_BYTES, WebConfig, create_app, state

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("mnist_cnn.web")

# Room above the body limit for multipart boundaries and part headers, so that a file of
# exactly the limit still reaches Flask, which answers an oversized one with JSON.
MULTIPART_SLACK = 64 * 1024

# Workers that keep dying (a broken install, memory exhausted at start) are not restarted in
# a loop that only burns the CPU: this many deaths within the window stop the server.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 30.0


def cores() -> int:
    """CPU cores this process may use (the affinity mask on Linux, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ServeConfig:
    """How ``mnist-cnn serve`` runs the app. ``workers=0``: one per core."""

    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 0
    threads: int = 1
    model: Path | None = None
    backend: str = "torch"
    max_request_bytes: int = MAX_UPLOAD_BYTES

    def resolved(self) -> ServeConfig:
        """This config with workers and threads sized to the machine."""
        workers = self.workers or cores()
        if not hasattr(os, "fork"):
            workers = 1
        return dataclasses.replace(self, workers=workers)


class ServerError(Exception):
    """The server cannot start: bad settings, a port in use."""


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to (host, port) and listening, shared by every worker."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerError(f"cannot resolve the host {host!r}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":
            # Restarting the server must not wait for the old connections' TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        hint = " (is another server running? choose another with --port)" if port else ""
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    sock.set_inheritable(True)
    return sock


class _Balance:
    """Least-connections balancing between the workers that share one listening socket.

    Every worker waits in ``select`` on the shared socket, and the kernel wakes them all for
    each new connection; the one that happens to be running wins the race, again and again:
    measured, eight keep-alive clients ended up 8/0 or 7/1 on two workers most of the time,
    leaving one core idle and tripling latency on the other. So each worker publishes its
    number of open connections in shared memory (one slot per worker) and listens only while
    no other worker has fewer. A worker's count is refreshed on every turn of its event
    loop, so the least-loaded worker is always listening and no connection waits.
    """

    def __init__(self, workers: int) -> None:
        # Anonymous shared memory created before forking: every worker sees every slot.
        self.counts = RawArray(ctypes.c_int, workers)

    def install(self, server: Any, slot: int) -> None:
        """Make a waitress server accept connections only when it is among the least loaded."""
        accepting = server.readable
        self.counts[slot] = 0

        def readable() -> bool:
            mine = len(server.active_channels)
            self.counts[slot] = mine
            return bool(accepting()) and mine <= min(self.counts)

        # waitress asks its listening dispatcher readable() before every select.
        server.readable = readable


def _run_waitress(
    app: Flask,
    sock: socket.socket,
    config: ServeConfig,
    balance: _Balance | None = None,
    slot: int = 0,
) -> None:
    import waitress

    server = waitress.create_server(
        app,
        sockets=[sock],
        threads=config.threads,
        max_request_body_size=config.max_request_bytes + MULTIPART_SLACK,
        # Slow or idle clients must not hold a thread or a connection forever.
        channel_timeout=30,
        connection_limit=256,
        ident="mnist-cnn",
    )
    if balance is not None:
        balance.install(server, slot)
    server.run()


def _die_with_parent(parent: int) -> None:
    """End this worker when the supervisor dies, even by SIGKILL: an orphaned worker would
    keep the port and serve on, unsupervised. Linux says so with PR_SET_PDEATHSIG."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _start_worker(
    app: Flask, sock: socket.socket, config: ServeConfig, balance: _Balance, slot: int
) -> int:
    """Fork a worker that serves until it is terminated; returns its pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # In the worker. Ctrl-C reaches the whole process group; the parent decides what
    # happens, and it stops the workers with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    status = 0
    try:
        _run_waitress(app, sock, config, balance, slot)
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        status = 1
    finally:
        # Never return into the parent's code (or run its atexit handlers) from a child.
        os._exit(status)
    return 0  # unreachable


def _supervise(app: Flask, sock: socket.socket, config: ServeConfig) -> None:
    """Fork the workers, restart any that dies, stop them all on SIGINT or SIGTERM."""
    workers: dict[int, int] = {}  # pid -> slot
    deaths: list[float] = []  # when workers died unexpectedly
    balance = _Balance(config.workers)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Move every object created so far (the model, torch, Flask) out of the garbage
    # collector's reach: a collection in a worker would otherwise write to all of them and
    # copy-on-write would duplicate memory the workers could share.
    gc.collect()
    gc.freeze()
    for slot in range(config.workers):
        workers[_start_worker(app, sock, config, balance, slot)] = slot
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        slot = workers.pop(pid, None)
        if slot is None or stopping:
            continue
        log.error("worker %d exited with status %d", pid, os.waitstatus_to_exitcode(status))
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
        if len(deaths) > MAX_RESTARTS:
            stop(signal.SIGTERM, None)
            for remaining in list(workers):
                os.waitpid(remaining, 0)
            raise ServerError(
                f"{len(deaths)} workers died within {RESTART_WINDOW_S:g} s; see the log above"
            )
        replacement = _start_worker(app, sock, config, balance, slot)
        workers[replacement] = slot
        log.info("worker %d replaces worker %d", replacement, pid)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _one_thread_per_worker() -> None:
    # Process-wide, hence here and not in the library: parallelism comes from the worker
    # processes, so each has one intra-op thread for torch and one for OpenCV (whose pool
    # would otherwise start a thread per core in every worker).
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def serve(config: ServeConfig) -> None:
    """Load the model, listen, and serve until SIGINT or SIGTERM.

    Raises ``ServerError`` (cannot listen, bad settings) and
    ``mnist_cnn.checkpoint.CheckpointError`` (the model cannot be loaded).
    """
    if config.workers > 1 and not hasattr(os, "fork"):
        log.warning("this system cannot fork worker processes: serving with one")
    config = config.resolved()
    if config.workers < 1 or config.threads < 1:
        raise ServerError("--threads must be at least 1, --workers at least 0 (0: one per core)")
    if not 0 <= config.port <= 65535:
        raise ServerError(f"--port must be between 0 and 65535, not {config.port}")
    # Load the model before listening: a broken checkpoint fails here, with its message,
    # and the workers forked below inherit the loaded model.
    # The server owns its process: one torch and one OpenCV thread, before the model loads
    # and before any fork (see the module docstring).
    _one_thread_per_worker()
    app = create_app(
        WebConfig(
            model_path=config.model,
            backend=config.backend,
            max_upload_bytes=config.max_request_bytes,
        )
    )
    # One forward pass now, in the parent: PyTorch's lazy initialisation (kernel selection,
    # buffers) then happens once, and no worker's first user waits for it.
    state(app).predictor.predict_inputs(np.zeros((1, 28, 28), np.uint8))
    summary = state(app).model_summary
    sock = listening_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving http://%s:%d with %d worker%s x %d thread%s (1 torch thread each), "
        "model %s (%s), request limit %g MB",
        shown,
        port,
        config.workers,
        "s" if config.workers > 1 else "",
        config.threads,
        "s" if config.threads > 1 else "",
        summary["file"],
        summary["architecture"],
        config.max_request_bytes / 1024 / 1024,
    )
    try:
        if config.workers == 1:
            if threading.current_thread() is threading.main_thread():
                # SIGTERM (a service manager, `kill`) stops it as Ctrl-C does: cleanly.
                signal.signal(signal.SIGTERM, _interrupt)
            _run_waitress(app, sock, config)
        else:
            _supervise(app, sock, config)
    finally:
        sock.close()
