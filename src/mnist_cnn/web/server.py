"""The production server: waitress, in forked worker processes of one request thread each.

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
  Waitress's own event-loop thread in each worker reads and writes sockets
  asynchronously, so a slow client never holds the request thread. ``--threads 2`` suits
  traffic of large photos, whose preprocessing takes tens of milliseconds. (A large
  image's decode gets a thread of its own: see Memory.)
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

Connections (``_Balance``). The workers share one listening socket and take new
connections least-connections first: left to the kernel, whichever worker happens to be
running wins every race, and eight keep-alive clients ended up 8/0 or 7/1 on two workers,
leaving a core idle. So each worker publishes its number of open connections in shared
memory and listens only while no other worker has fewer. The first version re-read the
counts only when its event loop turned, which a worker that had stopped listening does
once a second when idle: with 100 idle connections open, each new one waited for that
second in turn and a request waited 19-25 s; 150 slowloris clients kept every normal
request out. Now a worker that accepts a connection wakes, through a pipe per worker, every
worker that may have become the least loaded, so one is always listening. A worker over
the least loaded one by more than ``REBALANCE_SLACK`` connections asks its keep-alive
clients to reconnect (``Connection: close``), so the load spreads again after a worker is
replaced. Measured (``load_test.py --duration 20 --slow-clients 150 --reconnect 10``, three
runs): with 150 slowloris connections open, normal requests (a new connection every 10)
kept p99 at 40-74 ms (29-43 ms without them), no errors; a request behind 100 idle
connections is answered in milliseconds.

Slow and idle clients (``_Channel``). Each connection must complete a request's headers
within ``header_timeout_s`` of its first byte (of connecting, for a new connection) and
its body at no less than ``BODY_MIN_RATE`` after ``BODY_TIMEOUT_S``; idle keep-alive
connections close after ``IDLE_TIMEOUT_S``; a worker holds at most ``connection_limit``
connections (the rest wait in the kernel's backlog). Header and in-memory body buffers are
small (``MAX_HEADER_BYTES``, ``INBUF_BYTES``; larger bodies go to a temporary file), so
500 slow connections cost a worker tens of MB, not gigabytes.

The request body limit is enforced twice: waitress refuses a body over the limit (plus
room for multipart headers) from its Content-Length, before buffering it, and Flask's
``MAX_CONTENT_LENGTH`` turns what gets through into the API's JSON 413. Waitress's own
refusal is JSON too, and it reads and discards the rest of the body (up to
``LINGER_BYTES`` within ``LINGER_S``) after answering, as nginx's lingering close does:
a client such as urllib or requests sends its whole body before it reads the answer, and
closing with unread data would reset the connection before it could.

Memory. Image decoding is bounded per request (``mnist_cnn.decode``: a 40 MP PNG takes
under 200 MB, not 900) and the web app decodes one large image at a time per worker, one
more waiting, and answers others 503 with Retry-After. While a request decodes a large
image it steps aside (``STEP_ASIDE``): the worker gets a second request thread for that
time, so its other requests do not queue behind a decode of seconds. After each such
request (and every ``MEMORY_CHECK_EVERY`` others) a worker compares its resident memory
with what it had at start: past ``TRIM_STEP_MB`` more, it hands freed memory back to the
system (``malloc_trim``: glibc keeps freed heap pages, and workers kept ~610 MB after a
few 40 MP images); if it is still over ``RECYCLE_ABOVE_MB``, it finishes its requests and
exits, and the parent starts a fresh one. Measured (``load_test.py --duration 20 --bombs
4``, three runs): the whole server peaked at 669-698 MB (PSS summed; it took 3 GB before),
normal requests kept being answered at p99 92-105 ms (was seconds), no errors.

Supervision. The parent restarts a worker that dies, always: after a worker that lived
less than ``QUICK_DEATH_S`` it waits, doubling from ``BACKOFF_BASE_S`` up to
``BACKOFF_MAX_S`` (the old rule, stop the server after 6 deaths in 30 s, turned a few
out-of-memory kills into an outage). Meanwhile new connections wait in the backlog, and
only the requests in flight on the dead worker are lost: ``load_test.py --duration 20
--kill-worker`` (a worker killed every 5 s at concurrency 8) lost 0.12-0.14% of them,
about 4 a kill.

Stopping. SIGTERM (or Ctrl-C) stops accepting and drains: each worker takes the
connections already queued, answers every request in flight (with ``Connection: close``),
closes idle connections, and exits once nothing is left, or after ``grace_s``; the parent
then returns. A second SIGTERM or Ctrl-C stops at once. Before, 7 of 8 fast and 4 of 4
slow requests in flight were cut; ``load_test.py --duration 10 --sigterm`` now drops none
(three runs; the server stopped in 0.3-0.5 s).

Forking needs a POSIX system; elsewhere one worker serves from the main process.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import gc
import json
import logging
import os
import select
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

from mnist_cnn.options import config_problems, option
from mnist_cnn.web import MAX_UPLOAD_BYTES, STEP_ASIDE, WebConfig, create_app, state

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from flask import Flask

log = logging.getLogger("mnist_cnn.web")

# Room above the body limit for multipart boundaries and part headers, so that a file of
# exactly the limit still reaches Flask, which answers an oversized one with JSON.
MULTIPART_SLACK = 64 * 1024

# Slow clients. A request's headers must arrive within the header timeout (ServeConfig) of
# its first byte; its body within BODY_TIMEOUT_S plus its length at BODY_MIN_RATE (a 10 MB
# photo may take 3 minutes: a slow mobile link). An idle keep-alive connection closes after
# IDLE_TIMEOUT_S.
BODY_TIMEOUT_S = 30.0
BODY_MIN_RATE = 64 * 1024  # bytes per second
IDLE_TIMEOUT_S = 30
# Per connection: the largest request head (browsers send a few kB; nginx allows 32 kB)
# and the part of a body kept in memory before it goes to a temporary file.
MAX_HEADER_BYTES = 32 * 1024
INBUF_BYTES = 64 * 1024
# How often a worker looks for connections past their deadlines.
POLICE_INTERVAL_S = 0.5

# After refusing a body that is too large: read and discard what the client still sends,
# up to this much and this long (and this long between two reads), then close.
LINGER_BYTES = 256 * 1024 * 1024
LINGER_S = 30.0
LINGER_IDLE_S = 5.0

# Balance: a worker with this many connections more than the least loaded one closes its
# keep-alive connections after their next answer, so that their clients reconnect to it.
REBALANCE_SLACK = 2

# Draining (SIGTERM): an idle keep-alive connection is closed once it has been idle this
# long; a client that sends a request meanwhile is answered (with Connection: close).
DRAIN_IDLE_S = 0.5

# Memory: past TRIM_STEP_MB over the resident size after the last trim, a worker returns
# freed memory to the system; over RECYCLE_ABOVE_MB above its start even so, it is replaced.
TRIM_STEP_MB = 48
RECYCLE_ABOVE_MB = 400
# Memory is checked after each request that decoded a large image and after every this
# many others (reading /proc/self/statm costs ~20 us: 0.6% of a prediction, if every time).
MEMORY_CHECK_EVERY = 16
# The WSGI environ key that marks a request that stepped aside (decoded a large image).
_STEPPED_ASIDE = "mnist_cnn.stepped_aside"
# The exit status of a worker that left to be replaced (memory): restarted at once.
RECYCLE_EXIT = 75

# Restarts: a worker that dies within QUICK_DEATH_S of starting is restarted after a delay
# that doubles with each such death in a row, from BACKOFF_BASE_S (the second) to
# BACKOFF_MAX_S; the first death in a row is replaced at once.
QUICK_DEATH_S = 10.0
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 10.0


def cores() -> int:
    """CPU cores this process may use (the affinity mask on Linux, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# Upper bounds that keep a typo from forking or threading the machine to death: far more
# than any machine here has cores, the same on every machine.
MAX_WORKERS = 64
MAX_THREADS = 64


@dataclass(frozen=True)
class ServeConfig:
    """How ``mnist-cnn serve`` runs the app. ``workers=0``: one per core.

    ``connection_limit``: open connections per worker; ``header_timeout_s``: time a client
    has to send a request's headers; ``grace_s``: how long SIGTERM waits for the requests
    in flight.
    """

    host: str = "127.0.0.1"
    port: int = option(5000, minimum=0, maximum=65535)  # 0: any free port
    workers: int = option(0, minimum=0, maximum=MAX_WORKERS)
    threads: int = option(1, minimum=1, maximum=MAX_THREADS)
    model: Path | None = None
    backend: str = option("torch", choices=("torch", "onnx"))
    tta: bool = option(False)  # test-time augmentation: five forward passes per image
    max_request_bytes: int = option(MAX_UPLOAD_BYTES, minimum=1)
    connection_limit: int = option(500, minimum=1)
    header_timeout_s: float = option(10.0, above=0.0)
    grace_s: float = option(30.0, minimum=0.0)

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


# --------------------------------------------------------------------------- balance


class _Balance:
    """Least-connections hand-out between the workers that share one listening socket.

    Shared memory (created before forking) holds each worker's number of open connections,
    or ``ABSENT`` for a slot whose worker is dead, draining or not started yet. A worker
    listens while its count is the smallest. Its own count changes only on its own event
    loop, which re-decides each turn; another worker's count rises only when that worker
    accepts a connection, and then it wakes (through this slot's pipe) every worker that
    may now be the least loaded, so a worker never waits out a poll timeout while it should
    be listening. A dead or draining worker's slot becomes ``ABSENT`` and wakes them all.
    """

    ABSENT = 2**31 - 1

    def __init__(self, workers: int) -> None:
        self.counts = RawArray(ctypes.c_int, [self.ABSENT] * workers)
        self.pipes = [os.pipe() for _ in range(workers)]
        for read_end, write_end in self.pipes:
            os.set_blocking(read_end, False)
            os.set_blocking(write_end, False)

    def wake(self, slot: int) -> None:
        with contextlib.suppress(OSError):  # a full pipe: a wake-up is pending already
            os.write(self.pipes[slot][1], b"\0")

    def wake_others(self, slot: int, at_most: int | None = None) -> None:
        """Wake the other live workers (with ``at_most``: those with no more connections)."""
        for other, count in enumerate(self.counts):
            if other != slot and count != self.ABSENT and (at_most is None or count <= at_most):
                self.wake(other)

    def leave(self, slot: int) -> None:
        """The worker in ``slot`` takes no more connections (draining, dead)."""
        self.counts[slot] = self.ABSENT
        self.wake_others(slot)

    def overloaded(self, slot: int) -> bool:
        """Whether this worker has more connections than the least loaded one, by more
        than the slack: its keep-alive clients should reconnect elsewhere."""
        return self.counts[slot] > min(self.counts) + REBALANCE_SLACK

    def install(self, server: Any, slot: int) -> None:
        """Make a waitress server accept connections only when it is among the least loaded."""
        from waitress import wasyncore

        accepting = server.readable
        accept = server.handle_accept
        counts = self.counts
        counts[slot] = len(server.active_channels)

        def readable() -> bool:
            mine = len(server.active_channels)
            counts[slot] = mine
            return bool(accepting()) and mine <= min(counts)

        def handle_accept() -> None:
            accept()
            mine = len(server.active_channels)
            counts[slot] = mine
            # Those with as many connections as this one now has may be the least loaded.
            self.wake_others(slot, at_most=mine)

        # waitress asks its listening dispatcher readable() before every poll.
        server.readable = readable
        server.handle_accept = handle_accept

        class Waker(wasyncore.file_dispatcher):
            def readable(self) -> bool:
                return True

            def writable(self) -> bool:
                return False

            def handle_read(self) -> None:
                with contextlib.suppress(OSError):
                    self.recv(4096)  # the wake-up itself is all that matters

        Waker(self.pipes[slot][0], map=server._map)
        self.wake_others(slot)  # a new worker (count 0): the others re-decide


# --------------------------------------------------------------------------- waitress


def _json_error(code: str, message: str) -> bytes:
    """The body of an error, as the API writes it."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


# Codes of the errors waitress answers itself, as the API names them.
_WAITRESS_CODES = {
    400: "bad_request",
    408: "request_timeout",
    413: "too_large",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


@functools.cache
def _waitress_classes() -> tuple[type, type, type]:
    """waitress's channel and task classes, as this server needs them (built on first use:
    waitress is the web extra's, imported only by a server that runs)."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask, WSGITask
    from waitress.utilities import RequestEntityTooLarge

    from mnist_cnn.web.errors import human_size

    class JsonErrorTask(ErrorTask):
        """waitress's own refusals (malformed request, body or headers too large) as the
        API's JSON errors rather than text/plain."""

        def execute(self) -> None:
            error = self.request.error
            code = _WAITRESS_CODES.get(error.code, f"http_{error.code}")
            message = str(error.body)
            if isinstance(error, RequestEntityTooLarge):
                limit = human_size(self.channel.server.worker.config.max_request_bytes)
                message = f"the request is larger than the limit of {limit}; send a smaller image"
            body = _json_error(code, message)
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Task(WSGITask):
        def build_response_header(self) -> bytes:
            # While draining or when overloaded, the client is told to reconnect: no
            # keep-alive connection outlives its answer.
            worker = self.channel.server.worker
            if worker.draining or worker.overloaded():
                self.set_close_on_finish()
            return super().build_response_header()

    class Channel(HTTPChannel):
        """A connection with deadlines (headers, body, idle) and a lingering close."""

        task_class = Task
        error_task_class = JsonErrorTask

        def __init__(
            self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None
        ) -> None:
            # Waiting for the first request's headers since now.
            self.began: float | None = time.monotonic()
            self.body_deadline: float | None = None
            self.linger_after = False
            self.linger_until: float | None = None
            self.linger_last = 0.0
            self.linger_left = 0
            super().__init__(server, sock, addr, adj, map)

        # -- deadlines
        def received(self, data: bytes) -> bool:
            before = self.request
            result = super().received(data)
            now = time.monotonic()
            if self.request is None:
                self.began = self.body_deadline = None
            elif self.request is not before:
                self.began, self.body_deadline = now, None
            request = self.request
            if request is not None and request.headers_finished and self.body_deadline is None:
                length = request.content_length or self.adj.max_request_body_size
                self.body_deadline = now + BODY_TIMEOUT_S + length / BODY_MIN_RATE
            return result

        def police(self, now: float, wall: float, header_timeout: float) -> None:
            """Close this connection if it is past a deadline (called by the event loop)."""
            if self.linger_until is not None:
                if now > self.linger_until or now - self.linger_last > LINGER_IDLE_S:
                    self.really_close()
                return
            if self.requests or self.will_close or self.close_when_flushed:
                return  # being answered
            request = self.request
            if request is None:  # waiting for a request: new, or kept alive after one
                if self.server.worker.draining:
                    idle = now - self.began if self.began is not None else wall - self.last_activity
                    if idle > DRAIN_IDLE_S:
                        self.will_close = True
                elif self.began is not None and now - self.began > header_timeout:
                    self.will_close = True  # connected, and sent nothing in time
                return
            if not request.headers_finished:
                if now - (self.began or now) > header_timeout:
                    self.time_out("the request's headers did not arrive in time")
            elif self.body_deadline is not None and now > self.body_deadline:
                self.time_out("the request's body did not arrive in time")

        def time_out(self, message: str) -> None:
            """Answer 408 to the request being received, and close."""
            body = _json_error("request_timeout", message)
            head = (
                "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            with self.outbuf_lock:
                self.outbufs[-1].append(head + body)
                self.total_outbufs_len += len(head) + len(body)
            self.request = None
            self.close_when_flushed = True

        # -- lingering close after a refused body
        def service(self) -> None:
            if self.requests and isinstance(self.requests[0].error, RequestEntityTooLarge):
                self.linger_after = True
            super().service()

        def readable(self) -> bool:
            return self.linger_until is not None or super().readable()

        def writable(self) -> bool:
            return self.linger_until is None and super().writable()

        def handle_read(self) -> None:
            if self.linger_until is None:
                super().handle_read()
                return
            data = self.recv(256 * 1024)  # on EOF or an error, recv closes the channel
            self.linger_last = time.monotonic()
            self.linger_left -= len(data)
            if self.linger_left < 0:
                self.really_close()

        def handle_close(self) -> None:
            if self.linger_after and self.linger_until is None and self.connected:
                # The answer is out: stop sending, keep reading what the client still sends.
                self.linger_after = False
                self.will_close = False
                try:
                    self.socket.shutdown(socket.SHUT_WR)
                except OSError:
                    self.really_close()
                    return
                self.linger_last = time.monotonic()
                self.linger_until = self.linger_last + LINGER_S
                self.linger_left = LINGER_BYTES
                return
            self.really_close()

        def really_close(self) -> None:
            self.linger_until = None
            self.linger_after = False
            super().handle_close()

    return Channel, Task, JsonErrorTask


# --------------------------------------------------------------------------- memory


def _resident_mb() -> float:
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on other C libraries."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class _MemoryGuard:
    """After each request: return freed memory to the system when the worker has grown, and
    ask for the worker to be replaced when that is not enough."""

    def __init__(self, recycle: Callable[[], None]) -> None:
        self.start = self.floor = _resident_mb()
        self.recycle = recycle
        self.lock = threading.Lock()

    def check(self) -> None:
        resident = _resident_mb()
        if resident <= self.floor + TRIM_STEP_MB:
            return
        trim = _malloc_trim()
        with self.lock:  # one trim at a time, when there are several request threads
            if trim is not None:
                trim(0)
            after = _resident_mb()
            log.info(
                "worker %d: memory %.0f MB -> %.0f MB after trimming", os.getpid(), resident, after
            )
            self.floor = after
            if after > self.start + RECYCLE_ABOVE_MB:
                log.warning(
                    "worker %d keeps %.0f MB more than at start: replacing it",
                    os.getpid(),
                    after - self.start,
                )
                self.recycle()


# --------------------------------------------------------------------------- a worker


class _Worker:
    """One waitress server with its event loop, its deadlines, memory checks and draining."""

    def __init__(
        self,
        app: Flask,
        sock: socket.socket,
        config: ServeConfig,
        balance: _Balance | None = None,
        slot: int = 0,
    ) -> None:
        import waitress
        from waitress import wasyncore

        self.app = app
        self.config = config
        self.balance = balance
        self.slot = slot
        self.draining = False
        self.stop_requests = 0
        self.exit_status = 0
        self.drain_deadline = 0.0
        self.wasyncore = wasyncore
        self.memory = _MemoryGuard(self.recycle)
        self.requests = 0
        # Request threads added while large images are decoded (``step_aside``).
        self.threads_lock = threading.Lock()
        self.extra_threads = 0
        self.stopped = False
        channel, _, _ = _waitress_classes()
        self.server = waitress.create_server(
            self.wsgi,
            sockets=[sock],
            threads=config.threads,
            max_request_body_size=config.max_request_bytes + MULTIPART_SLACK,
            max_request_header_size=MAX_HEADER_BYTES,
            inbuf_overflow=INBUF_BYTES,
            channel_timeout=IDLE_TIMEOUT_S,
            cleanup_interval=5,
            # waitress counts its listening socket, its trigger and our wake-up pipe too.
            connection_limit=config.connection_limit + 3,
            # poll, not select: select cannot watch a descriptor numbered 1024 or more.
            asyncore_use_poll=True,
            ident="mnist-cnn",
        )
        self.server.channel_class = channel
        self.server.worker = self
        if balance is not None:
            balance.install(self.server, slot)

    # -- the WSGI app, with the memory check after large decodes and every so often
    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[STEP_ASIDE] = functools.partial(self.step_aside, environ)
        try:
            return self.app(environ, start_response)
        finally:
            self.requests += 1  # a race between request threads only shifts a check
            if environ.get(_STEPPED_ASIDE) or self.requests % MEMORY_CHECK_EVERY == 0:
                self.memory.check()

    @contextlib.contextmanager
    def step_aside(self, environ: dict[str, Any]) -> Iterator[None]:
        """While a request waits for a large-decode slot and decodes (seconds, for a 40 MP
        image), waitress gets one more request thread, so that the worker's other requests
        do not queue behind it; the thread goes when the decode is done. The web app
        bounds how many requests step aside at once (its slots and waiters)."""
        environ[_STEPPED_ASIDE] = True
        self._add_threads(1)
        try:
            yield
        finally:
            self._add_threads(-1)

    def _add_threads(self, change: int) -> None:
        with self.threads_lock:
            self.extra_threads += change
            if not self.stopped:
                count = self.config.threads + self.extra_threads
                self.server.task_dispatcher.set_thread_count(count)

    def overloaded(self) -> bool:
        return self.balance is not None and self.balance.overloaded(self.slot)

    # -- stopping
    def request_stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        """Signal handler: drain (the first time), stop now (the second)."""
        self.stop_requests += 1
        with contextlib.suppress(OSError):
            self.server.pull_trigger()  # wake the event loop

    def recycle(self) -> None:
        self.exit_status = RECYCLE_EXIT
        self.request_stop()

    def _start_draining(self, now: float) -> None:
        self.draining = True
        self.drain_deadline = now + self.config.grace_s
        server = self.server
        # Take the connections already queued for us, then stop listening.
        while True:
            try:
                pair = server.accept()
            except OSError:
                break
            if pair is None:
                break
            conn, addr = pair
            server.channel_class(server, conn, server.fix_addr(addr), server.adj, map=server._map)
        if self.balance is not None:
            self.balance.leave(self.slot)
        # Closes this process's copy of the listening socket (the trigger stays: the request
        # threads wake the loop through it).
        self.wasyncore.dispatcher.close(server)
        busy = sum(1 for c in server.active_channels.values() if c.requests or c.request)
        log.info(
            "worker %d: draining %d connection%s (%d busy), up to %g s",
            os.getpid(),
            len(server.active_channels),
            "" if len(server.active_channels) == 1 else "s",
            busy,
            self.config.grace_s,
        )

    # -- the event loop
    def run(self) -> int:
        """Serve until drained after a stop request; returns the exit status."""
        server = self.server
        poll = self.wasyncore.poll2
        socket_map = server._map
        next_police = 0.0
        header_timeout = self.config.header_timeout_s
        while True:
            poll(POLICE_INTERVAL_S, socket_map)
            now = time.monotonic()
            if self.stop_requests and not self.draining:
                self._start_draining(now)
            if now >= next_police or self.draining:
                next_police = now + POLICE_INTERVAL_S
                wall = time.time()
                for channel in list(server.active_channels.values()):
                    channel.police(now, wall, header_timeout)
            if self.draining:
                if not server.active_channels:
                    break
                if now >= self.drain_deadline or self.stop_requests > 1:
                    log.warning(
                        "worker %d: %d connection%s still open after the grace period: "
                        "closing them",
                        os.getpid(),
                        len(server.active_channels),
                        "" if len(server.active_channels) == 1 else "s",
                    )
                    break
        with self.threads_lock:
            self.stopped = True
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        self.wasyncore.close_all(socket_map)
        return self.exit_status


# --------------------------------------------------------------------------- processes


def _die_with_parent(parent: int) -> None:
    """End this worker when the supervisor dies, even by SIGKILL: an orphaned worker would
    keep the port and serve on, unsupervised. Linux says so with PR_SET_PDEATHSIG (SIGTERM:
    the worker drains what it has, then exits)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


@dataclass
class _Slot:
    """One worker's place: its process, when it started, its deaths in a row, and when a
    replacement is due."""

    pid: int | None = None
    started: float = 0.0
    streak: int = 0
    due: float = 0.0


def _start_worker(
    app: Flask,
    sock: socket.socket,
    config: ServeConfig,
    balance: _Balance,
    slot: int,
    parent_fds: tuple[int, ...],
) -> int:
    """Fork a worker that serves until it is stopped; returns its pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # In the worker. Ctrl-C reaches the whole process group; the parent decides what
    # happens, and it stops the workers with SIGTERM.
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in parent_fds:
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent(parent)
        worker = _Worker(app, sock, config, balance, slot)
        signal.signal(signal.SIGTERM, worker.request_stop)
        status = worker.run()
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        status = 1
    finally:
        # Never return into the parent's code (or run its atexit handlers) from a child.
        logging.shutdown()
        os._exit(status)
    return 0  # unreachable


def _describe(status: int) -> str:
    """How a process ended, from its wait status: "status 1", "killed by SIGKILL"."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"status {code}"


def _supervise(app: Flask, sock: socket.socket, config: ServeConfig) -> None:
    """Fork the workers, replace any that dies (always, with backoff), drain them all on
    SIGINT or SIGTERM."""
    balance = _Balance(config.workers)
    slots = [_Slot() for _ in range(config.workers)]
    requests = {"stop": 0}
    # Signals and dead children wake the loop below through this pipe.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)

    def on_stop(signum: int, frame: object) -> None:
        requests["stop"] += 1

    def on_child(signum: int, frame: object) -> None:
        pass  # the wake-up fd has done the work

    previous = {
        signum: signal.signal(signum, handler)
        for signum, handler in (
            (signal.SIGTERM, on_stop),
            (signal.SIGINT, on_stop),
            (signal.SIGCHLD, on_child),
        )
    }
    previous_wakeup = signal.set_wakeup_fd(wake_write)
    # Move every object created so far (the model, torch, Flask) out of the garbage
    # collector's reach: a collection in a worker would otherwise write to all of them and
    # copy-on-write would duplicate memory the workers could share.
    gc.collect()
    gc.freeze()

    def start(slot: int) -> None:
        pid = _start_worker(app, sock, config, balance, slot, (wake_read, wake_write))
        slots[slot].pid, slots[slot].started = pid, time.monotonic()

    def reaped(pid: int, status: int, stopping: bool) -> None:
        slot = next((i for i, s in enumerate(slots) if s.pid == pid), None)
        if slot is None:
            return
        entry = slots[slot]
        entry.pid = None
        balance.leave(slot)
        now = time.monotonic()
        if stopping:
            return
        if os.waitstatus_to_exitcode(status) == RECYCLE_EXIT:
            log.info("worker %d left to be replaced: starting another", pid)
            entry.streak, entry.due = 0, now
            return
        lived = now - entry.started
        entry.streak = entry.streak + 1 if lived < QUICK_DEATH_S else 1
        delay = (
            0.0
            if entry.streak <= 1
            else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (entry.streak - 2))
        )
        entry.due = now + delay
        log.error(
            "worker %d exited (%s) after %.1f s; %s",
            pid,
            _describe(status),
            lived,
            f"replacing it in {delay:.1f} s ({entry.streak} quick deaths in a row)"
            if delay
            else "replacing it",
        )

    try:
        for slot in range(config.workers):
            start(slot)
        stopping = False
        kill_at = 0.0
        killed = False
        while True:
            while True:  # reap every worker that has exited
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid = 0
                if not pid:
                    break
                reaped(pid, status, stopping)
            now = time.monotonic()
            alive = [s.pid for s in slots if s.pid is not None]
            if requests["stop"] and not stopping:
                stopping = True
                # The workers close their copies of the listening socket once they have
                # taken what is queued; with this one closed too, new connections are
                # refused instead of waiting in a backlog that nobody reads.
                sock.close()
                kill_at = now + config.grace_s + 5.0
                log.info(
                    "stopping: the workers finish the requests in flight (up to %g s)",
                    config.grace_s,
                )
                for pid in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            if stopping:
                if not alive:
                    break
                if not killed and (requests["stop"] > 1 or now >= kill_at):
                    killed = True
                    log.warning("stopping now: %d worker(s) killed", len(alive))
                    for pid in alive:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                timeout = 0.5
            else:
                for slot, entry in enumerate(slots):
                    if entry.pid is None and entry.due <= now:
                        try:
                            start(slot)
                        except OSError as exc:  # fork failed: no memory, too many processes
                            entry.due = now + BACKOFF_MAX_S
                            log.error("cannot start a worker (%s): trying again later", exc)
                            continue
                        log.info("worker %d started", slots[slot].pid)
                waiting = [s.due - now for s in slots if s.pid is None]
                timeout = max(0.0, min([5.0, *waiting]))
            with contextlib.suppress(InterruptedError):
                select.select([wake_read], [], [], timeout)
            with contextlib.suppress(OSError):
                while os.read(wake_read, 4096):
                    pass
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(wake_read)
        os.close(wake_write)


def _one_thread_per_worker() -> None:
    # Process-wide, hence here and not in the library: parallelism comes from the worker
    # processes, so each has one intra-op thread for torch and one for OpenCV (whose pool
    # would otherwise start a thread per core in every worker).
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _descriptors_for(config: ServeConfig) -> ServeConfig:
    """Raise this process's open-file limit to what ``connection_limit`` needs (the server
    owns its process), or lower the limit to what the system allows."""
    try:
        import resource
    except ImportError:  # not POSIX
        return config
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = config.connection_limit + 256  # model files, pipes, temporary body files
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = max(16, soft - 256)
        log.warning(
            "the open-file limit (%d) allows %d connections per worker, not %d",
            soft,
            limit,
            config.connection_limit,
        )
        return dataclasses.replace(config, connection_limit=limit)
    return config


def serve(config: ServeConfig) -> None:
    """Load the model, listen, and serve until SIGINT or SIGTERM (then drain).

    Raises ``ServerError`` (cannot listen, bad settings) and
    ``mnist_cnn.checkpoint.CheckpointError`` (the model cannot be loaded).
    """
    if config.workers > 1 and not hasattr(os, "fork"):
        log.warning("this system cannot fork worker processes: serving with one")
    problems = config_problems(config)  # what the command line checks as it parses
    if problems:
        raise ServerError("; ".join(problems))
    config = config.resolved()
    # Load the model before listening: a broken checkpoint fails here, with its message,
    # and the workers forked below inherit the loaded model.
    # The server owns its process: one torch and one OpenCV thread, before the model loads
    # and before any fork (see the module docstring).
    _one_thread_per_worker()
    config = _descriptors_for(config)
    app = create_app(
        WebConfig(
            model_path=config.model,
            backend=config.backend,
            tta=config.tta,
            max_upload_bytes=config.max_request_bytes,
        )
    )
    # One forward pass now, in the parent: PyTorch's lazy initialisation (kernel selection,
    # buffers) then happens once, and no worker's first user waits for it.
    state(app).predictor.predict_inputs(np.zeros((1, 28, 28), np.uint8))
    # What loading freed (the file's bytes, the checks' temporaries) goes back to the system
    # before the workers fork: pages they would otherwise inherit and each count.
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    summary = state(app).model_summary
    sock = listening_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving http://%s:%d with %d worker%s x %d thread%s (1 torch thread each), "
        "model %s (%s), request limit %g MB, up to %d connections per worker",
        shown,
        port,
        config.workers,
        "s" if config.workers > 1 else "",
        config.threads,
        "s" if config.threads > 1 else "",
        summary["file"],
        summary["description"],
        config.max_request_bytes / 1024 / 1024,
        config.connection_limit,
    )
    try:
        if config.workers == 1:
            worker = _Worker(app, sock, config)
            previous = {}
            if threading.current_thread() is threading.main_thread():
                # SIGTERM (a service manager, `kill`) and Ctrl-C drain; a second one stops.
                for signum in (signal.SIGTERM, signal.SIGINT):
                    previous[signum] = signal.signal(signum, worker.request_stop)
            try:
                worker.run()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        else:
            _supervise(app, sock, config)
    finally:
        sock.close()
