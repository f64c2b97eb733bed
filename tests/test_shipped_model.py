"""The model committed in models/: it loads on CPU, is what its metadata says, and scores."""

from __future__ import annotations

import json

import pytest
import torch

from mnist_cnn.checkpoint import file_sha256, load_model
from mnist_cnn.data import Split, dataset_sha256
from mnist_cnn.evaluate import evaluate
from mnist_cnn.model import MNISTCNN
from mnist_cnn.paths import SHIPPED_MODEL


def test_shipped_model_is_a_plain_seed_state_dict() -> None:
    state = torch.load(SHIPPED_MODEL, map_location="cpu", weights_only=True)
    MNISTCNN().load_state_dict(state)  # the documented one-liner works
    assert {k.split(".")[0] for k in state} == {"conv1", "conv2", "fc1", "fc2"}


def test_metadata_describes_the_weights() -> None:
    meta = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())
    assert meta["weights_sha256"] == file_sha256(SHIPPED_MODEL)
    assert meta["architecture"] == "MNISTCNN"
    assert meta["dataset"]["sha256"] == dataset_sha256()
    assert meta["input"] == {**meta["input"], "mean": 0.1307, "std": 0.3081, "size": 28}
    assert meta["training"]["train_subset"] == 0  # trained on the full training split


@pytest.mark.slow
def test_shipped_model_accuracy_on_the_full_test_set(test_split: Split) -> None:
    loaded = load_model(SHIPPED_MODEL)
    result = evaluate(loaded.model, test_split, loaded.mean, loaded.std)
    assert len(result.labels) == 10_000
    assert result.accuracy >= 0.993
    # the recorded figure is the one this file really scores
    assert result.accuracy == pytest.approx(loaded.metadata["metrics"]["test_accuracy"], abs=1e-4)
