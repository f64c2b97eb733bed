"""Metrics against hand-computed values, and evaluation of a real model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnist_cnn.data import Split
from mnist_cnn.evaluate import (
    EvalResult,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    logits_of,
    per_class_metrics,
    worst_mistakes,
)
from mnist_cnn.model import MNISTCNN


def test_confusion_matrix_counts_rows_true_columns_predicted() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(labels, preds)
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[2, 0] == 1 and cm[2, 2] == 2
    assert cm.sum() == 6


def test_per_class_metrics_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    rows = per_class_metrics(confusion_matrix(labels, preds))
    # class 0: predicted twice, right once; actual twice, found once
    assert rows[0]["precision"] == 0.5 and rows[0]["recall"] == 0.5 and rows[0]["support"] == 2
    # class 2: predicted twice, right twice; actual three times
    assert rows[2]["precision"] == 1.0 and rows[2]["recall"] == pytest.approx(2 / 3, abs=1e-5)
    assert rows[2]["f1"] == pytest.approx(0.8, abs=1e-5)
    assert rows[5] == {"class": 5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_worst_mistakes_are_the_most_confident_wrong_ones() -> None:
    probs = torch.full((4, 10), 0.0)
    probs[0, 3] = 0.9  # wrong, confident
    probs[1, 1] = 1.0  # right
    probs[2, 5] = 0.6  # wrong, less confident
    probs[3, 0] = 0.99  # wrong, most confident
    result = EvalResult(0.0, 0.25, torch.tensor([1, 1, 1, 1]), probs, 0.0)
    assert [m["index"] for m in worst_mistakes(result, k=2)] == [3, 0]


def test_evaluate_matches_a_plain_forward_pass(test_split: Split) -> None:
    torch.manual_seed(0)
    model = MNISTCNN().eval()
    split = test_split.subset(torch.arange(300))
    result = evaluate(model, split, 0.1307, 0.3081, batch_size=64)
    x = (split.images.float() / 255 - 0.1307) / 0.3081
    with torch.no_grad():
        reference = model(x.unsqueeze(1))
    assert result.loss == pytest.approx(F.cross_entropy(reference, split.labels).item(), rel=1e-4)
    assert torch.equal(result.predictions, reference.argmax(1))


def test_logits_of_restores_training_mode() -> None:
    model = MNISTCNN().train()
    logits_of(model, torch.randn(3, 1, 28, 28))
    assert model.training


def test_expected_calibration_error_by_hand() -> None:
    # four examples at 0.9 confidence, three right: one bin, |0.9 - 0.75| = 0.15
    probs = torch.full((4, 10), 0.1 / 9)
    probs[:, 0] = 0.9
    result = EvalResult(0.0, 0.75, torch.tensor([0, 0, 0, 1]), probs, 0.0)
    assert expected_calibration_error(result) == pytest.approx(0.15)
    # right every time at confidence 1: perfectly calibrated
    sure = EvalResult(
        0.0, 1.0, torch.tensor([0, 0]), F.one_hot(torch.tensor([0, 0]), 10).float(), 0.0
    )
    assert expected_calibration_error(sure) == pytest.approx(0.0)
