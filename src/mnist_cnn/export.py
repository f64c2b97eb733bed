"""ONNX export: the network as a portable graph with a dynamic batch axis, checked for parity.

``export_onnx`` loads a checkpoint (through ``checkpoint.load_model``, the one loader),
exports it with PyTorch's ONNX exporter, runs the result with ONNX Runtime next to PyTorch
on real MNIST test digits at several batch sizes, and writes the file (atomically) only
when the two agree: same argmax everywhere and max |delta logit| below ``PARITY_TOLERANCE``.
The input normalisation and the architecture travel inside the file as ONNX metadata, so
``Predictor.from_checkpoint("model.onnx", backend="onnx")`` needs nothing else. An ensemble
exports as one graph (its members' averaged probabilities), and so does a model with
test-time augmentation (``tta=True``: the shifts are in the graph); the metadata says so.

ONNX, onnxscript and ONNX Runtime are the optional ``onnx`` extra:
``pip install "mnist-cnn[onnx]"``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnist_cnn import atomic
from mnist_cnn.checkpoint import ENSEMBLE, CheckpointError, LoadedModel, file_sha256, load_model
from mnist_cnn.extras import install_hint
from mnist_cnn.model import INPUT_SIZE, logits_of

PARITY_TOLERANCE = 1e-4
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportError(Exception):
    """The export failed, or the exported model does not match PyTorch."""


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ExportError(install_hint("onnx", exc.name)) from exc


def onnx_metadata(loaded: LoadedModel) -> dict[str, str]:
    """What a consumer of the ONNX file needs to know, as ONNX metadata_props (strings)."""
    accuracy = loaded.metadata.get("metrics", {}).get("test_accuracy")
    info = loaded.info
    averaged = info.architecture == ENSEMBLE or info.tta
    meta = {
        "architecture": loaded.architecture,
        "mean": repr(loaded.mean),
        "std": repr(loaded.std),
        "input": "float32 (N, 1, 28, 28): white digit on black, 20x20 box centred by mass, "
        "then (x / 255 - mean) / std",
        "output": "float32 (N, 10) log of the averaged probabilities (softmax gives them)"
        if averaged
        else "float32 (N, 10) logits",
        "tta": "true" if info.tta else "false",
        "parameters": str(sum(p.numel() for p in loaded.model.parameters())),
        # The hash of the weights that were loaded: load_model checked that the JSON's
        # weights_sha256 is theirs (the file may be replaced since).
        "source_weights_sha256": loaded.metadata.get("weights_sha256")
        or (file_sha256(loaded.path) if loaded.path.is_file() else ""),
    }
    if info.architecture == ENSEMBLE:
        meta["members"] = str(info.members)
        meta["member_architecture"] = info.member_architecture or ""
    if accuracy is not None:
        meta["test_accuracy"] = str(accuracy)
    return meta


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a logger below ERROR for the duration (e.g. the exporter's notes about
    torchvision operators, which a plain CNN never uses)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def onnx_bytes(model: nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    """Export ``model`` (eval mode, CPU) to ONNX bytes with a dynamic batch axis."""
    onnx = _require("onnx")
    _require("onnxscript")  # the exporter's translation library
    model = model.eval().cpu()
    example = torch.zeros(2, 1, INPUT_SIZE, INPUT_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.onnx"
        # The exporter narrates each stage on stdout and warns about things that do not
        # concern a plain CNN; the parity check below is what tells us the graph is right.
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            _quiet_logger("torch.onnx"),
        ):
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    opset_version=OPSET,
                    external_data=False,
                    verbose=False,
                )
                program.save(str(target))
            except Exception as exc:  # the exporter raises many kinds; all mean "failed"
                raise ExportError(f"torch.onnx.export failed: {exc}") from exc
        proto = onnx.load(str(target))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def onnx_runner(
    model_bytes: bytes, threads: int | None = None, what: str = "the ONNX model"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ONNX Runtime session as a function: normalised (N, 1, 28, 28) -> logits (N, 10).

    Raises ``CheckpointError`` when the bytes are not a model ONNX Runtime can run.
    """
    try:
        ort = __import__("onnxruntime")
    except ImportError as exc:
        raise CheckpointError(install_hint("onnx", exc.name)) from exc
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise CheckpointError(f"{what}: ONNX Runtime cannot load it ({exc}).") from exc
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {name: array})[0])

    return run


@dataclass(frozen=True)
class ExportResult:
    """Where the model went and how closely ONNX Runtime reproduces PyTorch."""

    path: Path
    bytes: int
    max_abs_diff: float
    argmax_agree: bool
    batch_sizes: tuple[int, ...]
    examples: int
    description: str = ""  # what the graph computes: ModelInfo.description


def parity(
    model: nn.Module, model_bytes: bytes, inputs: torch.Tensor, batch_sizes: tuple[int, ...]
) -> tuple[float, bool]:
    """Max |delta logit| and whether the argmax agrees, ONNX Runtime vs PyTorch, with the
    inputs split into batches of each size (which exercises the dynamic batch axis)."""
    run = onnx_runner(model_bytes)
    reference = logits_of(model, inputs)
    worst, agree = 0.0, True
    for size in batch_sizes:
        got = torch.cat([run(chunk) for chunk in inputs.split(size)])
        worst = max(worst, float((got - reference).abs().max()))
        agree = agree and bool((got.argmax(1) == reference.argmax(1)).all())
    return worst, agree


def parity_inputs(count: int = 512) -> torch.Tensor:
    """Real MNIST test digits when the bundled data is there (else seeded noise), normalised
    with the standard MNIST statistics."""
    from mnist_cnn import data

    try:
        images = data.load_split("test").images[:count]
    except data.DatasetError:
        images = torch.randint(0, 256, (count, 28, 28), generator=torch.Generator().manual_seed(0))
        images = images.to(torch.uint8)
    return data.normalise(images)


def export_onnx(
    weights: str | Path | None,
    output: str | Path,
    batch_sizes: tuple[int, ...] = (1, 7, 64, 512),
    tolerance: float = PARITY_TOLERANCE,
    inputs: torch.Tensor | None = None,
    tta: bool = False,
) -> ExportResult:
    """Export a checkpoint (a single network's or an ensemble's) to ONNX at ``output`` after
    checking parity with PyTorch; ``tta`` exports the graph with test-time augmentation
    (``checkpoint.load_model(tta=True)``).

    Raises ``CheckpointError`` (unreadable weights) and ``ExportError`` (missing packages,
    exporter failure, or parity outside ``tolerance``: nothing is written then; or a write
    that fails, with a message naming the file).
    """
    loaded = load_model(weights, tta=tta)
    model_bytes = onnx_bytes(loaded.model, onnx_metadata(loaded))
    inputs = parity_inputs() if inputs is None else inputs
    worst, agree = parity(loaded.model, model_bytes, inputs, batch_sizes)
    if not agree or not worst < tolerance:
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch (max |delta logit| {worst:.2e}, tolerance "
            f"{tolerance:.0e}, same argmax: {agree}); nothing was written"
        )
    output = Path(output)
    try:
        atomic.write_bytes(output, model_bytes)
    except OSError as exc:  # atomic.WriteError: "cannot write <file>: <reason>"
        raise ExportError(str(exc)) from exc
    return ExportResult(
        path=output,
        bytes=os.path.getsize(output),
        max_abs_diff=worst,
        argmax_agree=agree,
        batch_sizes=tuple(batch_sizes),
        examples=len(inputs),
        description=loaded.info.description,
    )
