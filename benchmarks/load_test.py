"""Load test of the production server: predictions per second, latency, errors, memory.

    python benchmarks/load_test.py                      # 60 s at concurrency 8, MNIST digits
    python benchmarks/load_test.py --duration 10        # a quick look
    python benchmarks/load_test.py --payload canvas     # what the page's drawing pad sends
    python benchmarks/load_test.py --workers 1 --threads 8   # another server setup

It starts ``mnist-cnn serve`` on a free port of 127.0.0.1 (nothing else is contacted), waits
until ``/api/health`` answers, warms it up, then keeps ``--concurrency`` clients busy for
``--duration`` seconds. Each client is a thread with its own keep-alive connection that posts
one image per request (``POST /api/predict``, multipart, as a browser upload does) and
checks the answer: any status but 200, a malformed body or a failed connection is an error.
The server's memory is sampled twice a second over all its processes: the peak of the summed
RSS and of the summed PSS (proportional set size: pages shared by forked workers counted
once, which is what the server really costs the machine).

Payloads are real MNIST test digits, so the answers can be checked too: the table reports
how many were right. ``--payload mnist`` sends them as 28x28 PNGs; ``--payload canvas``
draws each one 10x larger (280x280, white on black) as the web page's canvas sends it,
which costs the preprocessing more. The load generator runs on the same machine as the
server and takes some of its CPU, so the figures are a lower bound for a dedicated host.

Prints a markdown table; exits with status 1 when a target is missed with ``--check``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mnist_cnn import data  # noqa: E402

# The targets for the production server on a 2-core machine.
TARGET_RATE = 300.0  # predictions per second at concurrency 8
TARGET_P99_MS = 50.0
TARGET_MEMORY_MB = 300.0


@dataclass
class ClientStats:
    """What one client thread saw."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    correct: int = 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        buffer = io.BytesIO()
        pil.save(buffer, "PNG")
        out.append((buffer.getvalue(), int(test.labels[int(i)])))
    return out


def multipart(png: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the file field ``image``."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="image"; filename="digit.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


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


def memory_mb(pid: int) -> tuple[float, float]:
    """(summed RSS, summed PSS) in MB of ``pid`` and its descendants."""
    rss = pss = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss / 1024, pss / 1024


@contextlib.contextmanager
def running_server(args: argparse.Namespace, log_path: Path) -> Iterator[tuple[int, int]]:
    """Start ``mnist-cnn serve`` on a free loopback port; yield (pid, port); stop it."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mnist_cnn",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for option in ("workers", "threads", "model"):
        value = getattr(args, option)
        if value is not None:
            command += [f"--{option}", str(value)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"the server exited with status {proc.returncode}:\n{log_path.read_text()}"
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/api/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not become healthy:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield proc.pid, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(
    port: int,
    payloads: list[tuple[bytes, str, int]],
    start_index: int,
    stop_at: float,
    record_from: float,
    stats: ClientStats,
) -> None:
    """Post images back to back until ``stop_at``; record those sent after ``record_from``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = start_index
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        body, content_type, label = payloads[i % len(payloads)]
        i += 1
        started = time.perf_counter()
        try:
            conn.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            raw = response.read()
            elapsed = 1000 * (time.perf_counter() - started)
            ok = response.status == 200
            digit = json.loads(raw)["digit"] if ok else None
            problem = None if ok else f"HTTP {response.status}: {raw[:200]!r}"
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            elapsed = 1000 * (time.perf_counter() - started)
            ok, digit, problem = False, None, f"{type(exc).__name__}: {exc}"
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        if now < record_from:
            continue  # warm-up
        stats.latencies_ms.append(elapsed)
        if ok:
            stats.correct += digit == label
        else:
            stats.errors += 1
            if len(stats.error_examples) < 3:
                stats.error_examples.append(problem or "")
    conn.close()


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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not Path("/proc/self/smaps_rollup").exists():
        parser.error("measuring the server's memory needs Linux /proc")

    payloads = [(*multipart(png), label) for png, label in make_payloads(args.payload, args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        with running_server(args, log_path) as (pid, port):
            stats = [ClientStats() for _ in range(args.concurrency)]
            begin = time.monotonic()
            record_from = begin + args.warmup
            stop_at = record_from + args.duration
            threads = [
                threading.Thread(
                    target=client,
                    args=(port, payloads, k * 997, stop_at, record_from, stats[k]),
                    daemon=True,
                )
                for k in range(args.concurrency)
            ]
            for t in threads:
                t.start()
            peak_rss = peak_pss = 0.0
            server_pids = process_tree(pid)
            cpu_start = cpu_end = None
            while any(t.is_alive() for t in threads):
                now = time.monotonic()
                if cpu_start is None and now >= record_from:
                    cpu_start = (cpu_seconds(server_pids), time.process_time(), now)
                if cpu_start is not None and cpu_end is None and now >= stop_at:
                    cpu_end = (cpu_seconds(server_pids), time.process_time(), now)
                rss, pss = memory_mb(pid)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
                time.sleep(0.25)
            for t in threads:
                t.join()
            if cpu_start is not None and cpu_end is None:
                cpu_end = (cpu_seconds(server_pids), time.process_time(), time.monotonic())
            server_log = log_path.read_text(errors="replace")
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
    latencies = [x for s in stats for x in s.latencies_ms]
    errors = sum(s.errors for s in stats)
    correct = sum(s.correct for s in stats)
    answered = len(latencies) - errors
    rate = answered / args.duration
    if cpu_start is not None and cpu_end is not None and answered:
        window = cpu_end[2] - cpu_start[2]
        served = rate * window  # requests answered in the CPU window, at the measured rate
        server_cpu_ms = 1000 * (cpu_end[0] - cpu_start[0]) / served
        client_cpu_ms = 1000 * (cpu_end[1] - cpu_start[1]) / served
    p50, p90, p99 = (percentile(latencies, q) for q in (50, 90, 99))
    checks = {
        "rate": rate >= TARGET_RATE,
        "p99": p99 <= TARGET_P99_MS,
        "errors": errors == 0 and len(latencies) > 0,
        "memory": peak_pss < TARGET_MEMORY_MB,
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
    print(
        f"| server memory, peak PSS (all processes) | {peak_pss:.0f} MB | "
        f"< {TARGET_MEMORY_MB:.0f} MB | {mark[checks['memory']]} |"
    )
    print(f"| server memory, peak RSS summed | {peak_rss:.0f} MB | | |")
    print(f"| answers that match the MNIST label | {100 * correct / max(answered, 1):.2f}% | | |")
    print(f"| server CPU per prediction | {server_cpu_ms:.2f} ms | | |")
    print(f"| load generator CPU per prediction | {client_cpu_ms:.2f} ms | | |")
    # What the CPU cost implies for a machine whose cores do nothing else: an estimate,
    # shown apart from the measured rate above.
    capacity = cores * 1000 / (server_cpu_ms + client_cpu_ms)
    workers = re.search(r"with (\d+) worker", setup)
    if workers:
        # One worker process runs Python on one core at a time (the GIL).
        capacity = min(capacity, int(workers.group(1)) * 1000 / server_cpu_ms)
    print(f"| capacity if the {cores} cores were free (estimate) | {capacity:.0f} / s | | |")
    for s in stats:
        for example in s.error_examples:
            print(f"\nerror example: {example}")
    if args.check and not all(checks.values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
