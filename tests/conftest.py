"""Shared fixtures, as flaskr's conftest.py has them: the MNIST splits, clear test digits, the
shipped model's Predictor, a random-weight checkpoint, a --help reader and a Chromium.

What is loaded once per session is loaded here once: reading and verifying the gzipped MNIST
files takes about a second, loading the shipped model a fraction of one, and many tests need
them. Helpers that benchmarks use too (paths, image files, the server, Chromium's flags) are
in ``_web_fixtures.py``, which imports no pytest.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import torch
from _web_fixtures import CHROMIUM, CHROMIUM_ARGS, DATA_DIR
from PIL import Image
from torch import nn
from torch.nn import functional as F

from mnist_cnn import data
from mnist_cnn.paths import SHIPPED_MODEL

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient

    from mnist_cnn.predict import Predictor


@pytest.fixture(scope="session")
def train_split() -> data.Split:
    return data.load_split("train", DATA_DIR)


@pytest.fixture(scope="session")
def test_split() -> data.Split:
    return data.load_split("test", DATA_DIR)


@pytest.fixture(scope="session")
def clear_digits(test_split: data.Split, tmp_path_factory: pytest.TempPathFactory) -> list:
    """Two test digits of each class that the shipped model gets right with >= 90%
    confidence on the raw MNIST pixels, saved as PNG: (path, label, uint8 28x28 pixels)."""
    from mnist_cnn.checkpoint import load_model
    from mnist_cnn.evaluate import evaluate

    loaded = load_model(SHIPPED_MODEL)
    result = evaluate(loaded.model, test_split, loaded.mean, loaded.std)
    confidence = result.probabilities.max(1).values
    clear = (result.predictions == result.labels) & (confidence >= 0.9)
    out_dir = tmp_path_factory.mktemp("digits")
    digits = []
    for label in range(10):
        for i in torch.nonzero(clear & (test_split.labels == label)).flatten()[:2].tolist():
            pixels = test_split.images[i].numpy()
            path = out_dir / f"test{i:05d}_label{label}.png"
            Image.fromarray(pixels).save(path)
            digits.append((path, label, pixels))
    assert len(digits) == 20
    return digits


@pytest.fixture(scope="session")
def shipped_predictor() -> Predictor:
    """The Predictor of the model shipped in the package, loaded once for the session.

    Shared: a test that changes its behaviour patches the class with ``monkeypatch``
    (``monkeypatch.setattr(Predictor, "predict", ...)``), never this instance.
    """
    from mnist_cnn.predict import Predictor

    return Predictor.from_checkpoint(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def app() -> Flask:
    """The web app on the shipped model, with the default settings (a module may override
    it with its own ``app``: another model, other limits)."""
    from mnist_cnn.web import WebConfig, create_app

    return create_app(WebConfig(model_path=SHIPPED_MODEL))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A Flask test client of ``app``."""
    return app.test_client()


@pytest.fixture
def slots_taken() -> Iterator[FlaskClient]:
    """A client of an app where every image needs the one large-decode slot (a threshold of
    0 bytes) and another request holds it: whatever waits for it gets a 503 "busy" after
    0.2 s. The slot is released at teardown."""
    from mnist_cnn.web import WebConfig, create_app, state

    app = create_app(
        WebConfig(
            model_path=SHIPPED_MODEL,
            log_predictions=False,
            large_decode_bytes=0,
            large_decode_wait_s=0.2,
        )
    )
    slots = state(app).large_decodes
    assert slots.acquire(timeout=1)
    try:
        yield app.test_client()
    finally:
        slots.release()


class SeedCNN(nn.Module):
    """The seed's network as its own script wrote it: the reference for our MNISTCNN and for
    the seed's checkpoint format."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1, 1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 64 * 7 * 7)
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


def save_checkpoint(
    model: torch.nn.Module, path: Path, architecture: str = "MNISTCNN", **metadata: object
) -> Path:
    """Save ``model`` as training does (weights plus JSON), with a made-up test accuracy of
    0.5 and MNIST's normalisation unless ``metadata`` says otherwise."""
    from mnist_cnn.checkpoint import save_model
    from mnist_cnn.model import MNIST_MEAN, MNIST_STD

    base = {
        "architecture": architecture,
        "input": {"mean": MNIST_MEAN, "std": MNIST_STD},
        "metrics": {"test_accuracy": 0.5},
    }
    save_model(model, path, {**base, **metadata})
    return path


def disk_full_for(monkeypatch: pytest.MonkeyPatch, names: Callable[[str], bool]) -> None:
    """Make ``mnist_cnn.atomic`` write the files whose names satisfy ``names`` to /dev/full:
    the kernel's own "No space left on device" (ENOSPC), where torch.save into a file gave
    "enforce fail at inline_container.cc"."""
    from mnist_cnn import atomic

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux)")

    def mkstemp(dir: str, prefix: str, suffix: str) -> tuple[int, str]:
        fd, tmp = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
        if names(prefix[1:-1]):  # ".<name>." -> <name>
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp

    monkeypatch.setattr(atomic, "tempfile", SimpleNamespace(mkstemp=mkstemp))


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a randomly initialised seed CNN (seed 0): loads like any other, fast."""
    from mnist_cnn.model import MNISTCNN

    torch.manual_seed(0)
    return save_checkpoint(MNISTCNN(), tmp_path_factory.mktemp("ckpt") / "random.pth")


@pytest.fixture
def cli_help(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """``cli_help("train")``: that command's --help text, whitespace collapsed (it must exit 0)."""
    from mnist_cnn.cli import main

    def run(*command: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    return run


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium driven by Playwright, launched once per module with the shared
    ``CHROMIUM_ARGS``; skipped when it is missing (a failure on CI)."""
    if not Path(CHROMIUM).exists():
        message = "Chromium is missing: apt-get install -y chromium (.ci/run does this)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# ---------------------------------------------------------------- the suite leaves no trace
# The shipped model is the product: no test may change it. And a test that trains, evaluates
# or promotes writes into a temporary directory, never into the checkout's models/, runs/ or
# reports/ (where they would change what `mnist-cnn predict` uses, or dirty the clone).
_GUARDED = ("models", "runs", "reports")


def _fingerprint() -> dict[str, str]:
    import hashlib

    from _web_fixtures import REPO_ROOT

    files = [SHIPPED_MODEL, SHIPPED_MODEL.with_suffix(".json")]
    for name in _GUARDED:
        files += sorted(p for p in (REPO_ROOT / name).rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _fingerprint()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    after = _fingerprint()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        session.config.get_terminal_writer().line(
            "\nthe test suite changed files it must not touch (the shipped model, or the "
            "checkout's models/, runs/, reports/):\n  " + "\n  ".join(changed),
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[dict[str, str]]()
