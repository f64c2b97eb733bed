"""User images -> the model's input, in one call: decode (``decode.py``), find the digit and
redraw it the MNIST way (``locate.py``), then normalise as the checkpoint was trained.

    located = prepare("photo.jpg")          # Located: the 28x28 image, its box, its marks
    x, image = preprocess("photo.jpg", mean, std)

The Predictor, the CLI, the web app, Gradio and the notebooks all go through ``prepare``;
the error types and constants of both stages are importable from here.
"""

from __future__ import annotations

import numpy as np
import torch

from mnist_cnn.data import normalise
from mnist_cnn.decode import (
    MAX_PIXELS,
    Decoded,
    ImageError,
    ImageSource,
    ImageTooLargeError,
    NoDigitError,
    UnsupportedImageError,
    decode,
    load_image,
)
from mnist_cnn.locate import FIELD, STAGES, WORK_SIDE, Located, locate, stroke_width, to_mnist

__all__ = [
    "FIELD",
    "MAX_PIXELS",
    "STAGES",
    "WORK_SIDE",
    "Decoded",
    "ImageError",
    "ImageSource",
    "ImageTooLargeError",
    "Located",
    "NoDigitError",
    "UnsupportedImageError",
    "decode",
    "load_image",
    "normalise",
    "prepare",
    "preprocess",
    "stroke_width",
    "to_mnist",
]


def prepare(
    source: ImageSource,
    max_pixels: int = MAX_PIXELS,
    stages: dict[str, np.ndarray] | None = None,
) -> Located:
    """Any image (a path, bytes, a PIL image or a NumPy array) -> the located digit.

    ``stages``, when given, receives the intermediate images (``locate.STAGES``).

    JPEGs are decoded at a reduced scale that still keeps ``WORK_SIDE`` pixels, which is
    all the analysis uses. Raises the ``ImageError`` subclasses: ``UnsupportedImageError``,
    ``ImageTooLargeError`` (over ``max_pixels``, from the header) and ``NoDigitError``.
    """
    decoded = decode(source, max_pixels, max_side=WORK_SIDE)
    located = locate(decoded.gray, stages)
    if decoded.scale == 1.0:
        return located
    # The box in the file's own pixels, not in those of the reduced decode. (Built directly:
    # dataclasses.replace inspects the fields on every call.)
    x0, y0, x1, y1 = (round(v / decoded.scale) for v in located.box)
    return Located(located.image, (x0, y0, x1, y1), located.marks, located.dark_ink)


def preprocess(
    source: ImageSource, mean: float, std: float, max_pixels: int = MAX_PIXELS
) -> tuple[torch.Tensor, np.ndarray]:
    """Any image -> (normalised float tensor (1, 28, 28), the uint8 28x28 image the model sees).

    ``mean`` and ``std`` are the checkpoint's input normalisation (``LoadedModel.mean/std``).
    """
    image = prepare(source, max_pixels).image
    return normalise(image, mean, std)[0], image
