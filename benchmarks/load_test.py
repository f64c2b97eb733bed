"""Load test of the production server: predictions per second, latency, errors, memory.

    python benchmarks/load_test.py                      # 60 s at concurrency 8, MNIST digits
    python benchmarks/load_test.py --duration 10        # a quick look
    python benchmarks/load_test.py --payload canvas     # what the page's drawing pad sends
    python benchmarks/load_test.py --workers 1 --threads 4   # another server setup
    python benchmarks/load_test.py --duration 20 --slow-clients 150 --reconnect 10
    python benchmarks/load_test.py --duration 20 --bombs 4
    python benchmarks/load_test.py --duration 20 --kill-worker
    python benchmarks/load_test.py --duration 10 --sigterm

It starts ``mnist-cnn serve`` on a free port of 127.0.0.1 (nothing else is contacted), waits
until ``/api/health`` answers, warms it up, then keeps ``--concurrency`` clients busy for
``--duration`` seconds. Each client is a keep-alive connection (raw sockets multiplexed by
one thread: the load generator shares the CPU with the server and must cost it little) that
posts one image per request (``POST /api/predict``, multipart, as a browser upload does)
and checks the answer: any status but 200, a malformed body or a failed connection is an
error. The server's memory is measured over all its processes, three ways: every physical
page counted once, at the end of the run (from /proc/<pid>/pagemap; needs root), which is
what the server costs a machine that runs nothing else and the figure held against the
target; the peak of the summed PSS (proportional set size: a page shared by n processes
counts 1/n in each; lower than the former when other programs map the same libraries), the
fallback without root; and the peak of the summed RSS, which counts the pages the forked
workers share once per process. The CPU time that the server and the load generator spend
per prediction is reported too.

Payloads are real MNIST test digits, so the answers can be checked too: the table reports
how many were right. ``--payload mnist`` uploads them as 28x28 PNGs; ``--payload canvas``
draws each one 10x larger (280x280, white on black) and posts it as the page's drawing pad
does, a PNG data URL in JSON (preprocessing the larger image costs more). The load generator
runs on the same machine as the server and takes some of its CPU, so the figures are a lower
bound for a dedicated host.

Attacks and failures (issue 11). With any of these, the measured time is split: normal load
alone for ``--baseline`` seconds (a quarter of it by default), then with the attack, and a
first table shows what the attack did to the normal requests (rate, p50, p99, max, errors,
requests dropped, peak memory), a second the attack's own figures against its target:

- ``--slow-clients N``: N slowloris connections, each sending one more header byte every
  ``--slow-interval`` s and never finishing; reopened as soon as the server closes one.
  Target: normal requests keep p99 <= 100 ms, no errors. With ``--reconnect 10`` the
  normal clients open new connections too (slowloris used to stall exactly those).
- ``--bombs N``: N clients posting a 170 kB PNG of 6300x6300 RGBA pixels (40 MP, under the
  pixel cap; the mode that costs the most to decode), one after another. Memory is sampled
  4 times a second. Target: the server (PSS summed over its processes) stays under 1.5 GB
  and answers the normal requests.
- ``--kill-worker``: SIGKILL a worker every ``--kill-interval`` s. Target: under 0.5% of
  the normal requests fail (those in flight on the killed worker are lost).
- ``--sigterm``: SIGTERM the server. Target: no request dropped (sent and never answered)
  and exit status 0; clients that find the server gone afterwards are counted apart.

A request whose connection closes (or that gets no answer in 30 s) is "dropped"; the
clients honour ``Connection: close`` by reconnecting, as HTTP clients do.

Prints markdown tables; exits with status 1 when a target is missed with ``--check``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
# The server start-up and request bodies of the web tests (tests/_web_fixtures.py, which
# needs no pytest): the benchmark starts the server exactly as they do.
sys.path.insert(0, str(REPO / "tests"))

from _web_fixtures import (  # noqa: E402
    Server,
    bomb_png,
    data_url,
    multipart,
    png_bytes,
    running_server,
    worker_pids,
)

from mnist_cnn import data  # noqa: E402

# The targets for the production server on a 2-core machine.
TARGET_RATE = 300.0  # predictions per second at concurrency 8
TARGET_P99_MS = 50.0
TARGET_MEMORY_MB = 300.0
# ... and under attack (issue 11).
TARGET_SLOW_P99_MS = 100.0  # normal requests, with --slow-clients 150
TARGET_BOMB_MEMORY_MB = 1500.0  # the whole server, with --bombs 4
TARGET_KILL_ERROR_RATE = 0.005  # normal requests failed, with --kill-worker


@dataclass
class ClientStats:
    """What the clients saw: one record per request, (sent at, latency in ms, outcome)."""

    records: list[tuple[float, float, int]] = field(default_factory=list)
    error_examples: list[str] = field(default_factory=list)
    # Clients that could not connect any more (the server has stopped: --sigterm).
    refused: int = 0
    # CPU time of the load-generating thread when the measured window opened and closed.
    cpu_window: list[float] = field(default_factory=list)

    def add(self, sent_at: float, ms: float, outcome: int, problem: str | None = None) -> None:
        self.records.append((sent_at, ms, outcome))
        if outcome >= ERROR and problem and len(self.error_examples) < 3:
            self.error_examples.append(problem)


# Outcomes of a request: answered 200 with the right digit, 200 with another, an HTTP error
# status or a malformed answer, and dropped: sent, and the connection ended (or 30 s
# passed) without an answer.
RIGHT, WRONG, ERROR, DROPPED = 0, 1, 2, 3


@dataclass
class Phase:
    """The normal requests that ended in [begin, end) and the server's memory meanwhile."""

    name: str
    begin: float
    end: float
    last: bool = False  # also takes the requests that ended after ``end``
    peak_rss: float = 0.0
    peak_pss: float = 0.0

    def records(self, stats: ClientStats) -> list[tuple[float, float, int]]:
        """The requests that ended (answered or not) in this phase: those in flight when
        an attack begins are its, such as the requests a killed worker held."""
        end = math.inf if self.last else self.end
        return [r for r in stats.records if self.begin <= r[0] + r[1] / 1000 < end]


