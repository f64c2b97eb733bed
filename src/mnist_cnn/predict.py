"""The Predictor: images in, digits out, for the CLI, the web app, Gradio and notebooks.

    predictor = Predictor.from_checkpoint()          # the shipped model
    p = predictor.predict("photo.jpg")               # a path, bytes, a PIL image or an array
    p.digit, p.confidence, p.top3, p.model_input     # model_input: the 28x28 the model saw
    r = predictor.read_number("2026.jpg")            # a whole number, digit by digit
    r.number, r.confidence, r.status, r.digits[0].prediction, r.digits[0].box

Weights load through ``checkpoint.load_model`` (``torch.load(weights_only=True)``), so a
bad checkpoint is a ``CheckpointError`` and a pickle that would run code is refused. The
preprocessing (``mnist_cnn.preprocess``) uses the normalisation saved with the checkpoint.
Two backends run the network: PyTorch (``backend="torch"``) and ONNX Runtime
(``backend="onnx"``, the optional ``onnx`` extra), from a ``.onnx`` file written by
``mnist-cnn export`` or exported in memory from the weights. An ensemble's checkpoint loads
like any other, and ``tta=True`` averages each answer over one-pixel shifts of the input
(``model.ShiftTTA``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnist_cnn.checkpoint import (
    ENSEMBLE,
    MAX_ENSEMBLE_MEMBERS,
    CheckpointError,
    ModelInfo,
    check_outputs,
    find_model,
    load_model,
    metadata_path,
    metadata_problem,
    read_metadata,
)
from mnist_cnn.extras import install_hint
from mnist_cnn.model import MNIST_MEAN, MNIST_STD, NUM_CLASSES, logits_of
from mnist_cnn.preprocess import (
    MAX_PIXELS,
    ImageSource,
    Located,
    NoDigitError,
    decode,
    normalise,
    prepare,
)
from mnist_cnn.segment import NUMBER_WORK_SIDE, segment
from mnist_cnn.unsure import Unsure, UnsurePolicy, assess

BACKENDS = ("torch", "onnx")


# A prediction's status: "ok", or "unsure" when the input is probably not one digit or the
# model cannot tell (the reason says which, ``unsure.py`` decides). "Not sure" is an
# answer, not an error.
OK = "ok"
UNSURE = "unsure"
# A number's reason code when the digits' segmentation itself is doubtful (touching digits
# parted where it is uncertain, marks left out, more than one line or too many digits).
SEGMENTATION = "segmentation"


@dataclass(frozen=True)
class Prediction:
    """What the model thinks of one image."""

    digit: int
    confidence: float
    probabilities: tuple[float, ...]  # 10, summing to 1
    top3: tuple[tuple[int, float], ...]  # (digit, probability), most likely first
    model_input: np.ndarray = field(repr=False, compare=False)  # uint8 (28, 28)
    reason: Unsure | None = None  # None: the model is sure

    @property
    def status(self) -> str:
        """``"ok"`` or ``"unsure"``."""
        return OK if self.reason is None else UNSURE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: digit, confidence, status and reason, probabilities and top3 (without
        the image). ``reason`` is null when the status is "ok"."""
        return {
            "digit": self.digit,
            "confidence": round(self.confidence, 6),
            "status": self.status,
            "reason": None if self.reason is None else self.reason.to_dict(),
            "probabilities": [round(p, 6) for p in self.probabilities],
            "top3": [{"digit": d, "probability": round(p, 6)} for d, p in self.top3],
        }


@dataclass(frozen=True)
class NumberDigit:
    """One digit of a number: what the model thinks of it and where it is."""

    prediction: Prediction
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the image's pixels, end exclusive

    def to_dict(self) -> dict[str, Any]:
        """The prediction's ``to_dict`` with the digit's ``box``."""
        return {**self.prediction.to_dict(), "box": list(self.box)}


@dataclass(frozen=True)
class NumberReading:
    """A whole number read digit by digit, left to right (``Predictor.read_number``)."""

    digits: tuple[NumberDigit, ...]
    number: str  # the digits as a string: "2026"
    # The product of the digits' confidences: the model's probability that every digit is
    # right, if its answers were independent (the segmentation's own doubt is not in it).
    confidence: float
    reason: Unsure | None = None  # None: every digit and the segmentation are sure

    @property
    def status(self) -> str:
        """``"ok"``, or ``"unsure"`` when a digit is unsure or the segmentation doubtful."""
        return OK if self.reason is None else UNSURE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: number, confidence, status, reason and each digit's ``to_dict``."""
        return {
            "number": self.number,
            "confidence": round(self.confidence, 6),
            "status": self.status,
            "reason": None if self.reason is None else self.reason.to_dict(),
            "digits": [d.to_dict() for d in self.digits],
        }


