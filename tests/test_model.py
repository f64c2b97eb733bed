"""The networks: shapes, parameter counts, and the seed's network: the same keys, its weights
load both ways and compute the same function. Saving and loading files: test_checkpoint.py."""

from __future__ import annotations

import pytest
import torch
from conftest import SeedCNN

from mnist_cnn.model import ARCHITECTURES, MNISTCNN, build_model, count_parameters


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


def test_unknown_architecture_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("ResNet152")
