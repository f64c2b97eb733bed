"""Short real training runs: an accuracy floor, resumption, outputs, bad settings, memory."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_cnn.checkpoint import load_model
from mnist_cnn.train import TrainConfig, TrainingError, config_for, train

REPO_DATA = str(Path(__file__).resolve().parents[1] / "data" / "mnist")


def small_config(tmp_path: Path, **overrides: object) -> TrainConfig:
    """A few thousand images and the fast network: a real run in seconds."""
    settings = {
        "train_subset": 3000,
        "val_size": 1000,
        "epochs": 2,
        "threads": 2,
        "data_dir": REPO_DATA,
        "model_path": str(tmp_path / "model.pth"),
        "report_dir": str(tmp_path / "reports"),
        **overrides,
    }
    return config_for("fast", **settings)


@pytest.mark.slow
def test_short_run_learns_and_writes_its_outputs(tmp_path: Path) -> None:
    lines: list[str] = []
    result = train(small_config(tmp_path), log=lines.append)
    assert not result.interrupted
    assert result.test_accuracy is not None and result.test_accuracy > 0.93
    assert len(lines) == 2 and "val loss" in lines[0]

    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["architecture"] == "FastCNN"
    assert meta["input"]["mean"] == 0.1307 and meta["input"]["std"] == 0.3081
    assert meta["metrics"]["test_accuracy"] == pytest.approx(result.test_accuracy, abs=1e-6)
    assert meta["dataset"]["train_examples"] == 3000 and meta["dataset"]["val_examples"] == 1000
    assert meta["training"]["epochs"] == 2 and len(meta["history"]) == 2
    assert len(meta["dataset"]["sha256"]) == 64
    assert (tmp_path / "reports" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))

    loaded = load_model(tmp_path / "model.pth")
    assert loaded.architecture == "FastCNN"


@pytest.mark.slow
def test_outlier_exposure_teaches_none_of_the_ten(tmp_path: Path, train_split) -> None:
    from mnist_cnn.outliers import outlier_bank

    # The same short run with and without Outlier Exposure: non-digits it never saw (other
    # seeds) get a much lower top probability, and digits are still read.
    unseen = outlier_bank(300, train_split.images[-2000:].numpy(), seed=99)
    x = (torch.from_numpy(unseen).float().div(255).unsqueeze(1) - 0.1307) / 0.3081
    confidence = {}
    for weight in (0.0, 0.5):
        result = train(small_config(tmp_path / str(weight), outlier_weight=weight))
        assert result.test_accuracy is not None and result.test_accuracy > 0.9
        result.model.eval()
        with torch.no_grad():
            confidence[weight] = float(torch.softmax(result.model(x), 1).max(1).values.mean())
    assert confidence[0.5] < confidence[0.0] - 0.2


@pytest.mark.slow
def test_seed_cnn_trains_too(tmp_path: Path) -> None:
    config = small_config(tmp_path, architecture="MNISTCNN", batch_size=32, lr=2e-3)
    result = train(config)
    assert result.test_accuracy is not None and result.test_accuracy > 0.94


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = train(small_config(tmp_path / "a", epochs=1))
    b = train(small_config(tmp_path / "b", epochs=1))
    for (k, va), vb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k


@pytest.mark.slow
def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    # augmentation, Outlier Exposure's draws and dropout all take random numbers:
    # resumption must restore them all
    settings = {
        "architecture": "MNISTCNN",
        "augment": True,
        "strokes": True,
        "outlier_weight": 0.5,
        "epochs": 2,
        "train_subset": 1500,
    }
    whole = train(small_config(tmp_path / "whole", **settings))

    def interrupt_after_first_epoch(model: torch.nn.Module, record: dict) -> None:
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    config = small_config(tmp_path / "parts", **settings)
    lines: list[str] = []
    first = train(config, on_epoch=interrupt_after_first_epoch, log=lines.append)
    assert first.interrupted and "--resume" in lines[-1]
    assert config.checkpoint_path.is_file() and not Path(config.model_path).exists()

    resumed = train(config, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.test_accuracy == whole.test_accuracy
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_resume_refuses_different_settings(tmp_path: Path) -> None:
    def stop(model: torch.nn.Module, record: dict) -> None:
        raise KeyboardInterrupt

    train(small_config(tmp_path, epochs=2), on_epoch=stop)
    with pytest.raises(TrainingError, match="lr: checkpoint 0.01, now 0.02"):
        train(small_config(tmp_path, epochs=2, lr=0.02), resume=True)


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no training checkpoint"):
        train(small_config(tmp_path), resume=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "at least 1"),
        ({"schedule": "cosine-ish"}, "unknown schedule"),
        ({"translate": 0.5}, r"translate must be in \[0, 0.5\), got 0.5"),
        ({"translate": -0.1}, "translate must be"),
        ({"outlier_weight": -1.0}, "outlier weight must be 0 or more"),
        ({"outlier_weight": float("nan")}, "outlier weight"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        train(small_config(tmp_path, **overrides))


def test_presets_override_defaults_and_options_override_presets() -> None:
    assert config_for("seed").lr == 1e-3 and config_for("seed").schedule == "constant"
    assert config_for("seed", lr=5e-4).lr == 5e-4
    assert config_for("default") == TrainConfig()
    with pytest.raises(ValueError, match="unknown preset"):
        config_for("turbo")


# Page faults per training step of the seed CNN (batch 128), in a fresh process: the
# allocator's state is per process and cannot be reset inside this one.
FAULTS_PER_STEP = """
import resource, sys
import torch, torch.nn.functional as F
from mnist_cnn.model import MNISTCNN
from mnist_cnn.train import keep_freed_memory
assert keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(2)
model = MNISTCNN().to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters())
x = torch.randn(128, 1, 28, 28).to(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))
def step():
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
@pytest.mark.slow
def test_training_steps_reuse_freed_memory() -> None:
    # glibc's default gives back and re-faults the activation buffers: 7,000-9,000 page
    # faults per step on the development machines, against 150-300 with them kept.
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_STEP], capture_output=True, text=True, check=True
    ).stdout
    assert float(out) < 1500