def _number_reading(digits: Sequence[NumberDigit], doubts: Sequence[str]) -> NumberReading:
    """The reading of ``digits``: unsure with the segmentation's first doubt, else with
    the first unsure digit's reason (saying which digit)."""
    reason = None
    if doubts:
        reason = Unsure(SEGMENTATION, doubts[0])
    else:
        for k, d in enumerate(digits, 1):
            if d.prediction.reason is not None:
                why = d.prediction.reason
                reason = Unsure(why.code, f"Digit {k} of {len(digits)}: {why.message}")
                break
    return NumberReading(
        digits=tuple(digits),
        number="".join(str(d.prediction.digit) for d in digits),
        confidence=float(np.prod([d.prediction.confidence for d in digits])),
        reason=reason,
    )


def _predictions(
    logits: torch.Tensor, inputs: np.ndarray, reasons: Sequence[Unsure | None]
) -> list[Prediction]:
    probabilities = torch.softmax(logits.double(), dim=1)
    top = probabilities.topk(3, dim=1)
    out = []
    for i, row in enumerate(probabilities.tolist()):
        top3 = tuple(
            (int(d), float(p))
            for d, p in zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)
        )
        out.append(
            Prediction(
                digit=top3[0][0],
                confidence=top3[0][1],
                probabilities=tuple(float(p) for p in row),
                top3=top3,
                model_input=inputs[i],
                reason=reasons[i],
            )
        )
    return out