def make_payloads(kind: str, count: int) -> list[tuple[bytes, int]]:
    """``count`` MNIST test digits as PNG files, with their labels."""
    test = data.load_split("test")
    rng = np.random.default_rng(0)
    out = []
    for i in rng.choice(len(test.labels), size=count, replace=False):
        image = np.asarray(test.images[int(i)], dtype=np.uint8)
        pil = Image.fromarray(image, mode="L")
        if kind == "canvas":
            pil = pil.resize((280, 280), Image.Resampling.BILINEAR)
        out.append((png_bytes(pil), int(test.labels[int(i)])))
    return out


def canvas_json(png: bytes) -> bytes:
    """A JSON body ``{"image": "data:image/png;base64,..."}``, as the drawing pad sends."""
    return json.dumps({"image": data_url(png)}).encode()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of live processes, from /proc/<pid>/stat."""
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(summed RSS, summed PSS) in MB of the processes ``pids``."""
    rss = pss = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def distinct_memory_mb(pids: list[int]) -> float | None:
    """Physical memory of the processes ``pids`` with every page counted once, in MB.

    Reads each mapping's page frame numbers from /proc/<pid>/pagemap; a page shared by the
    forked workers (or with any other process) counts once. Needs root (without it the
    kernel hides the frame numbers): None then.
    """
    frames = []
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
                for line in maps:
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    if start >= 1 << 47:  # [vsyscall]: not readable through pagemap
                        continue
                    pagemap.seek(start // 4096 * 8)
                    entries = np.frombuffer(pagemap.read((end - start) // 4096 * 8), "<u8")
                    present = entries[(entries >> np.uint64(63)) == 1]
                    frames.append(present & np.uint64((1 << 55) - 1))
        except OSError:
            continue
    if not frames:
        return None
    unique = np.unique(np.concatenate(frames))
    if unique.size == 1 and unique[0] == 0:
        return None  # frame numbers hidden: not root
    return unique.size * 4096 / 1024 / 1024


def server_options(args: argparse.Namespace) -> list[str]:
    """The options of ``mnist-cnn serve`` that the command line sets (else serve's own)."""
    options = []
    for option in ("workers", "threads", "model"):
        value = getattr(args, option)
        if value is not None:
            options += [f"--{option}", str(value)]
    return options


def build_request(port: int, body: bytes, content_type: str) -> bytes:
    """The bytes of ``POST /api/predict`` with ``body``."""
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class Client:
    """One keep-alive connection that sends a request as soon as the previous one is answered.

    A raw socket rather than ``http.client`` (which parses headers with the ``email``
    package): the load generator shares the CPU with the server, so what it spends is taken
    from what is measured. Responses are read by their Content-Length; after an answer with
    ``Connection: close`` the client reconnects, as HTTP clients do.
    """

    def __init__(self, port: int, requests: list[tuple[bytes, int]], start: int) -> None:
        self.port = port
        self.requests = requests
        self.index = start
        self.sock = self._connect()
        self.buffer = b""
        self.label = -1
        self.started = 0.0
        self.sent_at = 0.0
        self.waiting = False  # a request is out and its answer not complete
        self.close_after = False
        self.answered = 0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send(self) -> None:
        request, self.label = self.requests[self.index % len(self.requests)]
        self.index += 1
        self.buffer = b""
        self.close_after = False
        self.sent_at = time.monotonic()
        self.started = time.perf_counter()
        self.waiting = True
        self.sock.sendall(request)

    def receive(self) -> tuple[int, bytes] | None:
        """Read what arrived; the (status, body) once the response is complete."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection without an answer")
        self.buffer += chunk
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        lines = self.buffer[:head_end].split(b"\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in lines[1:])
        }
        length = int(headers[b"content-length"])
        if len(self.buffer) < head_end + 4 + length:
            return None
        self.waiting = False
        self.close_after = headers.get(b"connection", b"").lower() == b"close"
        return int(lines[0].split()[1]), self.buffer[head_end + 4 : head_end + 4 + length]

    def reconnect(self) -> None:
        self.sock.close()
        self.waiting = False
        self.sock = self._connect()


def _answer(client: Client, overdue: bool) -> tuple[int, str | None] | None:
    """The outcome of ``client``'s request once it is settled (None: not yet)."""
    try:
        if overdue:
            raise TimeoutError("no answer within 30 s")
        answer = client.receive()
        if answer is None:
            return None
        status, body = answer
        if status != 200:
            return ERROR, f"HTTP {status}: {body[:200]!r}"
        return (RIGHT if json.loads(body)["digit"] == client.label else WRONG), None
    except (ValueError, KeyError, IndexError) as exc:
        client.close_after = True
        return ERROR, f"{type(exc).__name__}: {exc}"
    except OSError as exc:  # reset, closed, timed out: the request got no answer
        client.close_after = True
        return DROPPED, f"{type(exc).__name__}: {exc}"


def run_clients(
    port: int,
    payloads: list[tuple[bytes, str, int]],
    concurrency: int,
    record_from: float,
    stop_at: float,
    stats: ClientStats,
    reconnect: int = 0,
) -> None:
    """Keep ``concurrency`` requests in flight until ``stop_at``, from one thread.

    One thread multiplexes every connection with ``selectors``: threads would contend for
    the GIL and cost the shared CPU more. Answers to requests sent after ``record_from`` are
    recorded (before it: warm-up). With ``reconnect``, a client opens a new connection
    after that many requests (as browsers do), so that accepting connections is measured
    too. A client that cannot connect any more (the server has stopped) retires.
    """
    requests = [(build_request(port, body, kind), label) for body, kind, label in payloads]
    selector = selectors.DefaultSelector()
    for k in range(concurrency):
        client = Client(port, requests, start=k * 997)
        selector.register(client.sock, selectors.EVENT_READ, client)
        client.send()
    next_overdue_check = time.monotonic() + 1.0
    while selector.get_map():
        now = time.monotonic()
        if (not stats.cpu_window and now >= record_from) or (
            len(stats.cpu_window) == 1 and now >= stop_at
        ):
            stats.cpu_window.append(time.thread_time())
        ready = [(key, False) for key, _ in selector.select(timeout=0.5)]
        if now >= next_overdue_check:
            # An answer overdue by 30 s counts as dropped: the server lost the request.
            next_overdue_check = now + 1.0
            ready += [
                (key, True)
                for key in list(selector.get_map().values())
                if key.data.waiting and now - key.data.sent_at > 30
            ]
        for key, overdue in ready:
            client = key.data
            if not client.waiting:
                continue
            settled = _answer(client, overdue)
            if settled is None:
                continue
            outcome, problem = settled
            client.answered += 1
            if reconnect and client.answered % reconnect == 0:
                client.close_after = True
            if client.sent_at >= record_from:
                elapsed_ms = 1000 * (time.perf_counter() - client.started)
                stats.add(client.sent_at, elapsed_ms, outcome, problem)
            if time.monotonic() >= stop_at:
                selector.unregister(client.sock)
                client.sock.close()
                continue
            try:
                if client.close_after:
                    selector.unregister(client.sock)
                    client.reconnect()
                    selector.register(client.sock, selectors.EVENT_READ, client)
                client.send()
            except OSError:  # refused or reset at once: the server is not there any more
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(client.sock)
                client.sock.close()
                stats.refused += 1


# --------------------------------------------------------------------------- attacks


class SlowClients(threading.Thread):
    """``count`` slowloris connections: each sends the start of a request, then one more
    header byte every ``interval`` seconds, never finishing it. One that the server closes
    is opened again at once, so ``count`` stay connected as far as the server lets them."""

    def __init__(self, port: int, count: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.interval = port, count, interval
        self.stop = threading.Event()
        self.opened = self.closed_by_server = self.failed = 0
        self.open_samples: list[int] = []

    def _closed(self, sock: socket.socket) -> bool:
        try:
            sock.recv(4096, socket.MSG_PEEK)  # EOF, or the server's 408
        except BlockingIOError:
            return False
        except OSError:
            pass
        return True

    def run(self) -> None:
        rng = np.random.default_rng(0)
        due: dict[socket.socket, float] = {}
        while not self.stop.is_set():
            now = time.monotonic()
            while len(due) < self.count and not self.stop.is_set():
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                except OSError:
                    self.failed += 1
                    break
                sock.setblocking(False)
                self.opened += 1
                due[sock] = now + self.interval * rng.random()  # spread over the interval
            for sock, when in list(due.items()):
                gone = self._closed(sock)
                if not gone and when <= now:
                    try:
                        sock.send(b"a")
                        due[sock] = now + self.interval
                    except BlockingIOError:
                        pass
                    except OSError:
                        gone = True
                if gone:
                    self.closed_by_server += 1
                    sock.close()
                    del due[sock]
            self.open_samples.append(len(due))
            self.stop.wait(0.1)
        for sock in due:
            sock.close()


class BombClients:
    """``count`` clients, each posting a 40 MP PNG (``bomb_png``) again and again on a
    keep-alive connection from its own thread; what they were answered is counted."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.body, self.content_type = multipart(bomb_png())
        self.stop = threading.Event()
        self.statuses: dict[str, int] = {}
        self.latencies_ms: list[float] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(count)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        connection = None
        while not self.stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            started = time.perf_counter()
            try:
                connection.request(
                    "POST", "/api/predict", self.body, {"Content-Type": self.content_type}
                )
                response = connection.getresponse()
                response.read()
                outcome = str(response.status)
                if (response.getheader("Connection") or "").lower() == "close":
                    connection.close()
                    connection = None
            except OSError as exc:
                outcome = type(exc).__name__
                connection.close()
                connection = None
                self.stop.wait(0.1)
            with self.lock:
                self.statuses[outcome] = self.statuses.get(outcome, 0) + 1
                self.latencies_ms.append(1000 * (time.perf_counter() - started))
        if connection is not None:
            connection.close()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def phase_rows(phases: list[Phase], stats: ClientStats) -> list[str]:
    """Markdown rows: the normal requests of each phase, side by side."""
    cells: dict[str, list[str]] = {}
    for phase in phases:
        records = phase.records(stats)
        latencies = [ms for _, ms, _ in records]
        outcomes = [o for _, _, o in records]
        answered = sum(o <= WRONG for o in outcomes)
        errors = sum(o >= ERROR for o in outcomes)
        seconds = max(1e-9, phase.end - phase.begin)
        rows = {
            "answered per second": f"{answered / seconds:.0f}",
            "latency p50": f"{percentile(latencies, 50):.1f} ms",
            "latency p99": f"{percentile(latencies, 99):.1f} ms",
            "latency max": f"{max(latencies, default=float('nan')):.1f} ms",
            "requests / errors": f"{len(records)} / {errors}",
            "error rate": f"{100 * errors / max(1, len(records)):.2f}%",
            "of which dropped (sent, never answered)": f"{outcomes.count(DROPPED)}",
            "server memory, peak PSS summed over processes": f"{phase.peak_pss:.0f} MB",
            "server memory, peak RSS summed over processes": f"{phase.peak_rss:.0f} MB",
        }
        for name, value in rows.items():
            cells.setdefault(name, []).append(value)
    return [f"| {name} | " + " | ".join(values) + " |" for name, values in cells.items()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of unmeasured load first"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="clients, each with one connection"
    )
    parser.add_argument(
        "--payload",
        choices=("mnist", "canvas"),
        default="mnist",
        help="28x28 MNIST PNGs, or 280x280 canvas-like PNGs",
    )
    parser.add_argument("--images", type=int, default=500, help="distinct test digits to cycle")
    parser.add_argument(
        "--reconnect",
        type=int,
        default=0,
        metavar="N",
        help="each client opens a new connection after N requests (0: keeps one)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="server workers (serve's default)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per worker (serve's default)"
    )
    parser.add_argument(
        "--model", default=None, help="weights file (serve's default: the shipped model)"
    )
    attacks = parser.add_argument_group(
        "attacks and failures: the measured time is normal load alone (--baseline s), then "
        "with them; the tables compare the two"
    )
    attacks.add_argument(
        "--slow-clients", type=int, default=0, metavar="N", help="N slowloris connections"
    )
    attacks.add_argument(
        "--slow-interval", type=float, default=2.0, help="seconds between a slow client's bytes"
    )
    attacks.add_argument(
        "--bombs", type=int, default=0, metavar="N", help="N clients sending 40 MP PNGs"
    )
    attacks.add_argument(
        "--kill-worker", action="store_true", help="SIGKILL a worker every --kill-interval s"
    )
    attacks.add_argument("--kill-interval", type=float, default=5.0, help="seconds between kills")
    attacks.add_argument(
        "--sigterm", action="store_true", help="SIGTERM the server: nothing in flight is lost"
    )
    attacks.add_argument(
        "--baseline",
        type=float,
        default=None,
        help="seconds of normal load alone before the attack (default: a quarter of --duration)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if not Path("/proc/self/smaps_rollup").exists():
        parser.error("measuring the server's memory needs Linux /proc")
    args.attacking = bool(args.slow_clients or args.bombs or args.kill_worker or args.sigterm)
    if args.sigterm and (args.slow_clients or args.bombs or args.kill_worker):
        parser.error("--sigterm stops the server: run it alone")
    if not args.attacking:
        args.baseline = args.duration
    elif args.baseline is None:
        args.baseline = args.duration / 4
    if args.attacking and not 0 < args.baseline < args.duration:
        parser.error("--baseline must be positive and shorter than --duration")
    return args


@dataclass
class Run:
    """What one run measured, besides the clients' records."""

    setup: str = "see the server log"
    distinct: float | None = None  # every page once, MB (root only)
    cpu_start: tuple[float, float, float, float] | None = None
    cpu_end: tuple[float, float, float, float] | None = None
    kills: list[float] = field(default_factory=list)
    alive_workers: int = 0
    log: str = ""
    stopped_after: float | None = None  # seconds from SIGTERM to the server's exit
    exit_code: int | None = None


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its table; returns the exit status."""
    args = parse_args(argv)
    # A SIGTERM (timeout, CI) must still run the clean-up that stops the server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    images = make_payloads(args.payload, args.images)
    if args.payload == "canvas":
        # As the page's drawing pad sends it: JSON holding a PNG data URL.
        payloads = [(canvas_json(png), "application/json", label) for png, label in images]
    else:
        payloads = [(*multipart(png), label) for png, label in images]
    run = Run()
    stats = ClientStats()
    slow = bombs = None
    # The server on a free loopback port; stopped on the way out, SIGTERM included.
    with running_server(*server_options(args), startup_timeout=120) as server:
        port = server.port
        if args.slow_clients:
            slow = SlowClients(port, args.slow_clients, args.slow_interval)
        if args.bombs:
            bombs = BombClients(port, args.bombs)  # encodes its PNG before the clock starts
        record_from = time.monotonic() + args.warmup
        attack_at = record_from + args.baseline
        stop_at = record_from + args.duration
        phases = [Phase("alone", record_from, attack_at, last=not args.attacking)]
        if args.attacking:
            phases.append(Phase("attacked", attack_at, stop_at, last=True))
        load = threading.Thread(
            target=run_clients,
            args=(port, payloads, args.concurrency, record_from, stop_at, stats, args.reconnect),
            daemon=True,
        )
        load.start()
        watch(args, server, load, phases, run, slow, bombs, attack_at, stop_at)
        for attacker in (slow, bombs):
            if attacker is not None:
                attacker.stop.set()
        if slow is not None:
            slow.join(timeout=5)
        for thread in bombs.threads if bombs is not None else []:
            thread.join(timeout=60)
        run.alive_workers = len(worker_pids(server.process.pid))
        run.log = server.log()
        run.setup = next(
            (line.split("serving ", 1)[1] for line in run.log.splitlines() if "serving " in line),
            run.setup,
        )

    print(f"## Load test: {args.payload} payload, concurrency {args.concurrency}", end="")
    if args.reconnect:
        print(f" (a new connection every {args.reconnect} requests)", end="")
    if not args.attacking:
        print(f", {args.duration:g} s (after {args.warmup:g} s of warm-up)\n")
    else:
        what = []
        if args.slow_clients:
            what.append(f"{args.slow_clients} slow clients (a byte every {args.slow_interval:g} s)")
        if args.bombs:
            what.append(f"{args.bombs} clients sending 40 MP PNGs")
        if args.kill_worker:
            what.append(f"a worker killed every {args.kill_interval:g} s")
        if args.sigterm:
            what.append("SIGTERM to the server")
        print(
            f": {args.baseline:g} s alone, then {args.duration - args.baseline:g} s with "
            f"{' and '.join(what)} (after {args.warmup:g} s of warm-up)\n"
        )
    print(
        f"Server: {run.setup}. Machine: {cores} cores, {platform.machine()}, "
        f"Python {platform.python_version()}.\n"
    )
    if args.attacking:
        return print_attack(args, phases, stats, run, slow, bombs)
    return print_load(args, phases[0], stats, run, cores)


def watch(
    args: argparse.Namespace,
    server: Server,
    load: threading.Thread,
    phases: list[Phase],
    run: Run,
    slow: SlowClients | None,
    bombs: BombClients | None,
    attack_at: float,
    stop_at: float,
) -> None:
    """While the clients run: start the attack on time, kill workers, sample the server's
    memory and CPU."""
    pid = server.process.pid
    record_from = phases[0].begin

    def mine() -> float:
        return time.process_time()  # this load generator: clients and sampler

    server_pids = process_tree(pid)
    attack_started = False
    tick = 0
    # Memory is sampled 4 times a second under bombs (a peak lasts a fraction of a second),
    # else once a second: reading smaps walks the page tables.
    sample_every = 1 if args.bombs else 4
    while load.is_alive():
        now = time.monotonic()
        if not args.attacking:
            if run.cpu_start is None and now >= record_from:
                run.cpu_start = (cpu_seconds(server_pids), now, machine_busy_seconds(), mine())
            if run.cpu_start is not None and run.cpu_end is None and now >= stop_at:
                run.cpu_end = (cpu_seconds(server_pids), now, machine_busy_seconds(), mine())
            if run.distinct is None and now >= stop_at - 1.0:
                # Once, under load at the end: it reads every page table entry.
                run.distinct = distinct_memory_mb(process_tree(pid)) or float("nan")
        if args.attacking and not attack_started and now >= attack_at:
            attack_started = True
            if slow is not None:
                slow.start()
            if bombs is not None:
                bombs.start()
            if args.sigterm:
                server.process.send_signal(signal.SIGTERM)
        if args.kill_worker and attack_started and now < stop_at - 1.0:
            last = run.kills[-1] if run.kills else attack_at - args.kill_interval
            workers = worker_pids(pid)
            if now - last >= args.kill_interval and workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(workers[len(run.kills) % len(workers)], signal.SIGKILL)
                run.kills.append(now)
        if args.sigterm and run.stopped_after is None and server.process.poll() is not None:
            run.stopped_after = now - attack_at
            run.exit_code = server.process.returncode
        if tick % sample_every == 0:
            if tick % (5 * sample_every) == 0 or args.kill_worker:
                server_pids = process_tree(pid)  # a replaced worker is counted
            rss, pss = memory_mb(server_pids)
            for phase in phases:
                if phase.begin <= now < phase.end + 1.0:
                    phase.peak_rss = max(phase.peak_rss, rss)
                    phase.peak_pss = max(phase.peak_pss, pss)
        tick += 1
        time.sleep(0.25)
    load.join()
    if run.cpu_start is not None and run.cpu_end is None:
        run.cpu_end = (cpu_seconds(server_pids), time.monotonic(), machine_busy_seconds(), mine())
    if args.sigterm and run.stopped_after is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=60)
        run.stopped_after = time.monotonic() - attack_at
        run.exit_code = server.process.returncode


MARK = {True: "yes", False: "**no**"}


def print_load(
    args: argparse.Namespace, phase: Phase, stats: ClientStats, run: Run, cores: int
) -> int:
    """The table of a plain load test (no attack); returns the exit status."""
    # CPU spent per answered request by the server and by this load generator (which
    # shares the machine); over the measured window only.
    server_cpu_ms = client_cpu_ms = float("nan")
    records = phase.records(stats)
    latencies = [ms for _, ms, _ in records]
    errors = sum(o >= ERROR for _, _, o in records)
    correct = sum(o == RIGHT for _, _, o in records)
    answered = len(latencies) - errors
    rate = answered / args.duration
    others = float("nan")  # cores used by other programs meanwhile
    cpu_start, cpu_end = run.cpu_start, run.cpu_end
    if cpu_start is not None and cpu_end is not None and answered:
        window = cpu_end[1] - cpu_start[1]
        served = rate * window  # answered in the sampled CPU window
        server_cpu_ms = 1000 * (cpu_end[0] - cpu_start[0]) / served
        busy = cpu_end[2] - cpu_start[2]
        ours = (cpu_end[0] - cpu_start[0]) + (cpu_end[3] - cpu_start[3])
        others = max(0.0, busy - ours) / window
    if len(stats.cpu_window) == 2 and answered:
        client_cpu_ms = 1000 * (stats.cpu_window[1] - stats.cpu_window[0]) / answered
    p50, p90, p99 = (percentile(latencies, q) for q in (50, 90, 99))
    distinct = run.distinct
    exact = distinct is not None and distinct == distinct  # measured (not None, not NaN)
    memory = distinct if exact else phase.peak_pss
    checks = {
        "rate": rate >= TARGET_RATE,
        "p99": p99 <= TARGET_P99_MS,
        "errors": errors == 0 and len(latencies) > 0,
        "memory": memory < TARGET_MEMORY_MB,
    }
    print("| metric | value | target | met |")
    print("|---|---|---|---|")
    print(
        f"| predictions per second | {rate:.0f} | >= {TARGET_RATE:.0f} | {MARK[checks['rate']]} |"
    )
    print(f"| latency p50 | {p50:.1f} ms | | |")
    print(f"| latency p90 | {p90:.1f} ms | | |")
    print(f"| latency p99 | {p99:.1f} ms | <= {TARGET_P99_MS:.0f} ms | {MARK[checks['p99']]} |")
    print(f"| latency max | {max(latencies, default=float('nan')):.1f} ms | | |")
    print(
        f"| requests / errors | {len(latencies)} / {errors} | 0 errors | {MARK[checks['errors']]} |"
    )
    what = "every page once, end of run" if exact else "peak PSS, all processes"
    print(
        f"| server memory ({what}) | {memory:.1f} MB | "
        f"< {TARGET_MEMORY_MB:.0f} MB | {MARK[checks['memory']]} |"
    )
    if exact:
        print(f"| server memory, peak PSS (all processes) | {phase.peak_pss:.0f} MB | | |")
    print(f"| server memory, peak RSS summed over processes | {phase.peak_rss:.0f} MB | | |")
    print(f"| answers that match the MNIST label | {100 * correct / max(answered, 1):.2f}% | | |")
    print(f"| server CPU per prediction | {server_cpu_ms:.2f} ms | | |")
    print(f"| CPU used by other programs during the run | {others:.2f} cores | | |")
    print(f"| load generator CPU per prediction | {client_cpu_ms:.2f} ms | | |")
    # What the CPU cost implies for a machine whose cores do nothing else: an estimate,
    # shown apart from the measured rate above.
    capacity = cores * 1000 / (server_cpu_ms + client_cpu_ms)
    workers = re.search(r"with (\d+) worker", run.setup)
    if workers:
        # One worker process runs Python on one core at a time (the GIL).
        capacity = min(capacity, int(workers.group(1)) * 1000 / server_cpu_ms)
    print(f"| capacity if the {cores} cores were free (estimate) | {capacity:.0f} / s | | |")
    for example in stats.error_examples:
        print(f"\nerror example: {example}")
    if args.check and not all(checks.values()):
        return 1
    return 0


def print_attack(
    args: argparse.Namespace,
    phases: list[Phase],
    stats: ClientStats,
    run: Run,
    slow: SlowClients | None,
    bombs: BombClients | None,
) -> int:
    """The tables of an attack run: normal requests alone and under attack, then the
    attack's own figures against the issue's targets; returns the exit status."""
    before, during = phases
    attack = "from SIGTERM on" if args.sigterm else "under attack"
    print(f"| normal requests | alone | {attack} |")
    print("|---|---:|---:|")
    for row in phase_rows(phases, stats):
        print(row)
    records = during.records(stats)
    latencies = [ms for _, ms, _ in records]
    errors = sum(o >= ERROR for _, _, o in records)
    dropped = sum(o == DROPPED for _, _, o in records)
    answered = len(records) - errors
    checks: dict[str, bool] = {}
    rows: list[tuple[str, str, str, bool | None]] = []
    if slow is not None:
        samples = slow.open_samples or [0]
        p99 = percentile(latencies, 99)
        checks["slow"] = p99 <= TARGET_SLOW_P99_MS and errors == 0
        rows += [
            ("slow connections opened / closed by the server",
             f"{slow.opened} / {slow.closed_by_server}", "", None),
            ("slow connections open at once: min / mean / max",
             f"{min(samples)} / {np.mean(samples):.0f} / {max(samples)}", "", None),
            ("normal requests with them: p99, errors", f"{p99:.1f} ms, {errors}",
             f"<= {TARGET_SLOW_P99_MS:.0f} ms, 0", checks["slow"]),
        ]  # fmt: skip
    if bombs is not None:
        peak = max(before.peak_pss, during.peak_pss)
        answers = ", ".join(f"{n} x {status}" for status, n in sorted(bombs.statuses.items()))
        bomb_ms = bombs.latencies_ms
        checks["bomb memory"] = peak < TARGET_BOMB_MEMORY_MB
        checks["bomb answers"] = answered > 0 and errors == 0
        rows += [
            ("40 MP PNGs sent: answers", answers or "none", "", None),
            ("their latency p50 / max",
             f"{percentile(bomb_ms, 50):.0f} / {max(bomb_ms, default=float('nan')):.0f} ms",
             "", None),
            ("server memory, peak PSS summed over processes", f"{peak:.0f} MB",
             f"< {TARGET_BOMB_MEMORY_MB:.0f} MB", checks["bomb memory"]),
            ("server memory, peak RSS summed (counts shared pages per process)",
             f"{max(before.peak_rss, during.peak_rss):.0f} MB", "", None),
            ("normal requests answered meanwhile, errors", f"{answered}, {errors}", "> 0, 0",
             checks["bomb answers"]),
        ]  # fmt: skip
    if args.kill_worker:
        rate = errors / max(1, len(records))
        started = len(re.findall(r"worker \d+ started", run.log))
        checks["kill"] = rate < TARGET_KILL_ERROR_RATE and run.alive_workers > 0
        rows += [
            ("workers killed / started again / alive at the end",
             f"{len(run.kills)} / {started} / {run.alive_workers}", "", None),
            ("normal requests failed", f"{errors} of {len(records)} ({100 * rate:.2f}%)",
             f"< {100 * TARGET_KILL_ERROR_RATE:.1f}%", checks["kill"]),
        ]  # fmt: skip
    if args.sigterm:
        checks["sigterm"] = dropped == 0 and run.exit_code == 0
        rows += [
            ("server exit status, seconds to stop",
             f"{run.exit_code}, {run.stopped_after or float('nan'):.2f} s", "0",
             run.exit_code == 0),
            ("requests answered from SIGTERM on", f"{answered}", "", None),
            ("clients refused a connection afterwards (server gone)", f"{stats.refused}", "",
             None),
            ("requests dropped (sent, never answered)", f"{dropped}", "0", dropped == 0),
        ]  # fmt: skip
    print("\n| attack | value | target | met |")
    print("|---|---|---|---|")
    for name, value, target, met in rows:
        print(f"| {name} | {value} | {target} | {'' if met is None else MARK[met]} |")
    for example in stats.error_examples:
        print(f"\nerror example: {example}")
    if args.check and not all(checks.values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
