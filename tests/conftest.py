"""Shared fixtures. The dataset is loaded once per session: reading and verifying the
gzipped files takes about a second, and many tests need it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from mnist_cnn import data, paths

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data" / "mnist"
SHIPPED_MODEL = paths.SHIPPED_MODEL


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
