"""Shared fixtures. The dataset is loaded once per session: reading and verifying the
gzipped files takes about a second, and many tests need it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_cnn import data

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data" / "mnist"
SHIPPED_MODEL = REPO_ROOT / "models" / "mnist_cnn_model.pth"


@pytest.fixture(scope="session")
def train_split() -> data.Split:
    return data.load_split("train", DATA_DIR)


@pytest.fixture(scope="session")
def test_split() -> data.Split:
    return data.load_split("test", DATA_DIR)
