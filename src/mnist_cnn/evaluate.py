"""Honest evaluation: accuracy and loss, per-class precision and recall, confusion matrix,
the worst mistakes, and a JSON report. The test set is touched only here and at the very
end of training, never for choosing anything.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn import atomic
from mnist_cnn.data import Split, normalise
from mnist_cnn.model import INFERENCE_BATCH, NUM_CLASSES, logits_of


@dataclass(frozen=True)
class EvalResult:
    """Predictions of a model on a labelled split."""

    loss: float
    accuracy: float
    labels: torch.Tensor  # (N,)
    probabilities: torch.Tensor  # (N, 10)
    seconds: float

    @property
    def predictions(self) -> torch.Tensor:
        """Predicted class of each example."""
        return self.probabilities.argmax(1)


def evaluate(
    model: nn.Module, split: Split, mean: float, std: float, batch_size: int = INFERENCE_BATCH
) -> EvalResult:
    """Cross-entropy loss and accuracy of ``model`` on ``split``."""
    start = time.perf_counter()
    logits = logits_of(model, normalise(split.images, mean, std), batch_size)
    loss = F.cross_entropy(logits, split.labels).item() if len(split) else float("nan")
    probabilities = logits.softmax(1)
    accuracy = (probabilities.argmax(1) == split.labels).float().mean().item()
    return EvalResult(loss, accuracy, split.labels, probabilities, time.perf_counter() - start)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """(10, 10) counts; row = true class, column = predicted class."""
    flat = labels * NUM_CLASSES + predictions
    return torch.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def per_class_metrics(confusion: torch.Tensor) -> list[dict[str, float | int]]:
    """Precision, recall, F1 and support of each class from a confusion matrix."""
    tp = confusion.diag().double()
    predicted = confusion.sum(0).double()
    actual = confusion.sum(1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(
        denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp)
    )
    return [
        {
            "class": c,
            "precision": round(precision[c].item(), 5),
            "recall": round(recall[c].item(), 5),
            "f1": round(f1[c].item(), 5),
            "support": int(actual[c].item()),
        }
        for c in range(NUM_CLASSES)
    ]


def expected_calibration_error(result: EvalResult, bins: int = 15) -> float:
    """How far the model's confidence is from its accuracy (0: perfectly calibrated).

    Examples are grouped by confidence into equal-width bins; the gaps between each bin's
    mean confidence and its accuracy are averaged, weighted by the bin's share of examples.
    A model that says "92% sure" should be right 92% of the time: the web page shows these
    numbers to people, so they should mean what they say.
    """
    confidence, predicted = result.probabilities.max(1)
    correct = (predicted == result.labels).double()
    edges = torch.linspace(0, 1, bins + 1)
    error = 0.0
    for lo, hi in itertools.pairwise(edges.tolist()):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = confidence[in_bin].double().mean() - correct[in_bin].mean()
            error += in_bin.double().mean().item() * abs(gap.item())
    return error


def worst_mistakes(result: EvalResult, k: int = 25) -> list[dict[str, Any]]:
    """The ``k`` misclassified examples the model was most confident about."""
    wrong = torch.nonzero(result.predictions != result.labels).flatten()
    confidence = result.probabilities[wrong].max(1).values
    order = wrong[torch.argsort(confidence, descending=True)][:k]
    return [
        {
            "index": int(i),
            "true": int(result.labels[i]),
            "predicted": int(result.predictions[i]),
            "confidence": round(result.probabilities[i].max().item(), 5),
        }
        for i in order
    ]


def build_report(result: EvalResult, model_path: str | Path, dataset_sha256: str) -> dict[str, Any]:
    """Everything about an evaluation as a JSON-ready dict."""
    confusion = confusion_matrix(result.labels, result.predictions)
    n = len(result.labels)
    return {
        "model": str(model_path),
        "dataset_sha256": dataset_sha256,
        "examples": n,
        "accuracy": round(result.accuracy, 6),
        "loss": round(result.loss, 6),
        "errors": int((result.predictions != result.labels).sum()),
        "expected_calibration_error": round(expected_calibration_error(result), 6),
        "seconds": round(result.seconds, 3),
        "images_per_second": round(n / result.seconds) if result.seconds > 0 else None,
        "per_class": per_class_metrics(confusion),
        "confusion_matrix": confusion.tolist(),
        "worst_mistakes": worst_mistakes(result),
    }


def write_report(
    report: dict[str, Any], images: torch.Tensor, result: EvalResult, report_dir: str | Path
) -> dict[str, Path]:
    """Write the JSON report, the confusion-matrix PNG and the worst-mistakes grid."""
    from mnist_cnn import plots

    report_dir = Path(report_dir)
    paths = {
        "report": report_dir / "evaluation.json",
        "confusion_matrix": report_dir / "confusion_matrix.png",
        "misclassified": report_dir / "misclassified.png",
    }
    atomic.write_json(paths["report"], report)
    plots.save_figure(
        plots.confusion_figure(torch.tensor(report["confusion_matrix"])), paths["confusion_matrix"]
    )
    plots.save_figure(
        plots.mistakes_figure(images, report["worst_mistakes"]), paths["misclassified"]
    )
    return paths
