"""Helpers shared by the tests and the benchmarks: the repository's paths, real images as
files and request bodies, a real server process, and the Chromium the browser tests launch.

It imports no pytest (the fixtures are in ``conftest.py``), so that a benchmark run as
``python benchmarks/load_test.py`` can import it too (it puts ``tests/`` on ``sys.path``).

The images are MNIST test digits (from the bundled data), rendered the ways people send them:
a small PNG, a photo-like dark-on-light scan, a 280x280 canvas drawing as a data URL.
``running_server`` starts ``mnist-cnn serve`` on a free loopback port, as a user would, and
always stops it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data" / "mnist"  # the bundled MNIST

# Debian's Chromium, never a downloaded one (`playwright install` is not used anywhere), with
# no background traffic: every test that drives a browser launches it with these.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


# The fields of /api/predict's answer for one digit, in order (the explanation and number
# mode add theirs around the prediction's).
PREDICTION_FIELDS = [
    "digit",
    "confidence",
    "status",
    "reason",
    "probabilities",
    "top3",
    "input_28x28",
    "model",
    "elapsed_ms",
]


def post_image(
    client: Any,
    data: bytes,
    url: str = "/api/predict",
    name: str = "digit.png",
    field: str = "image",
    **form: str,
) -> Any:
    """POST ``data`` to ``url`` of a Flask test client as a file picker sends it
    (multipart/form-data, the file in ``field``), with the other ``form`` fields."""
    body: dict[str, Any] = {field: (io.BytesIO(data), name), **form}
    return client.post(url, data=body, content_type="multipart/form-data")


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """``response`` is the JSON error ``code`` with HTTP ``status`` and a real message;
    returns the error."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    return error


def picture(url: str) -> np.ndarray:
    """The pixels of a PNG data URL."""
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    with Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """An image as PNG file bytes."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buffer = io.BytesIO()
    pil.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """PNG bytes as a ``data:`` URL, as ``canvas.toDataURL()`` makes them."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def multipart(png: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the file field ``image``, as a browser uploads a PNG,
    and its Content-Type."""
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


def as_canvas(digit: np.ndarray, invert: bool = False, transparent: bool = False) -> bytes:
    """A 28x28 MNIST digit drawn as the page's 280x280 canvas would send it (RGBA PNG).

    ``invert``: black ink on white; ``transparent``: white ink on a transparent background.
    """
    big = Image.fromarray(np.asarray(digit, dtype=np.uint8)).resize(
        (280, 280), Image.Resampling.BILINEAR
    )
    ink = np.asarray(big)
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    if transparent:
        rgba[..., :3] = 255
        rgba[..., 3] = ink
    else:
        gray = 255 - ink if invert else ink
        rgba[..., :3] = gray[..., None]
        rgba[..., 3] = 255
    return png_bytes(Image.fromarray(rgba, mode="RGBA"))


def as_scan(digit: np.ndarray) -> bytes:
    """A 28x28 MNIST digit as a dark-on-light 112x112 grayscale photo-like JPEG."""
    big = Image.fromarray(255 - np.asarray(digit, dtype=np.uint8)).resize(
        (112, 112), Image.Resampling.BICUBIC
    )
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def sample_digits(images: np.ndarray, labels: np.ndarray, per_class: int) -> list[tuple[int, int]]:
    """(index, label) of the first ``per_class`` test digits of each class."""
    chosen: list[tuple[int, int]] = []
    counts = dict.fromkeys(range(10), 0)
    for i, label in enumerate(np.asarray(labels).tolist()):
        if counts[label] < per_class:
            counts[label] += 1
            chosen.append((i, label))
        if all(c == per_class for c in counts.values()):
            break
    return chosen


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``mnist-cnn serve`` process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request on a fresh connection: (status, headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


@contextlib.contextmanager
def running_server(*options: str, startup_timeout: float = 90.0) -> Iterator[Server]:
    """``mnist-cnn serve --host 127.0.0.1 --port <free> *options``; stopped on exit."""
    port = free_port()
    command = [sys.executable, "-m", "mnist_cnn", "serve", "--host", "127.0.0.1",
               "--port", str(port), *options]  # fmt: skip
    with _server_process(command, port, startup_timeout) as server:
        yield server


def bomb_png(side: int = 6300, mode: str = "RGBA") -> bytes:
    """A small PNG of ``side`` x ``side`` pixels (40 MP at the default 6300: under the pixel
    cap) that is costly to decode: a dark bar on white, in ``mode`` (RGBA is the mode whose
    decoding takes the most memory). About 160 kB at the default size."""
    from PIL import ImageDraw

    background = {"RGBA": (255, 255, 255, 255), "RGB": (255, 255, 255), "LA": (255, 255)}
    ink = {"RGBA": (0, 0, 0, 255), "RGB": (0, 0, 0), "LA": (0, 255)}
    image = Image.new(mode, (side, side), background.get(mode, 255))
    bar = [(side // 2, side // 4), (side // 2, 3 * side // 4)]
    ImageDraw.Draw(image).line(bar, fill=ink.get(mode, 0), width=max(1, side // 40))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def worker_pids(server_pid: int) -> list[int]:
    """The pids of a running server's worker processes (its live children, from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == server_pid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


# What ``running_server_config`` runs: ``serve`` with ServeConfig fields from its argument
# (JSON), logging as ``mnist-cnn serve`` does.
_SERVE_CONFIG_SCRIPT = """
import json, logging, sys
from mnist_cnn.web.server import ServeConfig, serve
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
logging.getLogger("waitress.queue").setLevel(logging.ERROR)
serve(ServeConfig(**json.loads(sys.argv[1])))
print("server stopped", file=sys.stderr)
"""


@contextlib.contextmanager
def running_server_config(startup_timeout: float = 90.0, **fields: object) -> Iterator[Server]:
    """The production server with ``ServeConfig`` fields the command line does not set
    (``header_timeout_s=1``, ``connection_limit=10``...), on a free loopback port, in a
    process of its own; stopped on exit, as ``running_server`` does."""
    import json

    port = free_port()
    config = {"host": "127.0.0.1", "port": port, **fields}
    command = [sys.executable, "-c", _SERVE_CONFIG_SCRIPT, json.dumps(config)]
    with _server_process(command, port, startup_timeout) as server:
        yield server


@contextlib.contextmanager
def _server_process(command: list[str], port: int, startup_timeout: float) -> Iterator[Server]:
    """Run ``command`` (a server that listens on ``port``), wait until /api/health answers,
    and always stop it."""
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = Server(process, port, log_path)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited at start-up:\n{server.log()}")
                try:
                    if server.request("GET", "/api/health")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start in time:\n{server.log()}")
                time.sleep(0.2)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def established_connections(port: int, pids: list[int]) -> dict[int, int]:
    """How many established TCP connections to local ``port`` each of ``pids`` holds
    (Linux /proc)."""
    owner = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owner[int(target[8:-1])] = pid
    counts = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                inode = int(fields[9])
                if local_port == port and fields[3] == "01" and inode in owner:
                    counts[owner[inode]] += 1
    return counts


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(summed RSS, summed PSS) in MB of the live processes ``pids`` (Linux /proc)."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss / 1024, pss / 1024
