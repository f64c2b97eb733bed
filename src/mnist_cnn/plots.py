"""Figures for reports: training curves, confusion matrix, worst mistakes.

Uses matplotlib's object API with the Agg canvas, so nothing needs a display and no global
pyplot state is touched (safe in servers, tests and notebooks alike).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mnist_cnn import atomic


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Render ``fig`` to a PNG at ``path`` atomically."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic.write_bytes(path, buf.getvalue())


def curves_figure(history: list[dict[str, Any]]) -> Figure:
    """Loss and accuracy per epoch, training against validation."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (augmented)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(
        epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train (augmented)"
    )
    ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_figure(confusion: torch.Tensor) -> Figure:
    """The confusion matrix with counts in each cell (the diagonal is greyed out of the scale)."""
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    off_diagonal = confusion.clone().fill_diagonal_(0)
    image = ax.imshow(off_diagonal.numpy(), cmap="Reds")
    fig.colorbar(image, ax=ax, label="errors")
    n = confusion.shape[0]
    for i in range(n):
        for j in range(n):
            value = int(confusion[i, j])
            if value:
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if i == j or value < off_diagonal.max() * 0.6 else "white",
                )
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion matrix ({int(confusion.sum()) - int(confusion.trace())} errors)",
    )
    return fig


def mistakes_figure(
    images: torch.Tensor, mistakes: list[dict[str, Any]], columns: int = 5
) -> Figure:
    """A grid of misclassified images titled with true label, prediction and confidence."""
    rows = max(1, -(-len(mistakes) // columns))
    fig = Figure(figsize=(columns * 1.6, rows * 1.8))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, mistakes, strict=False):
        ax.imshow(images[m["index"]].numpy(), cmap="gray")
        ax.set_title(
            f"true {m['true']}, pred {m['predicted']}\n{100 * m['confidence']:.1f}%", fontsize=8
        )
    fig.suptitle("Most confident mistakes on the test set")
    fig.tight_layout()
    return fig
