"""Load test of the production server: predictions per second, latency, errors, memory.

    python benchmarks/load_test.py                      # 60 s at concurrency 8, MNIST digits
    python benchmarks/load_test.py --duration 10        # a quick look
    python benchmarks/load_test.py --payload canvas     # what the page's drawing pad sends
    python benchmarks/load_test.py --workers 1 --threads 4   # another server setup

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

Prints a markdown table; exits with status 1 when a target is missed with ``--check``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import selectors
import signal
import socket
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

from _web_fixtures import data_url, multipart, png_bytes, running_server  # noqa: E402

from mnist_cnn import data  # noqa: E402

# The targets for the production server on a 2-core machine.
TARGET_RATE = 300.0  # predictions per second at concurrency 8
TARGET_P99_MS = 50.0
TARGET_MEMORY_MB = 300.0


@dataclass
class ClientStats:
    """What the clients saw."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    correct: int = 0
    # CPU time of the load-generating thread when the measured window opened and closed.
    cpu_window: list[float] = field(default_factory=list)


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
    from what is measured. Responses are read by their Content-Length.
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

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send(self) -> None:
        request, self.label = self.requests[self.index % len(self.requests)]
        self.index += 1
        self.buffer = b""
        self.sent_at = time.monotonic()
        self.started = time.perf_counter()
        self.sock.sendall(request)

    def receive(self) -> tuple[int, bytes] | None:
        """Read what arrived; the (status, body) once the response is complete."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        lines = self.buffer[:head_end].split(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in lines[1:]
            if line[:15].lower() == b"content-length:"
        )  # fmt: skip
        if len(self.buffer) < head_end + 4 + length:
            return None
        return int(lines[0].split()[1]), self.buffer[head_end + 4 : head_end + 4 + length]

    def reconnect(self) -> None:
        self.sock.close()
        self.sock = self._connect()


def run_clients(
    port: int,
    payloads: list[tuple[bytes, str, int]],
    concurrency: int,
    record_from: float,
    stop_at: float,
    stats: ClientStats,
) -> None:
    """Keep ``concurrency`` requests in flight until ``stop_at``, from one thread.

    One thread multiplexes every connection with ``selectors``: threads would contend for
    the GIL and cost the shared CPU more. Answers to requests sent after ``record_from`` are
    recorded (before it: warm-up).
    """
    requests = [(build_request(port, body, kind), label) for body, kind, label in payloads]
    selector = selectors.DefaultSelector()
    for k in range(concurrency):
        client = Client(port, requests, start=k * 997)
        selector.register(client.sock, selectors.EVENT_READ, client)
        client.send()
    while selector.get_map():
        now = time.monotonic()
        if (not stats.cpu_window and now >= record_from) or (
            len(stats.cpu_window) == 1 and now >= stop_at
        ):
            stats.cpu_window.append(time.thread_time())
        for key, _ in selector.select(timeout=1.0):
            client = key.data
            try:
                answer = client.receive()
                if answer is None:
                    continue
                status, body = answer
                ok = status == 200
                problem = None if ok else f"HTTP {status}: {body[:200]!r}"
                digit = json.loads(body)["digit"] if ok else None
            except (OSError, ValueError, KeyError, IndexError, StopIteration) as exc:
                ok, digit, problem = False, None, f"{type(exc).__name__}: {exc}"
                selector.unregister(client.sock)
                client.reconnect()
                selector.register(client.sock, selectors.EVENT_READ, client)
            if client.sent_at >= record_from:
                stats.latencies_ms.append(1000 * (time.perf_counter() - client.started))
                if ok:
                    stats.correct += digit == client.label
                else:
                    stats.errors += 1
                    if len(stats.error_examples) < 3:
                        stats.error_examples.append(problem or "")
            if time.monotonic() < stop_at:
                client.send()
            else:
                selector.unregister(client.sock)
                client.sock.close()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its table; returns the exit status."""
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
        "--workers", type=int, default=None, help="server workers (serve's default)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per worker (serve's default)"
    )
    parser.add_argument(
        "--model", default=None, help="weights file (serve's default: the shipped model)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    # A SIGTERM (timeout, CI) must still run the clean-up that stops the server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not Path("/proc/self/smaps_rollup").exists():
        parser.error("measuring the server's memory needs Linux /proc")

    images = make_payloads(args.payload, args.images)
    if args.payload == "canvas":
        # As the page's drawing pad sends it: JSON holding a PNG data URL.
        payloads = [(canvas_json(png), "application/json", label) for png, label in images]
    else:
        payloads = [(*multipart(png), label) for png, label in images]
    # The server on a free loopback port; stopped on the way out, SIGTERM included.
    with running_server(*server_options(args), startup_timeout=120) as server:
        pid, port = server.process.pid, server.port
        stats = ClientStats()
        begin = time.monotonic()
        record_from = begin + args.warmup
        stop_at = record_from + args.duration
        load = threading.Thread(
            target=run_clients,
            args=(port, payloads, args.concurrency, record_from, stop_at, stats),
            daemon=True,
        )
        load.start()
        peak_rss = peak_pss = 0.0
        distinct = None

        def mine() -> float:
            return time.process_time()  # this load generator: clients and sampler

        server_pids = process_tree(pid)
        cpu_start = cpu_end = None
        tick = 0
        while load.is_alive():
            now = time.monotonic()
            if cpu_start is None and now >= record_from:
                cpu_start = (cpu_seconds(server_pids), now, machine_busy_seconds(), mine())
            if cpu_start is not None and cpu_end is None and now >= stop_at:
                cpu_end = (cpu_seconds(server_pids), now, machine_busy_seconds(), mine())
            if distinct is None and now >= stop_at - 1.0:
                # Once, under load at the end: it reads every page table entry.
                distinct = distinct_memory_mb(process_tree(pid)) or float("nan")
            # Reading smaps costs the kernel a page-table walk per process: once a
            # second is enough for a peak, and keeps this sampler's CPU negligible.
            if tick % 4 == 0:
                if tick % 20 == 0:
                    server_pids = process_tree(pid)  # a replaced worker is counted
                rss, pss = memory_mb(server_pids)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            tick += 1
            time.sleep(0.25)
        load.join()
        if cpu_start is not None and cpu_end is None:
            cpu_end = (
                cpu_seconds(server_pids),
                time.monotonic(),
                machine_busy_seconds(),
                mine(),
            )
        server_log = server.log()
        setup = next(
            (
                line.split("serving ", 1)[1]
                for line in server_log.splitlines()
                if "serving " in line
            ),
            "see the server log",
        )

    # CPU spent per answered request by the server and by this load generator (which
    # shares the machine); over the measured window only.
    server_cpu_ms = client_cpu_ms = float("nan")
    latencies = stats.latencies_ms
    errors = stats.errors
    correct = stats.correct
    answered = len(latencies) - errors
    rate = answered / args.duration
    others = float("nan")  # cores used by other programs meanwhile
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
    exact = distinct is not None and distinct == distinct  # measured (not None, not NaN)
    memory = distinct if exact else peak_pss
    checks = {
        "rate": rate >= TARGET_RATE,
        "p99": p99 <= TARGET_P99_MS,
        "errors": errors == 0 and len(latencies) > 0,
        "memory": memory < TARGET_MEMORY_MB,
    }
    mark = {True: "yes", False: "**no**"}

    print(
        f"## Load test: {args.payload} payload, concurrency {args.concurrency}, "
        f"{args.duration:g} s (after {args.warmup:g} s of warm-up)\n"
    )
    print(
        f"Server: {setup}. Machine: {cores} cores, {platform.machine()}, "
        f"Python {platform.python_version()}.\n"
    )
    print("| metric | value | target | met |")
    print("|---|---|---|---|")
    print(
        f"| predictions per second | {rate:.0f} | >= {TARGET_RATE:.0f} | {mark[checks['rate']]} |"
    )
    print(f"| latency p50 | {p50:.1f} ms | | |")
    print(f"| latency p90 | {p90:.1f} ms | | |")
    print(f"| latency p99 | {p99:.1f} ms | <= {TARGET_P99_MS:.0f} ms | {mark[checks['p99']]} |")
    print(f"| latency max | {max(latencies, default=float('nan')):.1f} ms | | |")
    print(
        f"| requests / errors | {len(latencies)} / {errors} | 0 errors | {mark[checks['errors']]} |"
    )
    what = "every page once, end of run" if exact else "peak PSS, all processes"
    print(
        f"| server memory ({what}) | {memory:.1f} MB | "
        f"< {TARGET_MEMORY_MB:.0f} MB | {mark[checks['memory']]} |"
    )
    if exact:
        print(f"| server memory, peak PSS (all processes) | {peak_pss:.0f} MB | | |")
    print(f"| server memory, peak RSS summed over processes | {peak_rss:.0f} MB | | |")
    print(f"| answers that match the MNIST label | {100 * correct / max(answered, 1):.2f}% | | |")
    print(f"| server CPU per prediction | {server_cpu_ms:.2f} ms | | |")
    print(f"| CPU used by other programs during the run | {others:.2f} cores | | |")
    print(f"| load generator CPU per prediction | {client_cpu_ms:.2f} ms | | |")
    # What the CPU cost implies for a machine whose cores do nothing else: an estimate,
    # shown apart from the measured rate above.
    capacity = cores * 1000 / (server_cpu_ms + client_cpu_ms)
    workers = re.search(r"with (\d+) worker", setup)
    if workers:
        # One worker process runs Python on one core at a time (the GIL).
        capacity = min(capacity, int(workers.group(1)) * 1000 / server_cpu_ms)
    print(f"| capacity if the {cores} cores were free (estimate) | {capacity:.0f} / s | | |")
    for example in stats.error_examples:
        print(f"\nerror example: {example}")
    if args.check and not all(checks.values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
