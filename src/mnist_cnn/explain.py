"""Why the network said "7": one image through the preprocessing and the network, shown.

    explanation = explain(predictor, "photo.jpg")
    explanation.stages["cleaned"]       # each preprocessing stage (``locate.STAGES``)
    explanation.activations["conv1"]    # (32, 28, 28) feature maps of the first convolution
    explanation.saliency                # (28, 28): where the answer's evidence lies
    figure(explanation)                 # all of it in one matplotlib figure

``mnist-cnn explain``, the page's "look inside" panel (``/api/explain``) and Gradio all call
``explain`` and draw with the helpers below, so they show the same thing.

The saliency map is **occlusion sensitivity** (Zeiler & Fergus, 2014): a 5x5 patch of the
28x28 input is erased (set to the background) at every position that touches ink, and the
map holds how much the odds of the answer fall (as a natural log) when the patch centred
there is gone. It was chosen over gradients for three reasons: its unit means something
to anyone ("erase this bit of ink and the odds that it is a 7 fall tenfold"); it needs only the
model's answers, so it works unchanged for ensembles, test-time augmentation and ONNX
Runtime; and the gradients of a ReLU network are noisy from pixel to pixel, while
gradient x input is not even zero on the blank background (which normalisation makes
-0.42, not 0). It costs one batched forward pass of a few hundred copies of the input.
Positive values are evidence for the answer, negative values evidence against it (erasing
there makes the model surer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mnist_cnn.data import normalise
from mnist_cnn.decode import estimate_decode_bytes, preview, read_file
from mnist_cnn.model import INPUT_SIZE, Ensemble, ShiftTTA
from mnist_cnn.predict import Prediction, Predictor
from mnist_cnn.preprocess import STAGES, ImageSource

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The erased patch: about two MNIST stroke widths, so that erasing it breaks a stroke.
PATCH = 5
# How the stages are called where people read them.
STAGE_LABELS = {
    "original": "your image",
    "grayscale": "grayscale",
    "cleaned": "cleaned (background, lines removed)",
    "digit": "the digit's pieces",
    "cropped": "cropped",
    "fitted": "fitted into 20x20",
    "centred": "centred in 28x28 (the model's input)",
}
LAYERS = ("conv1", "conv2")  # the feature maps shown: the first two convolutions' outputs
# Showing the image as given decodes it a second time, whole and in colour (a JPEG at a
# reduced scale). Beyond this much decoding memory (a 36 MP PNG takes over 100 MB, and more
# as floats) the picture is the gray working copy instead, which the answer was read from:
# an explanation then costs a server no more memory than a prediction.
PREVIEW_MAX_DECODE_BYTES = 16 * 1024 * 1024
PREVIEW_SIDE = 320  # the longest side of the image as given, in the figure and on the page


@dataclass(frozen=True)
class Explanation:
    """One image, followed through the preprocessing and the network."""

    prediction: Prediction  # the answer, its status and the 28x28 input the model saw
    original: np.ndarray  # uint8 RGB (H, W, 3): the image as given, at most 320 pixels wide
    stages: dict[str, np.ndarray]  # ``STAGES`` name -> float (H, W) in [0, 1]
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1): the digit in the image's own pixels
    activations: dict[str, np.ndarray]  # "conv1", "conv2" -> float32 (C, H, W), rectified
    saliency: np.ndarray  # float32 (28, 28): the answer's log-odds lost when erased there

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the prediction, the box, every stage's pixels (0-255), the
        saliency map and the activations, all as nested lists."""
        return {
            "prediction": self.prediction.to_dict(),
            "box": list(self.box),
            "stages": {name: to_uint8(image).tolist() for name, image in self.stages.items()},
            "input": self.prediction.model_input.tolist(),
            "saliency": {
                "method": "occlusion",
                "patch": PATCH,
                "meaning": saliency_meaning(self.prediction.digit),
                "values": np.round(self.saliency, 4).tolist(),
            },
            "activations": {
                name: {"shape": list(maps.shape), "values": np.round(maps, 3).tolist()}
                for name, maps in self.activations.items()
            },
        }


def saliency_meaning(digit: int) -> str:
    """What the saliency map's values mean, in a sentence, for the answer ``digit``."""
    return (
        f"how much the log-odds of {digit} fall when a {PATCH}x{PATCH} patch of the input "
        f"centred there is erased (2.3: ten times lower odds): red where the ink is evidence "
        f"for {digit}, blue where it is evidence against (erasing it makes {digit} more likely)"
    )


