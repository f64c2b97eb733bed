"""The Predictor: what it loads (an ONNX file needs the ONNX backend; by default, the shipped
model), the API's shapes and batching, and real accuracy on uploads. The checkpoint's own
failures, through the Predictor too, are in test_checkpoint.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _imaging import encode, font_digit, gray8, on_paper, seven

from mnist_cnn.checkpoint import CheckpointError
from mnist_cnn.model import MNIST_MEAN, MNIST_STD, MNISTCNN
from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Prediction, Predictor
from mnist_cnn.preprocess import NoDigitError, UnsupportedImageError


@pytest.fixture(scope="module")
def predictor(random_weights: Path) -> Predictor:
    return Predictor.from_checkpoint(random_weights)


PAPER_SEVEN = encode(gray8(on_paper(seven())), "PNG")


# --------------------------------------------------------------------------- loading


def test_onnx_file_needs_the_onnx_backend(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"whatever")
    with pytest.raises(CheckpointError, match="backend='onnx'"):
        Predictor.from_checkpoint(path)


def test_unknown_backend(random_weights: Path) -> None:
    with pytest.raises(ValueError, match="backend"):
        Predictor.from_checkpoint(random_weights, backend="tensorflow")


def test_default_is_the_shipped_model() -> None:
    assert Predictor.from_checkpoint().info.path == SHIPPED_MODEL


# --------------------------------------------------------------------------- the API


def test_prediction_fields(predictor: Predictor) -> None:
    p = predictor.predict(PAPER_SEVEN)
    assert isinstance(p, Prediction)
    assert len(p.probabilities) == 10 and abs(sum(p.probabilities) - 1) < 1e-9
    assert p.digit == int(np.argmax(p.probabilities))
    assert p.confidence == max(p.probabilities)
    assert len(p.top3) == 3 and p.top3[0] == (p.digit, p.confidence)
    assert [q for _, q in p.top3] == sorted((q for _, q in p.top3), reverse=True)
    assert p.model_input.shape == (28, 28) and p.model_input.dtype == np.uint8
    assert np.array_equal(p.model_input, predictor.prepare(PAPER_SEVEN))
    d = json.loads(json.dumps(p.to_dict()))
    assert set(d) == {"digit", "confidence", "status", "reason", "probabilities", "top3"}
    assert d["status"] == "ok" and d["reason"] is None
    assert d["digit"] == p.digit and len(d["probabilities"]) == 10
    assert d["top3"][0] == {"digit": p.digit, "probability": round(p.confidence, 6)}


def test_logits_match_the_model(predictor: Predictor, random_weights: Path) -> None:
    model = MNISTCNN()
    model.load_state_dict(torch.load(random_weights, weights_only=True))
    model.eval()
    p = predictor.predict(PAPER_SEVEN)
    x = (torch.from_numpy(p.model_input).float() / 255 - MNIST_MEAN) / MNIST_STD
    with torch.no_grad():
        expected = torch.softmax(model(x[None, None]).double(), 1)[0]
    assert np.allclose(p.probabilities, expected.numpy(), atol=1e-5)


def test_every_kind_of_source(predictor: Predictor, tmp_path: Path) -> None:
    path = tmp_path / "seven.png"
    path.write_bytes(PAPER_SEVEN)
    gray = on_paper(seven())
    sources = [path, str(path), PAPER_SEVEN, gray8(gray), np.round(gray * 255).astype(np.uint8)]
    inputs = [predictor.predict(s).model_input for s in sources]
    for other in inputs[1:]:
        assert np.array_equal(other, inputs[0])


def test_predict_batch_is_one_forward_pass(predictor: Predictor) -> None:
    images = [PAPER_SEVEN, encode(gray8(on_paper(font_digit(3))), "PNG"), gray8(font_digit(8))]
    calls = []
    forward = predictor._forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return forward(x)

    predictor._forward = counting
    try:
        batch = predictor.predict_batch(images)
    finally:
        predictor._forward = forward
    assert calls == [3]
    singles = [predictor.predict(image) for image in images]
    for b, s in zip(batch, singles, strict=True):
        assert b.digit == s.digit
        assert np.allclose(b.probabilities, s.probabilities, atol=1e-6)
        assert np.array_equal(b.model_input, s.model_input)
    assert predictor.predict_batch([]) == []


def test_bad_images_raise_image_errors(predictor: Predictor) -> None:
    with pytest.raises(UnsupportedImageError):
        predictor.predict(b"not an image")
    with pytest.raises(NoDigitError):
        predictor.predict(np.ones((64, 64), np.uint8) * 255)
    with pytest.raises(UnsupportedImageError):
        predictor.predict_batch([PAPER_SEVEN, b"\x00" * 10])


def test_info(predictor: Predictor, random_weights: Path) -> None:
    info = predictor.info
    assert info.architecture == "MNISTCNN"
    assert info.path == random_weights
    assert info.parameters == sum(p.numel() for p in MNISTCNN().parameters())
    assert info.test_accuracy == 0.5
    assert info.backend == "torch"
    assert (info.mean, info.std) == (predictor.mean, predictor.std) == (0.1307, 0.3081)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.backend = "changed"  # type: ignore[misc]


# ------------------------------------------------------------ accuracy (shipped model)


def test_shipped_model_reads_mnist_digits_as_photos(
    shipped_predictor: Predictor, test_split
) -> None:
    # MNIST test digits printed dark on light paper, enlarged, saved as JPEG.
    digits = test_split.images[:300].numpy()
    labels = test_split.labels[:300].numpy()
    uploads = []
    for d in digits:
        big = np.asarray(gray8(d / 255).resize((140, 140)), np.float32) / 255
        uploads.append(encode(gray8(on_paper(big)), "JPEG", quality=85))
    predicted = np.array([p.digit for p in shipped_predictor.predict_batch(uploads)])
    assert (predicted == labels).mean() >= 0.98


def test_shipped_model_reads_printed_digits(shipped_predictor: Predictor) -> None:
    uploads = [encode(gray8(on_paper(font_digit(d))), "PNG") for d in range(10)]
    uploads += [gray8(font_digit(d, size=90, canvas=300)) for d in range(10)]  # white on black
    predicted = [p.digit for p in shipped_predictor.predict_batch(uploads)]
    assert predicted == list(range(10)) * 2
