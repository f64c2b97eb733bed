"""ONNX export: parity with PyTorch (same argmax, max |delta logit| < 1e-4) at several batch
sizes through the dynamic batch axis, metadata in the file, the ONNX Runtime backend of the
Predictor, and a refusal to write a model that does not match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

import onnx  # noqa: E402
from _imaging import encode, font_digit, gray8, on_paper, seven  # noqa: E402
from conftest import save_checkpoint  # noqa: E402

from mnist_cnn import export  # noqa: E402
from mnist_cnn.checkpoint import CheckpointError, load_model  # noqa: E402
from mnist_cnn.cli import main  # noqa: E402
from mnist_cnn.data import normalise  # noqa: E402
from mnist_cnn.model import MNIST_MEAN, MNIST_STD, MNISTCNN, FastCNN  # noqa: E402
from mnist_cnn.predict import Predictor  # noqa: E402


def _trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights, plus non-trivial batch-norm statistics (as after training), so that
    the export has to carry them over exactly."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _save(model: torch.nn.Module, path: Path, architecture: str) -> Path:
    return save_checkpoint(model, path, architecture, metrics={"test_accuracy": 0.25})


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = _trained_like(MNISTCNN(), 0)
    return _save(model, tmp_path_factory.mktemp("onnx") / "seed.pth", "MNISTCNN")


@pytest.fixture(scope="module")
def inputs(test_split) -> torch.Tensor:
    return normalise(test_split.images[:300], MNIST_MEAN, MNIST_STD)


@pytest.fixture(scope="module")
def exported(weights: Path, inputs: torch.Tensor) -> export.ExportResult:
    return export.export_onnx(weights, weights.with_suffix(".onnx"), inputs=inputs)


def test_export_reports_parity(exported: export.ExportResult) -> None:
    assert exported.path.is_file() and exported.bytes == exported.path.stat().st_size
    assert exported.max_abs_diff < 1e-4
    assert exported.argmax_agree
    assert 1 in exported.batch_sizes and max(exported.batch_sizes) > 1


def test_onnx_runtime_matches_pytorch_at_any_batch_size(
    exported: export.ExportResult, weights: Path, inputs: torch.Tensor
) -> None:
    # Independent of the export's own check: a fresh session on the written file.
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (first,) = session.get_inputs()
    assert not isinstance(first.shape[0], int)  # a named, dynamic batch dimension
    assert list(first.shape[1:]) == [1, 28, 28]
    model = load_model(weights).model
    with torch.no_grad():
        reference = model(inputs).numpy()
    for size in (1, 2, 33, 300):
        got = session.run(None, {first.name: inputs[:size].numpy()})[0]
        assert got.shape == (size, 10)
        assert np.abs(got - reference[:size]).max() < 1e-4
        assert (got.argmax(1) == reference[:size].argmax(1)).all()


def test_metadata_travels_in_the_file(exported: export.ExportResult) -> None:
    proto = onnx.load(str(exported.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["architecture"] == "MNISTCNN"
    assert float(meta["mean"]) == MNIST_MEAN and float(meta["std"]) == MNIST_STD
    assert meta["test_accuracy"] == "0.25"
    assert len(meta["source_weights_sha256"]) == 64


@pytest.mark.slow  # an ONNX export and its check
def test_batch_norm_network_exports_exactly(tmp_path: Path, inputs: torch.Tensor) -> None:
    weights = _save(_trained_like(FastCNN(), 1), tmp_path / "fast.pth", "FastCNN")
    result = export.export_onnx(weights, tmp_path / "fast.onnx", inputs=inputs[:64])
    assert result.max_abs_diff < 1e-4 and result.argmax_agree


def test_a_mismatching_export_is_not_written(
    exported: export.ExportResult, inputs: torch.Tensor, tmp_path: Path, monkeypatch
) -> None:
    # Another network's weights, and an exporter that (wrongly) produces the graph written
    # earlier for the first network: the parity check must catch it and write nothing.
    other = _save(_trained_like(MNISTCNN(), 123), tmp_path / "other.pth", "MNISTCNN")
    graph = exported.path.read_bytes()
    monkeypatch.setattr(export, "onnx_bytes", lambda model, metadata=None: graph)
    target = tmp_path / "never.onnx"
    with pytest.raises(export.ExportError, match="disagrees"):
        export.export_onnx(other, target, inputs=inputs[:32])
    assert not target.exists()


def test_predictor_onnx_backend_matches_torch(exported: export.ExportResult, weights: Path) -> None:
    images = [
        encode(gray8(on_paper(seven())), "PNG"),
        encode(gray8(on_paper(font_digit(4))), "JPEG", quality=90),
        gray8(font_digit(2)),
    ]
    torch_predictor = Predictor.from_checkpoint(weights)
    onnx_predictor = Predictor.from_checkpoint(exported.path, backend="onnx", threads=1)
    assert onnx_predictor.info.backend == "onnx"
    assert onnx_predictor.info.architecture == "MNISTCNN"
    assert onnx_predictor.info.test_accuracy == 0.25
    for a, b in zip(
        torch_predictor.predict_batch(images), onnx_predictor.predict_batch(images), strict=True
    ):
        assert a.digit == b.digit
        assert np.abs(np.subtract(a.probabilities, b.probabilities)).max() < 1e-5


def test_onnx_backend_from_weights_exports_in_memory(weights: Path) -> None:
    predictor = Predictor.from_checkpoint(weights, backend="onnx")
    assert predictor.info.backend == "onnx" and predictor.info.path == weights
    reference = Predictor.from_checkpoint(weights).predict(gray8(font_digit(6)))
    assert predictor.predict(gray8(font_digit(6))).digit == reference.digit


def test_onnx_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Predictor.from_checkpoint(tmp_path / "missing.onnx", backend="onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(CheckpointError, match="garbage.onnx"):
        Predictor.from_checkpoint(garbage, backend="onnx")


@pytest.mark.slow  # an ONNX export and its check
def test_cli_export(weights: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "cli.onnx"
    assert main(["export", "--model", str(weights), "--output", str(target)]) == 0
    out = capsys.readouterr().out
    assert str(target) in out and "same argmax: yes" in out
    assert target.is_file()
    assert main(["export", "--model", str(tmp_path / "missing.pth")]) == 1
    assert "not found" in capsys.readouterr().err


def _with_metadata(exported: export.ExportResult, tmp_path: Path, **changes: str) -> Path:
    """A copy of the exported model whose metadata_props have ``changes``."""
    proto = onnx.load(str(exported.path))
    for prop in proto.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    path = tmp_path / "edited.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"mean": "abc"}, "the ONNX metadata 'mean' is 'abc', not a number"),
        ({"parameters": "many"}, "the ONNX metadata 'parameters' is 'many', not a number"),
        ({"test_accuracy": "high"}, "the ONNX metadata 'test_accuracy' is 'high'"),
        ({"std": "0"}, "bad ONNX metadata: input.std must be greater than 0"),
        ({"std": "-0.3"}, "bad ONNX metadata: input.std must be greater than 0"),
        ({"std": "nan"}, "bad ONNX metadata: input.std must be a finite number"),
        ({"mean": "inf"}, "bad ONNX metadata: input.mean must be a finite number"),
        ({"parameters": "-5"}, "'parameters' must be a positive count"),
        ({"architecture": "ResNet152"}, "bad ONNX metadata: unknown architecture 'ResNet152'"),
        # Valid numbers, but inputs divided by 1e-45 are infinite: the outputs are NaN.
        ({"std": "1e-45"}, "the model's outputs are NaN or infinite"),
    ],
)
def test_bad_onnx_metadata_is_a_checkpoint_error(
    changes: dict[str, str], words: str, exported: export.ExportResult, tmp_path: Path
) -> None:
    path = _with_metadata(exported, tmp_path, **changes)
    with pytest.raises(CheckpointError) as info:
        Predictor.from_checkpoint(path, backend="onnx")
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message


def test_an_export_that_cannot_be_written_is_one_line(
    exported: export.ExportResult,
    weights: Path,
    inputs: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph = exported.path.read_bytes()  # the same network: parity holds, quickly
    monkeypatch.setattr(export, "onnx_bytes", lambda model, metadata=None: graph)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(export.ExportError) as info:
        export.export_onnx(weights, blocker / "m.onnx", inputs=inputs[:32])
    assert str(info.value) == f"cannot write {blocker / 'm.onnx'}: Not a directory"