def _picture(image: ImageSource, max_pixels: int, gray: np.ndarray) -> np.ndarray:
    """The image as given, in colour, unless decoding it again would take more than
    ``PREVIEW_MAX_DECODE_BYTES``: then ``gray``, the working copy the answer came from."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        need = estimate_decode_bytes(bytes(image), max_pixels, max_side=PREVIEW_SIDE)
        if need > PREVIEW_MAX_DECODE_BYTES:
            return np.repeat(to_uint8(gray)[:, :, None], 3, axis=2)
    return preview(image, max_pixels, PREVIEW_SIDE)


def explain(predictor: Predictor, image: ImageSource) -> Explanation:
    """Follow ``image`` through ``predictor``'s preprocessing and network.

    The feature maps need the network itself (``predictor.model``, the PyTorch backend);
    with ONNX Runtime they are left out and the rest is the same. Raises the
    ``ImageError`` subclasses as ``predict`` does.
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_file(image)  # read once: for the answer, then for the picture
    stages: dict[str, np.ndarray] = {}
    located = predictor.locate(image, stages)
    prediction = predictor.predict_located([located])[0]
    activations = {}
    if predictor.model is not None:
        activations = feature_maps(predictor.model, prediction.model_input, predictor)
    return Explanation(
        prediction=prediction,
        original=_picture(image, predictor.max_pixels, stages["grayscale"]),
        stages={name: stages[name] for name in STAGES},
        box=located.box,
        activations=activations,
        saliency=occlusion(predictor, prediction.model_input, prediction.digit),
    )


def _inputs(predictor: Predictor, images: np.ndarray) -> torch.Tensor:
    return normalise(images, predictor.mean, predictor.std)