class Predictor:
    """A loaded model plus its preprocessing. Thread-safe: ``predict`` keeps no state.

    Build it with ``from_checkpoint``; the constructor takes a ready forward function.
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        info: ModelInfo,
        max_pixels: int = MAX_PIXELS,
        policy: UnsurePolicy | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        self._forward = forward
        # The network itself when PyTorch runs it (None for ONNX Runtime): ``explain``
        # reads its layers.
        self.model = model
        self.info = info
        self.max_pixels = max_pixels
        # When to answer "not sure"; the checkpoint's own calibration, or never.
        self.policy = policy or UnsurePolicy()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        backend: str = "torch",
        threads: int | None = None,
        max_pixels: int = MAX_PIXELS,
        tta: bool = False,
    ) -> Predictor:
        """Load a checkpoint for inference (default: ``paths.find_model``'s choice: the
        working directory's models/, else the model shipped in the package).

        ``path`` is a ``.pth`` state_dict (its ``.json`` metadata beside it; a single
        network's or an ensemble's), a training run's directory or, with
        ``backend="onnx"``, also a ``.onnx`` file from ``mnist-cnn export``. ``tta``
        averages each answer over one-pixel shifts of the input (five forward passes; an
        ONNX file must have been exported with it). ``threads`` are ONNX Runtime's, per
        session; PyTorch's and OpenCV's thread pools are process-wide, so the command that
        owns the process sets them. Raises ``CheckpointError``, and ``ValueError`` for an
        unknown backend.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        path = find_model(path).path
        if backend == "onnx":
            return cls._from_onnx(path, threads, max_pixels, tta)
        if path.suffix == ".onnx":
            raise CheckpointError(f"{path}: an ONNX model needs backend='onnx'.")
        loaded = load_model(path, tta=tta)  # eval mode, channels-last weights
        model = loaded.model
        return cls(
            lambda x: logits_of(model, x), loaded.info, max_pixels, _policy(loaded.info), model
        )

    @classmethod
    def _from_onnx(cls, path: Path, threads: int | None, max_pixels: int, tta: bool) -> Predictor:
        from mnist_cnn import export

        if path.suffix == ".onnx":
            if not path.is_file():
                raise CheckpointError(
                    f"{path}: ONNX model not found. Write it with `mnist-cnn export --format onnx`."
                )
            model_bytes = path.read_bytes()
            info = _onnx_info(path, _onnx_metadata(path, model_bytes))
            if tta and not info.tta:
                # The graph is what it is: test-time augmentation has to be exported in it.
                raise CheckpointError(
                    f"{path}: this ONNX model was exported without test-time augmentation. "
                    f"Export it with `mnist-cnn export --tta`, or leave out --tta."
                )
        else:
            loaded = load_model(path, tta=tta)
            model_bytes = export.onnx_bytes(loaded.model, metadata=export.onnx_metadata(loaded))
            info = dataclasses.replace(loaded.info, backend="onnx")
        run = export.onnx_runner(model_bytes, threads=threads, what=str(path))
        check_outputs(path, run, info.mean, info.std)  # a graph can compute NaN, too
        return cls(run, info, max_pixels, _policy(info))

    @property
    def mean(self) -> float:
        """The input normalisation's mean (the checkpoint's)."""
        return self.info.mean

    @property
    def std(self) -> float:
        """The input normalisation's standard deviation (the checkpoint's)."""
        return self.info.std

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for normalised inputs (N, 1, 28, 28), in chunks (no preprocessing)."""
        return self._forward(inputs)

    def prepare(self, image: ImageSource) -> np.ndarray:
        """The uint8 (28, 28) image the model sees for ``image``. Raises ``ImageError``."""
        return self.locate(image).image

    def locate(self, image: ImageSource, stages: dict[str, np.ndarray] | None = None) -> Located:
        """The located digit of ``image`` (its 28x28 input, box and marks); ``stages``
        receives the preprocessing's intermediate images. Raises ``ImageError``."""
        return prepare(image, self.max_pixels, stages)

    def predict_inputs(
        self, inputs: np.ndarray, marks: Sequence[int] | None = None
    ) -> list[Prediction]:
        """Classify prepared uint8 (N, 28, 28) images (from ``prepare``) in one batched pass.

        ``marks`` are the located digits' mark counts (``Located.marks``), for the "not
        sure" rule about several marks; ``predict_located`` passes them.
        """
        inputs = np.asarray(inputs, dtype=np.uint8).reshape(-1, 28, 28)
        if len(inputs) == 0:
            return []
        logits = self._forward(normalise(inputs, self.info.mean, self.info.std))
        if logits.shape != (len(inputs), NUM_CLASSES):
            raise RuntimeError(f"the model returned logits of shape {tuple(logits.shape)}")
        reasons = assess(logits, inputs, self.policy, marks)
        return _predictions(logits, inputs, reasons)

    def predict_located(self, located: Sequence[Located]) -> list[Prediction]:
        """Classify located digits (from ``locate``) in one batched pass."""
        if not located:
            return []
        images = np.stack([one.image for one in located])
        return self.predict_inputs(images, [one.marks for one in located])

    def predict(self, image: ImageSource) -> Prediction:
        """Classify one image (a path, bytes, a PIL image or a NumPy array).

        Raises ``ImageError`` subclasses: ``UnsupportedImageError``, ``ImageTooLargeError``,
        ``NoDigitError``.
        """
        return self.predict_located([self.locate(image)])[0]

    def read_number(self, image: ImageSource) -> NumberReading:
        """Read the whole number written in ``image`` (a single line of up to
        ``segment.MAX_DIGITS`` digits), digit by digit, left to right (``mnist_cnn.segment``).

        Each digit is normalised exactly as a single digit is; touching digits are parted
        by recognition (the path of candidate cuts whose digits the model reads best). An
        image with one digit goes through the single-digit path (``locate``, as ``predict``)
        unchanged. The reading is "unsure" when a digit is, or when the segmentation is
        doubtful (reason code ``"segmentation"``). Raises the ``ImageError`` subclasses, as
        ``predict``.
        """
        decoded = decode(image, self.max_pixels, max_side=NUMBER_WORK_SIDE)
        try:
            found = segment(decoded.gray, self.one_digit_scores)
        except NoDigitError:
            found = None  # the single-digit path decides (it raises its own error)
        if found is None or len(found.digits) <= 1:
            located = self.locate(image)
            prediction = self.predict_located([located])[0]
            doubts = () if found is None else found.doubts
            return _number_reading([NumberDigit(prediction, located.box)], doubts)
        inputs = np.stack([d.image for d in found.digits])
        # Each input is one segmented digit: one mark (the aspect and loop rules still apply).
        predictions = self.predict_inputs(inputs, [1] * len(inputs))
        digits = []
        for d, p in zip(found.digits, predictions, strict=True):
            box = d.box
            if decoded.scale != 1.0:  # in the file's own pixels, not the reduced decode's
                x0, y0, x1, y1 = (round(v / decoded.scale) for v in box)
                box = (x0, y0, x1, y1)
            digits.append(NumberDigit(p, box))
        return _number_reading(digits, found.doubts)

    def one_digit_scores(self, inputs: np.ndarray) -> np.ndarray:
        """How much each uint8 (N, 28, 28) input looks like one digit: the model's top
        probability, (N,) in (0, 1]. ``segment`` chooses cuts between touching digits by it."""
        inputs = np.asarray(inputs, dtype=np.uint8).reshape(-1, 28, 28)
        logits = self._forward(normalise(inputs, self.info.mean, self.info.std))
        return torch.softmax(logits.double(), dim=1).max(dim=1).values.numpy()

    def predict_batch(self, images: Sequence[ImageSource]) -> list[Prediction]:
        """Classify several images with one batched forward pass.

        Every image is prepared first, so the first bad one raises its ``ImageError``
        before any work is done on the network; use ``prepare`` and ``predict_inputs`` to
        handle failures per image.
        """
        return self.predict_located([self.locate(image) for image in images])


def _policy(info: ModelInfo) -> UnsurePolicy:
    """The checkpoint's "not sure" thresholds (never unsure when it has none).

    With TTA, the model answers with log-probabilities, not the logits its thresholds were
    measured on: the largest-logit rule (``min_max_logit``) would then read a logarithm
    (at most 0) against a logit threshold and flag every digit, so it is off. An ensemble
    answers with log-probabilities already, and its thresholds were measured on them. The
    other rules read probabilities or the input, which TTA keeps meaningful.
    """
    try:
        policy = UnsurePolicy.from_metadata(info.metadata.get("unsure"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{metadata_path(info.path)}: bad 'unsure' entry ({exc}).") from exc
    if info.tta and info.architecture != ENSEMBLE:
        policy = dataclasses.replace(policy, min_max_logit=None)
    return policy


def _onnx_info(path: Path, meta: Mapping[str, str]) -> ModelInfo:
    """The ModelInfo of an ONNX file from its metadata_props (strings, as ``mnist-cnn
    export`` writes them), checked as a checkpoint's JSON is (``metadata_problem``): numbers
    that do not parse, a std of 0, an unknown architecture are a ``CheckpointError``.

    The JSON beside a .pth describes this ONNX file only if it was exported from those very
    weights (its ``weights_sha256`` is the file's ``source_weights_sha256``); then its
    metrics and "not sure" thresholds apply, else the metrics embedded at export time.
    """

    def number(key: str, parse: Callable[[str], float]) -> float | None:
        if key not in meta:
            return None
        try:
            return parse(meta[key])
        except ValueError:
            raise CheckpointError(
                f"{path}: the ONNX metadata {key!r} is {meta[key][:40]!r}, not a number. "
                f"Export the model again with `mnist-cnn export`."
            ) from None

    mean, std = number("mean", float), number("std", float)
    parameters, accuracy = number("parameters", int), number("test_accuracy", float)
    members = number("members", int)
    architecture = meta.get("architecture")
    embedded: dict[str, Any] = {
        "architecture": architecture,
        "input": {"mean": mean, "std": std},
        "metrics": {} if accuracy is None else {"test_accuracy": accuracy},
    }
    problem = None
    if architecture == ENSEMBLE:
        if members is None or not 1 <= members <= MAX_ENSEMBLE_MEMBERS:
            problem = f"'members' must be 1 to {MAX_ENSEMBLE_MEMBERS}, not {members}"
        else:  # as a checkpoint's "ensemble" entry, for the same checks
            embedded["ensemble"] = {
                "architecture": meta.get("member_architecture"),
                "members": [{}] * int(members),
            }
    tta = meta.get("tta", "false")
    problem = problem or metadata_problem(embedded)
    if problem is None and tta not in ("true", "false"):
        problem = f"'tta' must be true or false, not {tta[:40]!r}"
    if problem is None and parameters is not None and parameters < 1:
        problem = f"'parameters' must be a positive count, not {parameters}"
    if problem is not None:
        raise CheckpointError(
            f"{path}: bad ONNX metadata: {problem}. Export the model again with `mnist-cnn export`."
        )
    try:
        side = read_metadata(path)
    except CheckpointError:
        side = {}  # the JSON of the .pth, not of this file: unusable, so not used
    source = meta.get("source_weights_sha256")
    side_meta = side if source and side.get("weights_sha256") == source else {}
    ensemble = embedded.get("ensemble")
    return ModelInfo(
        path=path,
        architecture=meta.get("architecture", "unknown"),
        mean=MNIST_MEAN if mean is None else mean,
        std=MNIST_STD if std is None else std,
        parameters=None if parameters is None else int(parameters),
        metrics=dict(side_meta.get("metrics") or embedded["metrics"]),
        backend="onnx",
        metadata=side_meta,
        members=1 if ensemble is None else len(ensemble["members"]),
        member_architecture=None if ensemble is None else ensemble["architecture"],
        tta=tta == "true",
    )


def _onnx_metadata(path: Path, model_bytes: bytes) -> dict[str, str]:
    """The metadata_props that ``mnist-cnn export`` writes into the ONNX file."""
    try:
        import onnx
    except ImportError as exc:
        raise CheckpointError(install_hint("onnx", exc.name)) from exc
    try:
        proto = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # onnx raises DecodeError and others from protobuf
        raise CheckpointError(f"{path}: not a readable ONNX model ({exc}).") from exc
    return {p.key: p.value for p in proto.metadata_props}
