"""The production server: waitress, in one process or several forked workers.

Why this shape. A request spends most of its time in Python: HTTP parsing, Flask, decoding
and preprocessing the image (NumPy on small arrays), a forward pass of a 0.4 M-parameter
network that takes well under a millisecond. Python threads in one process share one GIL,
so one process uses about one core however many threads it has. To use every core we fork
worker processes, each running waitress with a few threads on one shared listening socket
(the kernel hands each new connection to whichever worker accepts it first).

- The model is loaded once, in the parent, before forking: the workers share its memory
  and PyTorch's (about 160 MB of it is anonymous memory that copy-on-write keeps shared),
  which keeps two workers well under 300 MB in total (measured by PSS,
  ``benchmarks/load_test.py``).
- One torch thread per worker: parallelism comes from the requests; intra-op threads on
  top would fight over the same cores, and forking a process whose OpenMP pool has
  started is unsafe.
- Workers default to the number of cores, threads to four per worker: eight requests in
  flight on two cores keeps both busy while one thread waits on the network.
- The request body limit is enforced twice: waitress refuses a body over the limit (plus
  room for multipart headers) before buffering it, and Flask's ``MAX_CONTENT_LENGTH`` turns
  what gets through into the API's JSON 413.
- The parent only supervises: it restarts a worker that dies (the server stays up) and
  stops them all on SIGINT or SIGTERM.

Forking needs a POSIX system; elsewhere ``--workers 1`` serves from the main process.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_cnn.web import MAX_UPLOAD_BYTES, WebConfig, create_app

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
    """How ``mnist-cnn serve`` runs the app. ``0`` for workers or threads: sized to the cores."""

    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 0
    threads: int = 0
    model: Path | None = None
    backend: str = "torch"
    max_request_bytes: int = MAX_UPLOAD_BYTES

    def resolved(self) -> ServeConfig:
        """This config with workers and threads sized to the machine."""
        workers = self.workers or cores()
        if not hasattr(os, "fork"):
            workers = 1
        threads = self.threads or 4
        return ServeConfig(
            self.host, self.port, workers, threads, self.model, self.backend, self.max_request_bytes
        )


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


def _run_waitress(app: Flask, sock: socket.socket, config: ServeConfig) -> None:
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
    server.run()


def _start_worker(app: Flask, sock: socket.socket, config: ServeConfig) -> int:
    """Fork a worker that serves until it is terminated; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    # In the worker. Ctrl-C reaches the whole process group; the parent decides what
    # happens, and it stops the workers with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    status = 0
    try:
        _run_waitress(app, sock, config)
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        status = 1
    finally:
        # Never return into the parent's code (or run its atexit handlers) from a child.
        os._exit(status)
    return 0  # unreachable


def _supervise(app: Flask, sock: socket.socket, config: ServeConfig) -> None:
    """Fork the workers, restart any that dies, stop them all on SIGINT or SIGTERM."""
    workers: set[int] = set()
    deaths: list[float] = []  # when workers died unexpectedly
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
    for _ in range(config.workers):
        workers.add(_start_worker(app, sock, config))
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in workers:
            continue
        workers.discard(pid)
        if stopping:
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
        replacement = _start_worker(app, sock, config)
        workers.add(replacement)
        log.info("worker %d replaces worker %d", replacement, pid)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(config: ServeConfig) -> None:
    """Load the model, listen, and serve until SIGINT or SIGTERM.

    Raises ``ServerError`` (cannot listen, bad settings) and
    ``mnist_cnn.checkpoint.CheckpointError`` (the model cannot be loaded).
    """
    config = config.resolved()
    if config.workers < 1 or config.threads < 1:
        raise ServerError("--workers and --threads must be at least 1 (or 0 for automatic)")
    if not 0 <= config.port <= 65535:
        raise ServerError(f"--port must be between 0 and 65535, not {config.port}")
    # Load the model before listening: a broken checkpoint fails here, with its message,
    # and the workers forked below inherit the loaded model.
    app = create_app(
        WebConfig(
            model_path=config.model,
            backend=config.backend,
            torch_threads=1,
            max_upload_bytes=config.max_request_bytes,
        )
    )
    summary = app.extensions["mnist_cnn"]["model_summary"]
    sock = listening_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving http://%s:%d with %d worker%s x %d threads (1 torch thread each), "
        "model %s (%s), request limit %g MB",
        shown,
        port,
        config.workers,
        "s" if config.workers > 1 else "",
        config.threads,
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
