"""The networks: shapes, parameter counts, and the seed's checkpoint format both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn.checkpoint import load_model, save_model
from mnist_cnn.model import ARCHITECTURES, MNISTCNN, build_model, count_parameters


class SeedCNN(nn.Module):
    """The seed's network as its own script wrote it: the reference for our MNISTCNN."""

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


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("batch", [1, 5])
def test_output_shape(name: str, batch: int) -> None:
    model = build_model(name).eval()
    assert model(torch.randn(batch, 1, 28, 28)).shape == (batch, 10)


def test_seed_cnn_parameter_count_is_the_true_one() -> None:
    # conv1 320 + conv2 18,496 + fc1 401,536 + fc2 1,290: about 0.42 M, not 1.2 M.
    assert count_parameters(MNISTCNN()) == 421_642


def test_keys_are_the_seeds() -> None:
    assert list(MNISTCNN().state_dict()) == list(SeedCNN().state_dict())


def test_seed_weights_load_and_compute_the_same_function() -> None:
    seed = SeedCNN().eval()
    ours = MNISTCNN().eval()
    ours.load_state_dict(seed.state_dict())
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(ours(x), seed(x))
    # and back: our weights load into the seed's class
    SeedCNN().load_state_dict(MNISTCNN().state_dict())


def test_plain_seed_state_dict_file_loads_without_metadata(tmp_path: Path) -> None:
    seed = SeedCNN().eval()
    path = tmp_path / "seed.pth"
    torch.save(seed.state_dict(), path)
    loaded = load_model(path)
    assert loaded.architecture == "MNISTCNN" and loaded.mean == 0.1307 and loaded.std == 0.3081
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(loaded.model(x), seed(x))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_saved_model_loads_as_the_documented_one_liner(tmp_path: Path, name: str) -> None:
    model = build_model(name).to(memory_format=torch.channels_last).eval()
    path = tmp_path / "m.pth"
    save_model(model, path, {"architecture": name, "input": {"mean": 0.5, "std": 0.2}})
    state = torch.load(path, map_location="cpu")
    assert all(t.is_contiguous() for t in state.values())
    fresh = ARCHITECTURES[name]().eval()
    fresh.load_state_dict(state)
    loaded = load_model(path)
    assert (loaded.architecture, loaded.mean, loaded.std) == (name, 0.5, 0.2)
    assert loaded.metadata["weights_sha256"]
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.model(x), model(x))


def test_unknown_architecture_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("ResNet152")
