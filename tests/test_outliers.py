"""The drawn non-digits of Outlier Exposure: MNIST-framed, reproducible, of every kind."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnist_cnn import outliers
from mnist_cnn.locate import BOX, FIELD, MNIST_CENTRE
from mnist_cnn.train import uniform_loss


@pytest.fixture(scope="module")
def digits(train_split) -> np.ndarray:
    return train_split.images[:500].numpy()


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[:FIELD, :FIELD]
    mass = image.astype(np.float64)
    return float((ys * mass).sum() / mass.sum()), float((xs * mass).sum() / mass.sum())


def test_bank_is_framed_as_mnist(digits: np.ndarray) -> None:
    bank = outliers.outlier_bank(300, digits, seed=3)
    assert bank.shape == (300, 28, 28) and bank.dtype == np.uint8
    for image in bank:
        assert image.max() == 255  # the core saturated, as the preprocessing makes it
        ys, xs = np.nonzero(image > 0)
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= BOX + 1
        cy, cx = _centre_of_mass(image)
        assert abs(cy - MNIST_CENTRE[0]) <= 1.5 and abs(cx - MNIST_CENTRE[1]) <= 1.5


def test_bank_is_reproducible_and_varies_with_the_seed(digits: np.ndarray) -> None:
    a = outliers.outlier_bank(50, digits, seed=1)
    np.testing.assert_array_equal(a, outliers.outlier_bank(50, digits, seed=1))
    assert not np.array_equal(a, outliers.outlier_bank(50, digits, seed=2))


@pytest.mark.parametrize(
    "draw", [outliers.letter, outliers.shape, outliers.scribble, outliers.blob]
)
def test_every_kind_draws_ink(draw) -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        image = draw(rng)
        assert image.shape == (outliers.CANVAS, outliers.CANVAS)
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert image.max() > 0.5 and (image > 0.5).mean() < 0.9  # a drawing, not a fill


def test_letters_leave_out_the_shapes_of_digits() -> None:
    assert not set("OoIl") & set(outliers.LETTERS)
    assert len(outliers.LETTERS) == 52 - 4


def test_pairs_are_two_digits_side_by_side(digits: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        image = outliers.pair(digits, rng)
        assert image.shape[1] >= 1.5 * 28  # about twice as wide as one digit
        assert image.max() > 0.5


def test_uniform_loss_is_zero_for_uniform_answers_and_matches_kl() -> None:
    assert float(uniform_loss(torch.zeros(4, 10))) == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)) * 3
    # The reference: KL(uniform || p), which is the cross-entropy to uniform minus log C.
    p = torch.softmax(logits, 1)
    kl = (0.1 * (torch.log(torch.full_like(p, 0.1)) - torch.log(p))).sum(1).mean()
    assert float(uniform_loss(logits)) == pytest.approx(float(kl), rel=1e-5)
    assert float(uniform_loss(logits)) > 0 and math.isfinite(float(uniform_loss(logits)))
