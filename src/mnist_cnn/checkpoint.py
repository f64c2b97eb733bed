"""Saving and loading models: weights in a plain state_dict, metadata in JSON beside them.

``models/mnist_cnn_model.pth`` holds nothing but the state_dict, exactly what the seed
saved, so ``MNISTCNN().load_state_dict(torch.load(path, map_location="cpu"))`` keeps
working wherever the file was trained. ``models/mnist_cnn_model.json`` says what the
weights are: architecture, input normalisation, metrics, dataset hash, training config.

``load_model`` is the one way the CLI, the web app, the notebooks and the Gradio app load a
model. It never unpickles arbitrary objects (``weights_only=True``), and every failure is a
``CheckpointError`` that names the file, what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_cnn import atomic, paths
from mnist_cnn.model import ARCHITECTURES, MNIST_MEAN, MNIST_STD, build_model


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, unsafe or does not fit the architecture."""


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a model, read once from its checkpoint (the JSON beside the
    weights, or an ONNX file's metadata): the Predictor carries it, and ``mnist-cnn
    predict``, the API's ``/api/model``, the page and Gradio show it."""

    path: Path
    architecture: str
    mean: float  # the input normalisation it was trained with
    std: float
    parameters: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)  # test_accuracy, val_loss...
    backend: str = "torch"  # what runs it: "torch" or "onnx"
    # The checkpoint's whole JSON ({} for a seed-format state_dict without one).
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def test_accuracy(self) -> float | None:
        """Accuracy on the MNIST test set when the checkpoint records it."""
        value = self.metrics.get("test_accuracy")
        return None if value is None else float(value)

    @classmethod
    def from_metadata(
        cls,
        path: Path,
        metadata: Mapping[str, Any],
        *,
        architecture: str,
        parameters: int | None,
        backend: str = "torch",
    ) -> ModelInfo:
        """The facts of a checkpoint's JSON; a model without one gets MNIST's normalisation."""
        normalisation = metadata.get("input") or {}
        return cls(
            path=path,
            architecture=architecture,
            mean=float(normalisation.get("mean", MNIST_MEAN)),
            std=float(normalisation.get("std", MNIST_STD)),
            parameters=parameters,
            metrics=dict(metadata.get("metrics") or {}),
            backend=backend,
            metadata=metadata,
        )


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference (eval mode, on its device) and what is known about it."""

    model: nn.Module
    info: ModelInfo

    # The facts most callers want, without the ``.info``.
    @property
    def path(self) -> Path:
        """The weights file."""
        return self.info.path

    @property
    def architecture(self) -> str:
        """The network's name in ``model.ARCHITECTURES``."""
        return self.info.architecture

    @property
    def mean(self) -> float:
        """Input normalisation: the mean the model was trained with."""
        return self.info.mean

    @property
    def std(self) -> float:
        """Input normalisation: the standard deviation the model was trained with."""
        return self.info.std

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The JSON beside the weights ({} when there is none)."""
        return self.info.metadata


def metadata_path(weights_path: str | Path) -> Path:
    """The JSON file that sits beside a weights file."""
    return Path(weights_path).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_model(model: nn.Module, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the state_dict to ``path`` and ``metadata`` (plus the weights' hash) beside it.

    Both writes are atomic. Tensors are saved contiguous and on the CPU, so the file loads
    anywhere, channels-last training or GPU notwithstanding.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic.write_with(path, lambda f: torch.save(state, f))
    atomic.write_json(metadata_path(path), {**metadata, "weights_sha256": file_sha256(path)})


def find_model(path: str | Path | None) -> paths.Found:
    """``paths.find_model``, with its ``NotFoundError`` as a ``CheckpointError``."""
    try:
        return paths.find_model(path)
    except paths.NotFoundError as exc:
        raise CheckpointError(str(exc)) from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    fix = "Train a model with `mnist-cnn train`, or give another with --model."
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found. {fix}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty. {fix}")
    with path.open("rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive ("PK"); the legacy format is a pickle (protocol byte
    # 0x80). Anything else is garbage, and must not be reported as an unsafe pickle below.
    if not head.startswith((b"PK", b"\x80")):
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint; the file is truncated or corrupt "
            f"(neither torch.save's zip archive nor a pickle). {fix}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any pickle that would import or call something: that is the
        # safety net against checkpoints that run code when loaded.
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors, which could "
            f"run code when unpickled ({str(exc).splitlines()[0]}). Only load checkpoints you "
            f"trust, saved as a plain state_dict."
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint; the file is truncated or corrupt "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). {fix}"
        ) from exc
    # A full training checkpoint (from --resume) carries the weights under "model".
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a state_dict (a mapping of names to tensors), found "
            f"{type(obj).__name__}. {fix}"
        )
    # Weights saved from nn.DataParallel or torch.compile carry a prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def _read_metadata(path: Path) -> dict[str, Any]:
    meta_path = metadata_path(path)
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{meta_path}: the metadata beside {path.name} is not valid JSON ({exc}). "
            f"Delete it to load the weights as a plain seed-format model, or retrain."
        ) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}.")
    return meta


def _infer_architecture(state: dict[str, torch.Tensor]) -> str:
    for name, cls in ARCHITECTURES.items():
        if set(state) == set(cls().state_dict()):
            return name
    return "MNISTCNN"  # the seed format; the mismatch is reported when loading


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load weights (and their JSON metadata, when present) into the right architecture.

    ``path`` is a weights file or a run directory; without it, ``paths.find_model`` decides
    (./models/, then the model shipped in the package). A plain seed-style state_dict
    without metadata loads as ``MNISTCNN`` with the standard MNIST normalisation. Raises
    ``CheckpointError``.
    """
    path = find_model(path).path
    state = _read_state_dict(path)
    meta = _read_metadata(path)
    architecture = meta.get("architecture") or _infer_architecture(state)
    try:
        model = build_model(architecture)
    except ValueError as exc:
        raise CheckpointError(f"{metadata_path(path)}: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        missing = sorted(set(model.state_dict()) - set(state))
        unexpected = sorted(set(state) - set(model.state_dict()))
        detail = (
            f"missing keys {missing[:6]}, unexpected keys {unexpected[:6]}"
            if missing or unexpected
            else str(exc).splitlines()[-1].strip()
        )
        raise CheckpointError(
            f"{path}: these weights do not fit the {architecture} architecture ({detail}). "
            f"Is this a checkpoint of another model?"
        ) from exc
    # Channels-last weights match the channels-last inputs of ``model.logits_of``: oneDNN
    # then skips converting every convolution's weights on every call.
    model = model.to(device, memory_format=torch.channels_last).eval()
    info = ModelInfo.from_metadata(
        path,
        meta,
        architecture=architecture,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    return LoadedModel(model, info)


def promote(source: str | Path, destination: str | Path = paths.LOCAL_MODEL) -> Path:
    """Make a run's model the one in use: copy its weights and JSON to ``destination``
    (default ``./models/mnist_cnn_model.pth``, where every command here looks first).

    This is the deliberate way to replace a model; training alone never does. ``source`` is
    a weights file or a run directory. The model must load, and its JSON must describe
    these very weights (``weights_sha256``): nothing is replaced otherwise. Returns the new
    weights' path. Raises ``CheckpointError``.
    """
    source = find_model(source).path
    load_model(source)  # a model that cannot be served is not promoted
    destination = Path(destination)
    if destination.exists() and destination.resolve() == source.resolve():
        raise CheckpointError(f"{source} is already the model at {destination}.")
    meta = _read_metadata(source)
    recorded = meta.get("weights_sha256")
    if recorded is not None and recorded != file_sha256(source):
        raise CheckpointError(
            f"{metadata_path(source)} describes other weights than {source.name} (their "
            f"weights_sha256 differs): not promoted. Retrain, or remove the JSON."
        )
    atomic.write_bytes(destination, source.read_bytes())
    if metadata_path(source).is_file():
        atomic.write_bytes(metadata_path(destination), metadata_path(source).read_bytes())
    else:
        # A seed-format model has no JSON; an old one left beside it would describe it wrongly.
        metadata_path(destination).unlink(missing_ok=True)
    return destination
