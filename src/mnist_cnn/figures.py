"""The figures of the beginner's guide (``docs/guide.md``), made from a model and real data.

    mnist-cnn explain --figures docs/img        # or: make docs

Every figure is computed here, from the model's weights, its training history, the MNIST
test set and one example photo, so that the guide shows what *this* model does and a test
(tests/test_figures.py) can tell when the committed figures no longer match the shipped
model. Each function returns a matplotlib ``Figure``; ``write_guide_figures`` saves them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from mnist_cnn import plots
from mnist_cnn.data import Split, load_split
from mnist_cnn.evaluate import EvalResult, confusion_matrix, evaluate, expected_calibration_error
from mnist_cnn.evaluate import worst_mistakes as find_worst_mistakes
from mnist_cnn.explain import (
    STAGE_LABELS,
    Explanation,
    explain,
    feature_maps,
    figure,
    grid,
    network_of,
    to_uint8,
)
from mnist_cnn.predict import Predictor
from mnist_cnn.preprocess import STAGES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The file names under the figures directory, in the order the guide shows them.
NAMES = (
    "preprocessing",
    "filters",
    "feature-maps",
    "curves",
    "confusion",
    "mistakes",
    "reliability",
    "explain",
)
EXAMPLE_PHOTO = "example-photo.jpg"  # written by tools/make_example_photo.py
FEATURE_DIGIT = 0  # the MNIST test image whose feature maps are shown (a 7)
MISTAKES = 15
RELIABILITY_BINS = 10


def preprocessing_figure(explanation: Explanation) -> Figure:
    """The strip photo -> grayscale -> cleaned -> the digit -> cropped -> 20x20 -> 28x28."""
    from matplotlib.figure import Figure

    names = ("original", *STAGES)
    fig = Figure(figsize=(2.1 * len(names), 2.9), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names)), names, strict=True):
        shown = explanation.original if name == "original" else to_uint8(explanation.stages[name])
        ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=255)
        h, w = shown.shape[:2]
        ax.set_title(f"{STAGE_LABELS[name]}\n{w}x{h}", fontsize=8, wrap=True)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def filters_figure(model: nn.Module) -> Figure:
    """The first convolution's 3x3 filters, blue negative and red positive on one scale."""
    from matplotlib.figure import Figure

    conv = next(m for m in network_of(model).modules() if isinstance(m, nn.Conv2d))
    weights = conv.weight.detach().float()[:, 0].numpy()  # (32, 3, 3): one input channel
    top = float(np.abs(weights).max())
    columns = 8
    rows = -(-len(weights) // columns)
    fig = Figure(figsize=(columns * 1.0, rows * 1.1 + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k < len(weights):
            image = ax.imshow(weights[k], cmap="RdBu_r", vmin=-top, vmax=top)
            ax.set_title(str(k), fontsize=7)
        else:
            ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    fig.suptitle(f"conv1: the {len(weights)} filters (3x3 each), as learned", fontsize=10)
    return fig


def feature_maps_figure(predictor: Predictor, image: np.ndarray) -> Figure:
    """One digit and the feature maps of the first two convolutions."""
    from matplotlib.figure import Figure

    if predictor.model is None:
        raise ValueError("the feature maps need the PyTorch backend")
    maps = feature_maps(predictor.model, image, predictor)
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    axes = fig.subplots(1, 1 + len(maps), width_ratios=[0.55, 1.6, 1.2])
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("input 1x28x28", fontsize=9)
    for ax, (name, m) in zip(axes[1:], maps.items(), strict=True):
        ax.imshow(grid(m), cmap="magma", vmin=0, vmax=255)
        c, h, w = m.shape
        ax.set_title(f"after {name} and ReLU: {c}x{h}x{w}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def reliability_figure(result: EvalResult, bins: int = RELIABILITY_BINS) -> Figure:
    """Confidence against accuracy per bin (a calibrated model lies on the diagonal), with
    how many test images fall in each bin."""
    from matplotlib.figure import Figure

    confidence, predicted = result.probabilities.max(1)
    correct = (predicted == result.labels).double()
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres, accuracies, counts = [], [], []
    for lo, hi in itertools.pairwise(edges.tolist()):
        in_bin = (confidence > lo) & (confidence <= hi)
        counts.append(int(in_bin.sum()))
        centres.append((lo + hi) / 2)
        accuracies.append(float(correct[in_bin].mean()) if counts[-1] else 0.0)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax, ax_n = fig.subplots(1, 2)
    width = 1.0 / bins
    filled = [c > 0 for c in counts]
    ax.bar(
        [c for c, f in zip(centres, filled, strict=True) if f],
        [a for a, f in zip(accuracies, filled, strict=True) if f],
        width=width * 0.95,
        color="#2e86c1",
        label="accuracy in the bin",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (the top probability)",
        ylabel="share answered right",
        title=f"Reliability (ECE {100 * expected_calibration_error(result):.2f}%)",
    )
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centres, counts, width=width * 0.95, color="#7f8c8d")
    ax_n.set_yscale("log")
    ax_n.set(xlim=(0, 1), xlabel="confidence", ylabel="test images (log scale)")
    ax_n.set_title("How many answers have each confidence")
    return fig


def guide_figures(
    predictor: Predictor, test: Split, history: list[dict], photo: Path
) -> dict[str, Callable[[], Figure]]:
    """The guide's figures by name (``NAMES``), each made when called: the example
    ``photo`` explained, the filters and feature maps of ``predictor``'s network, its
    training ``history``, and its evaluation on the ``test`` split."""
    if predictor.model is None:
        raise ValueError("the guide's figures need the PyTorch backend")
    explained = explain(predictor, photo)
    result = evaluate(predictor.model, test, predictor.mean, predictor.std)
    confusion = confusion_matrix(result.labels, result.predictions)
    mistakes = find_worst_mistakes(result, MISTAKES)
    digit = test.images[FEATURE_DIGIT].numpy().astype(np.uint8)
    return {
        "preprocessing": lambda: preprocessing_figure(explained),
        "filters": lambda: filters_figure(predictor.model),
        "feature-maps": lambda: feature_maps_figure(predictor, digit),
        "curves": lambda: plots.curves_figure(history),
        "confusion": lambda: plots.confusion_figure(confusion),
        "mistakes": lambda: plots.mistakes_figure(test.images, mistakes),
        "reliability": lambda: reliability_figure(result),
        "explain": lambda: figure(explained),
    }


def write_guide_figures(
    out_dir: str | Path,
    model: str | Path | None = None,
    data_dir: str | Path | None = None,
    photo: str | Path | None = None,
) -> list[Path]:
    """Make every figure of the guide and write it as ``out_dir/NAME.png``; returns the
    paths. ``photo`` defaults to ``out_dir/example-photo.jpg``. Raises ``CheckpointError``,
    ``DatasetError``, ``FileNotFoundError`` (no photo) and the ``ImageError`` subclasses."""
    out_dir = Path(out_dir)
    photo = Path(photo) if photo is not None else out_dir / EXAMPLE_PHOTO
    if not photo.is_file():
        raise FileNotFoundError(
            f"{photo}: the example photo is missing; write it with "
            f"`python tools/make_example_photo.py --out {photo}`"
        )
    predictor = Predictor.from_checkpoint(model)
    history = list(predictor.info.metadata.get("history") or [])
    with torch.no_grad():
        made = guide_figures(predictor, load_split("test", data_dir), history, photo)
    written = []
    for name in NAMES:
        if name == "curves" and not history:
            continue  # a checkpoint without metadata has no curves to show
        path = out_dir / f"{name}.png"
        plots.save_figure(made[name](), path)
        written.append(path)
    return written