def occlusion(
    predictor: Predictor, image: np.ndarray, digit: int, patch: int = PATCH
) -> np.ndarray:
    """The fall of ``digit``'s log-odds when a ``patch``-square of the uint8 28x28
    ``image`` centred on each pixel is erased (float32 (28, 28); 0 where the patch would
    touch no ink, since erasing background changes nothing).

    Log-odds, log(p / (1 - p)), not probabilities: a confident answer's probability is
    0.99999 with or without most pieces of ink, so its falls would be invisible (and so
    would those of its logarithm), while its odds still show which strokes carry the
    evidence: a fall of 2.3 means ten times lower odds.
    """
    image = np.asarray(image, dtype=np.uint8).reshape(INPUT_SIZE, INPUT_SIZE)
    half = patch // 2
    # Which patch centres touch ink: the ink dilated by the patch (a box filter over the
    # ink mask, as an integral image: no loop over positions).
    ink = np.pad(image > 0, half).astype(np.int32)
    sums = ink.cumsum(0).cumsum(1)
    sums = np.pad(sums, ((1, 0), (1, 0)))
    touched = (
        sums[patch:, patch:]
        - sums[:-patch, patch:]
        - sums[patch:, :-patch]
        + sums[:-patch, :-patch]
    ) > 0
    rows, cols = np.nonzero(touched)
    copies = np.repeat(image[None], len(rows) + 1, axis=0)  # the first stays whole
    for k, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True), start=1):
        copies[k, max(0, r - half) : r + half + 1, max(0, c - half) : c + half + 1] = 0
    with torch.no_grad():
        logp = torch.log_softmax(predictor.logits(_inputs(predictor, copies)).double(), 1)
    # log(p / (1 - p)), with 1 - p summed from the other classes: exact when p is 0.9999999.
    others = torch.cat([logp[:, :digit], logp[:, digit + 1 :]], dim=1)
    chosen = (logp[:, digit] - torch.logsumexp(others, dim=1)).numpy()
    saliency = np.zeros((INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    saliency[rows, cols] = chosen[0] - chosen[1:]
    return saliency


def network_of(model: nn.Module) -> nn.Module:
    """The single network whose layers are shown: the first member of an ensemble, the
    network inside test-time augmentation."""
    while isinstance(model, (ShiftTTA, Ensemble)):
        model = model.model if isinstance(model, ShiftTTA) else model.members[0]
    return model


def feature_maps(
    model: nn.Module, image: np.ndarray, predictor: Predictor
) -> dict[str, np.ndarray]:
    """The outputs of ``model``'s first two convolutions for the uint8 28x28 ``image``,
    rectified (as the ReLU that follows them in the seed CNN), as float32 (C, H, W).

    For a network with batch norm after its convolutions these are the maps before the
    normalisation: the same shapes, shown the same way.
    """
    network = network_of(model)
    convolutions = [m for m in network.modules() if isinstance(m, nn.Conv2d)][: len(LAYERS)]
    found: dict[str, np.ndarray] = {}

    def keep(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            found[name] = torch.relu(output[0]).float().contiguous().numpy()

        return hook

    handles = [c.register_forward_hook(keep(n)) for n, c in zip(LAYERS, convolutions, strict=False)]
    try:
        with torch.no_grad():
            network(_inputs(predictor, image[None]))
    finally:
        for handle in handles:
            handle.remove()
    return found


# --------------------------------------------------------------------------- pictures


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] (or uint8 already) -> uint8."""
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` (H, W) or (H, W, C) enlarged ``factor`` times, each pixel a square (small
    pictures stay crisp in a browser, which would blur them)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def grid(maps: np.ndarray, columns: int = 8, gap: int = 1) -> np.ndarray:
    """Feature maps (C, H, W) -> one uint8 image of C tiles, ``columns`` to a row, each
    scaled by the layer's largest value (so that strong and weak channels compare), with a
    ``gap`` of mid-gray between tiles."""
    c, h, w = maps.shape
    rows = -(-c // columns)
    top = float(maps.max()) or 1.0
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), 96, dtype=np.uint8)
    for k in range(c):
        r, q = divmod(k, columns)
        out[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = to_uint8(
            maps[k] / top
        )
    return out


def overlay(image: np.ndarray, saliency: np.ndarray, scale: int = 8) -> np.ndarray:
    """The 28x28 input in gray with the saliency over it: red where the ink is evidence for
    the answer, blue where it is evidence against; uint8 RGB, ``scale`` times larger."""
    top = float(np.abs(saliency).max()) or 1.0
    base = image.astype(np.float32)[:, :, None] / 255.0 * 0.6
    rgb = np.repeat(base, 3, axis=2)
    strength = np.clip(np.abs(saliency) / top, 0.0, 1.0)[:, :, None]
    colour = np.where(saliency[:, :, None] >= 0, [1.0, 0.15, 0.1], [0.15, 0.4, 1.0])
    rgb = rgb * (1 - strength) + colour * strength
    return enlarge(to_uint8(rgb), scale)


def saliency_on_ink(saliency: np.ndarray, image: np.ndarray) -> float:
    """The share of the saliency's positive mass that lies on the input's ink (pixels above
    half intensity, grown by one pixel): near 1 when the model looks at the strokes."""
    positive = np.clip(saliency, 0.0, None)
    total = float(positive.sum())
    if total == 0:
        return 0.0
    ink = image > 127
    grown = ink.copy()
    grown[1:] |= ink[:-1]
    grown[:-1] |= ink[1:]
    grown[:, 1:] |= ink[:, :-1]
    grown[:, :-1] |= ink[:, 1:]
    return float(positive[grown].sum()) / total


def figure(explanation: Explanation) -> Figure:
    """One figure of the whole explanation: the image and the preprocessing stages, the
    model's input with the saliency over it, the probabilities, and the feature maps."""
    from matplotlib.figure import Figure

    e = explanation
    p = e.prediction
    fig = Figure(figsize=(14, 9.5), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[1.0, 1.3, 1.6])
    names = ("original", *STAGES)
    axes = top.subplots(1, len(names))
    for ax, name in zip(axes, names, strict=True):
        shown = e.original if name == "original" else to_uint8(e.stages[name])
        ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=255)
        ax.set_title(STAGE_LABELS[name], fontsize=8, wrap=True)
        ax.set_xticks([])
        ax.set_yticks([])
    top.suptitle("1. Preprocessing: from your image to the 28x28 input", fontsize=11)

    ax_in, ax_sal, ax_p = middle.subplots(1, 3, width_ratios=[1, 1, 1.6])
    ax_in.imshow(p.model_input, cmap="gray", vmin=0, vmax=255)
    ax_in.set_title("the model's input (28x28)", fontsize=9)
    ax_sal.imshow(overlay(p.model_input, e.saliency))
    ax_sal.set_title(
        f"occlusion saliency: red = evidence for {p.digit},\nblue = against", fontsize=9
    )
    for ax in (ax_in, ax_sal):
        ax.set_xticks([])
        ax.set_yticks([])
    colours = ["#c0392b" if d == p.digit else "#7f8c8d" for d in range(10)]
    ax_p.bar(range(10), [100 * v for v in p.probabilities], color=colours)
    ax_p.set(xticks=range(10), ylim=(0, 100), xlabel="digit", ylabel="probability (%)")
    verdict = f"{p.digit} ({100 * p.confidence:.1f}%)"
    if p.reason is not None:
        verdict = f"not sure: most like {verdict}; {p.reason.message}"
    ax_p.set_title(f"the answer: {verdict}", fontsize=9, wrap=True)
    middle.suptitle("2. What the network answers, and what it looked at", fontsize=11)

    if e.activations:
        axes = bottom.subplots(1, len(e.activations))
        for ax, (name, maps) in zip(np.atleast_1d(axes), e.activations.items(), strict=True):
            ax.imshow(grid(maps), cmap="magma", vmin=0, vmax=255)
            c, h, w = maps.shape
            ax.set_title(f"{name}: {c} feature maps of {h}x{w}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        bottom.suptitle("3. Inside the network: the first two convolutions", fontsize=11)
    else:
        bottom.text(0.5, 0.5, "(feature maps need the PyTorch backend)", ha="center")
    return fig
