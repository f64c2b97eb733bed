"""Saving and loading models: weights in a plain state_dict, metadata in JSON beside them.

``models/mnist_cnn_model.pth`` holds nothing but the state_dict, exactly what the seed
saved, so ``MNISTCNN().load_state_dict(torch.load(path, map_location="cpu"))`` keeps
working wherever the file was trained. ``models/mnist_cnn_model.json`` says what the
weights are: architecture, input normalisation, metrics, dataset hash, training config, and
the SHA-256 of the weights file it describes (``weights_sha256``).

``load_model`` is the one way the CLI, the web app, the notebooks and the Gradio app load a
model. It never unpickles arbitrary objects (``weights_only=True``), and it validates what
it loads in one step before anything uses it: the weights (string keys, floating point
where the network has floating point, finite, the architecture's shapes, finite outputs)
and the JSON (its size and nesting, the types and ranges of the fields read, that it
describes these very weights). Every failure is a ``CheckpointError`` that names the file,
what is wrong and what to do.

The weights and their JSON are replaced together (``save_model``, ``promote``): a reader
sees the old pair or the new pair, never new weights beside old metadata, even when the
writer is killed half-way (see ``_replace_pair``).

An **ensemble** is one such pair too (``save_ensemble``): the weights are the state_dict of a
``model.Ensemble`` (member i's own keys under ``members.<i>.``), and the JSON has
``"architecture": "Ensemble"`` and an ``"ensemble"`` entry naming the members' architecture
and recording each member's seed, run, weights hash and metrics. Everything that finds,
checks, promotes or loads a model therefore works on an ensemble unchanged.

``load_model(..., tta=True)`` wraps the network in ``model.ShiftTTA`` (test-time
augmentation: the answer averaged over one-pixel shifts); ``ModelInfo.tta`` records it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_cnn import atomic, data, paths
from mnist_cnn.model import (
    ARCHITECTURES,
    MNIST_MEAN,
    MNIST_STD,
    NUM_CLASSES,
    Ensemble,
    ShiftTTA,
    build_model,
    count_parameters,
    logits_of,
)

# What `mnist-cnn train` writes after each epoch (for --resume): the whole training state,
# the model's weights under "model". Its JSON-named neighbour describes the final .pth, not it.
TRAINING_STATE_SUFFIX = ".ckpt"

# The JSON beside the weights is a few kB (the shipped one: 6 kB, with 12 epochs of history
# and the calibration report). The caps keep a hostile or corrupt file from costing
# gigabytes (json.loads of 200 MB takes about 4 GB) or the stack (100,000 nested arrays).
MAX_METADATA_BYTES = 4 << 20
MAX_METADATA_DEPTH = 32
# The largest architecture here is 1.7 MB of weights (5 MB with a training state's optimizer
# moments); anything vastly larger is not one of ours, and would be read into memory whole.
MAX_WEIGHTS_BYTES = 256 << 20
# A reader that meets a pair being replaced (new JSON, old weights) looks again this soon.
_RETRY_SECONDS = 0.05

# The "architecture" of an ensemble's JSON; its members' is in its "ensemble" entry.
ENSEMBLE = "Ensemble"
# 64 of the largest network are about 110 MB of weights, within MAX_WEIGHTS_BYTES, and far
# more members than averaging gains anything from.
MAX_ENSEMBLE_MEMBERS = 64


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
    # An ensemble (architecture ENSEMBLE): how many networks, and their architecture.
    members: int = 1
    member_architecture: str | None = None
    tta: bool = False  # the answer is averaged over shifted copies (model.ShiftTTA)

    @property
    def test_accuracy(self) -> float | None:
        """Accuracy on the MNIST test set when the checkpoint records it."""
        value = self.metrics.get("test_accuracy")
        return None if value is None else float(value)

    @property
    def description(self) -> str:
        """What runs, for people: ``BestCNN``, ``ensemble of 5 BestCNN``, ``... with shift
        TTA``. The test accuracy recorded is the model's without TTA."""
        if self.architecture == ENSEMBLE:
            text = f"ensemble of {self.members} {self.member_architecture or 'networks'}"
        else:
            text = self.architecture
        return f"{text} with shift TTA" if self.tta else text

    @classmethod
    def from_metadata(
        cls,
        path: Path,
        metadata: Mapping[str, Any],
        *,
        architecture: str,
        parameters: int | None,
        backend: str = "torch",
        members: int = 1,
        member_architecture: str | None = None,
        tta: bool = False,
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
            members=members,
            member_architecture=member_architecture,
            tta=tta,
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
        """The network's name in ``model.ARCHITECTURES``, or ``ENSEMBLE`` (the members'
        is ``info.member_architecture``; ``info.description`` says both, and TTA)."""
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
    """The JSON file that sits beside a weights file.

    A training state (``.ckpt``) is never described by it: ``x.json`` is the JSON of the
    finished ``x.pth``, and ``load_model`` does not read it for ``x.ckpt``.
    """
    return Path(weights_path).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- validation


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message quotes a bad value, not a
    megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: object) -> bool:
    # JSON's true/false are Python bools, which are ints: a std of `true` is not a number.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _depth_exceeds(obj: object, limit: int) -> bool:
    """Whether ``obj`` nests lists and dicts deeper than ``limit`` (iteratively: a structure
    too deep for the recursion limit is exactly what this is for)."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _metrics_problem(metrics: object, where: str) -> str | None:
    if not isinstance(metrics, Mapping):
        return f"'{where}' must be an object, not {type(metrics).__name__}"
    for name, value in metrics.items():
        if not _is_number(value) or not math.isfinite(value):
            return f"{where}.{str(name)[:40]} must be a finite number, not {_short(value)}"
    return None


def _sha256_problem(value: object, where: str) -> str | None:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return None
    return f"'{where}' must be 64 lowercase hex digits, not {_short(value)}"


def _ensemble_problem(architecture: object, entry: object) -> str | None:
    """What is wrong with an ensemble's "ensemble" entry (or its absence), or ``None``."""
    if architecture != ENSEMBLE:
        return f"an 'ensemble' entry needs 'architecture': '{ENSEMBLE}', not {_short(architecture)}"
    if entry is None:
        return f"'architecture' is '{ENSEMBLE}' but there is no 'ensemble' entry"
    if not isinstance(entry, Mapping):
        return f"'ensemble' must be an object, not {type(entry).__name__}"
    network = entry.get("architecture")
    if not isinstance(network, str) or network not in ARCHITECTURES:
        return (
            f"ensemble.architecture must be the members' architecture, one of "
            f"{', '.join(ARCHITECTURES)}; not {_short(network)}"
        )
    members = entry.get("members")
    if not isinstance(members, list):
        return f"ensemble.members must be a list, not {type(members).__name__}"
    if not 1 <= len(members) <= MAX_ENSEMBLE_MEMBERS:
        return f"ensemble.members must list 1 to {MAX_ENSEMBLE_MEMBERS} members, not {len(members)}"
    for i, member in enumerate(members):
        where = f"ensemble.members[{i}]"
        if not isinstance(member, Mapping):
            return f"{where} must be an object, not {type(member).__name__}"
        seed, run = member.get("seed"), member.get("run")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            return f"{where}.seed must be an integer, not {_short(seed)}"
        if run is not None and not isinstance(run, str):
            return f"{where}.run must be a string, not {_short(run)}"
        if member.get("weights_sha256") is not None:
            problem = _sha256_problem(member["weights_sha256"], f"{where}.weights_sha256")
            if problem is not None:
                return problem
        if member.get("metrics") is not None:
            problem = _metrics_problem(member["metrics"], f"{where}.metrics")
            if problem is not None:
                return problem
    return None


def metadata_problem(meta: object) -> str | None:
    """What is wrong with a checkpoint's metadata, or ``None``: the schema of the fields the
    code reads (``architecture``, ``ensemble``, ``input.mean``, ``input.std``, ``metrics``,
    ``unsure``, ``weights_sha256``) and the nesting depth. Other fields are the file's own
    business.

    The one check for the JSON beside weights (``load_model``, ``save_model``) and for the
    metadata inside an ONNX file (``Predictor``'s ONNX backend).
    """
    if not isinstance(meta, Mapping):
        return f"expected a JSON object, found {type(meta).__name__}"
    if _depth_exceeds(meta, MAX_METADATA_DEPTH):
        return f"nested more than {MAX_METADATA_DEPTH} levels deep"
    architecture = meta.get("architecture")
    if architecture is not None:
        if not isinstance(architecture, str):
            return f"'architecture' must be a string, not {type(architecture).__name__}"
        if architecture not in ARCHITECTURES and architecture != ENSEMBLE:
            known = ", ".join([*ARCHITECTURES, ENSEMBLE])
            return f"unknown architecture {_short(architecture)}; known: {known}"
    if architecture == ENSEMBLE or meta.get("ensemble") is not None:
        problem = _ensemble_problem(architecture, meta.get("ensemble"))
        if problem is not None:
            return problem
    normalisation = meta.get("input")
    if normalisation is not None:
        if not isinstance(normalisation, Mapping):
            return f"'input' must be an object, not {type(normalisation).__name__}"
        for name in ("mean", "std"):
            value = normalisation.get(name)
            if value is None:
                continue
            if not _is_number(value) or not math.isfinite(value):
                return f"input.{name} must be a finite number, not {_short(value)}"
        # Inputs are divided by std: 0 gives infinities, a negative one mirrors every input.
        if normalisation.get("std") is not None and not normalisation["std"] > 0:
            return f"input.std must be greater than 0, not {_short(normalisation['std'])}"
    if meta.get("metrics") is not None:
        problem = _metrics_problem(meta["metrics"], "metrics")
        if problem is not None:
            return problem
    if meta.get("weights_sha256") is not None:
        problem = _sha256_problem(meta["weights_sha256"], "weights_sha256")
        if problem is not None:
            return problem
    if meta.get("unsure") is not None:
        from mnist_cnn.unsure import UnsurePolicy  # OpenCV; only when there is an entry

        try:
            UnsurePolicy.from_metadata(meta["unsure"])
        except (ValueError, TypeError) as exc:
            return f"bad 'unsure' entry ({_short(str(exc), 200)[1:-1]})"
    return None


def _parse_json(text: bytes, where: Path, weights: Path) -> dict[str, Any]:
    """The JSON beside ``weights``, parsed strictly (no NaN or Infinity: they are not JSON,
    and would reach users as bare ``NaN``) and validated."""
    fix = (
        f"Fix it, delete it to load {weights.name} as a plain seed-format model, or save the "
        f"model again."
    )

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):  # 1e400: valid JSON, but infinite as a float
            raise ValueError(f"{_short(number)} is too large for a number")
        return value

    try:
        meta = json.loads(text, parse_constant=no_constants, parse_float=finite)
    except RecursionError:
        raise CheckpointError(
            f"{where}: the metadata beside {weights.name} is nested too deeply to read. {fix}"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{where}: the metadata beside {weights.name} is not valid JSON ({exc}). {fix}"
        ) from exc
    problem = metadata_problem(meta)
    if problem is not None:
        raise CheckpointError(f"{where}: {problem}. {fix}")
    return meta


def _read_capped(path: Path, cap: int, what: str) -> bytes | None:
    """The file's bytes, ``None`` when it does not exist; never more than ``cap`` bytes
    read (a file that grew past the check is caught by reading one byte more)."""
    try:
        with path.open("rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the {what} ({exc.strerror or exc}).") from None
    if len(data) > cap:
        raise CheckpointError(
            f"{path}: the {what} is larger than {cap >> 20} MB, far larger than any model of "
            f"this project writes; it is not one of its files."
        )
    return data


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point (or complex) tensors that hold NaN or infinity."""
    return [
        name
        for name, tensor in state.items()
        if (tensor.is_floating_point() or tensor.is_complex())
        and not bool(torch.isfinite(tensor).all())
    ]


def _describe_values(obj: Mapping[Any, Any]) -> str:
    """``list ('conv1.weight'), int ('epoch')``: the kinds of non-tensor values found."""
    kinds: dict[str, str] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            kinds.setdefault(type(value).__name__, repr(key))
    return ", ".join(f"{kind} ({key})" for kind, key in list(kinds.items())[:4])


# Weights saved from nn.DataParallel ("module.") or torch.compile ("_orig_mod.") carry a
# prefix on every key, nested in the order the wrappers were applied.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _read_state_dict(path: Path, blob: bytes) -> dict[str, torch.Tensor]:
    """The state_dict in ``blob`` (the bytes of ``path``), or a ``CheckpointError``."""
    fix = "Train a model with `mnist-cnn train`, or give another with --model."
    if not blob:
        raise CheckpointError(f"{path}: the file is empty. {fix}")
    # torch.save writes a zip archive ("PK\x03\x04"); the legacy format is a pickle (PROTO
    # opcode 0x80, then the protocol, 2 to 5). Anything else is garbage or cut short, and
    # must not be reported as an unsafe pickle below.
    if not (
        blob.startswith(b"PK\x03\x04")
        or (blob[:1] == b"\x80" and blob[1:2] in b"\x02\x03\x04\x05" and len(blob) > 2)
    ):
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint; the file is truncated or corrupt "
            f"(neither torch.save's zip archive nor a pickle). {fix}"
        )
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any pickle that would import or call something: that is the
        # safety net against checkpoints that run code when loaded.
        lines = str(exc).splitlines()
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "")
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors, which could "
            f"run code when unpickled ({reason.strip() or 'not a plain state_dict'}). Only "
            f"load checkpoints you trust, saved as a plain state_dict."
        ) from exc
    except Exception as exc:
        # A damaged archive or pickle surfaces as whatever the reader tripped on
        # (RuntimeError, EOFError, KeyError, IndexError, zipfile.BadZipFile...).
        detail = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint; the file is truncated or corrupt "
            f"({detail}). {fix}"
        ) from exc
    # A full training checkpoint (from --resume) carries the weights under "model".
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: expected a state_dict (a mapping of names to tensors), found "
            f"{type(obj).__name__}. {fix}"
        )
    odd_keys = [k for k in obj if not isinstance(k, str)]
    if odd_keys:
        raise CheckpointError(
            f"{path}: expected a state_dict (a mapping of names to tensors), but its keys "
            f"include {type(odd_keys[0]).__name__} {odd_keys[0]!r}, not a parameter name. {fix}"
        )
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a state_dict (a mapping of names to tensors), found a dict "
            f"whose values include {_describe_values(obj)}. {fix}"
        )
    return _strip_wrapper_prefixes(obj)


def _check_weights(path: Path, state: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse weights whose kind of number differs from the network's (bool, integer or
    complex weights; a float counter), before ``load_state_dict`` silently casts them."""
    reference = model.state_dict()
    for name, tensor in state.items():
        expected = reference.get(name)
        if expected is None:
            continue  # an unexpected key: load_state_dict names it
        if expected.is_floating_point():
            ok = tensor.is_floating_point()
        else:  # integer buffers (batch norm's num_batches_tracked)
            ok = not tensor.is_floating_point() and not tensor.is_complex()
            ok = ok and tensor.dtype != torch.bool
        if not ok:
            raise CheckpointError(
                f"{path}: {name} holds {str(tensor.dtype).removeprefix('torch.')} values where "
                f"the {type(model).__name__} architecture has "
                f"{str(expected.dtype).removeprefix('torch.')}: these are not its weights."
            )


def _check_loaded(path: Path, model: nn.Module, mean: float, std: float) -> None:
    """Refuse a network that cannot give finite answers: weights that are (or became, when
    cast to float32) NaN or infinite, and finite weights whose outputs are not."""
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise CheckpointError(
            f"{path}: the weights hold NaN or infinite values (in {', '.join(bad[:4])}"
            f"{', ...' if len(bad) > 4 else ''}): the training that wrote them diverged. "
            f"Retrain, or use another model."
        )
    check_outputs(path, lambda x: logits_of(model, x), mean, std)


def check_outputs(
    path: Path, forward: Callable[[torch.Tensor], torch.Tensor], mean: float, std: float
) -> None:
    """Refuse a model whose logits are not ten finite numbers per image on three probe images
    (all background, all ink, noise), normalised as the model expects. Finite weights can
    still give NaN: a negative batch-norm variance, weights too large for float32's range;
    so can an ONNX graph. Raises ``CheckpointError``."""
    probe = data.normalise(
        torch.stack(
            [
                torch.zeros(28, 28),
                torch.ones(28, 28),
                torch.rand(28, 28, generator=torch.Generator().manual_seed(0)),
            ]
        ),
        mean,
        std,
    )
    # One image per call: the batch size of a single prediction, whose buffers (oneDNN
    # primitives for that shape) every server worker builds anyway. A batch of three would
    # leave a second set behind in every process: about 9 MB.
    logits = torch.cat([forward(one) for one in probe.split(1)])
    if tuple(logits.shape) != (len(probe), NUM_CLASSES):
        raise CheckpointError(
            f"{path}: the model answers with shape {tuple(logits.shape)} for "
            f"{len(probe)} images, not ({len(probe)}, {NUM_CLASSES}): not a digit classifier."
        )
    if not bool(torch.isfinite(logits).all()):
        raise CheckpointError(
            f"{path}: the model's outputs are NaN or infinite, although its weights are "
            f"finite (negative batch-norm variances, or weights too large for float32). "
            f"Retrain, or use another model."
        )


_MEMBER_PREFIX = "members."


def _infer_network(keys: set[str]) -> str:
    for name, cls in ARCHITECTURES.items():
        if keys == set(cls().state_dict()):
            return name
    return "MNISTCNN"  # the seed format; the mismatch is reported when loading


def _infer_architecture(path: Path, state: Mapping[str, torch.Tensor]) -> tuple[str, str, int]:
    """(architecture, members' architecture, members) of weights without JSON: a single
    network's (``("FastCNN", "FastCNN", 1)``), or an ``Ensemble``'s, recognised by its
    ``members.<i>.`` keys, with member 0's architecture and as many members as indices."""
    indices = set()
    for key in state:
        index, dot, _ = key.removeprefix(_MEMBER_PREFIX).partition(".")
        if key.startswith(_MEMBER_PREFIX) and dot and index.isdigit():
            indices.add(int(index))
    if not indices:
        network = _infer_network(set(state))
        return network, network, 1
    count = max(indices) + 1  # a gap is a missing member: load_state_dict names its keys
    if count > MAX_ENSEMBLE_MEMBERS:
        raise CheckpointError(
            f"{path}: the weights hold an ensemble of {count} members; at most "
            f"{MAX_ENSEMBLE_MEMBERS} are supported."
        )
    first = f"{_MEMBER_PREFIX}0."
    network = _infer_network({k.removeprefix(first) for k in state if k.startswith(first)})
    return ENSEMBLE, network, count


def _describe_state(
    meta: Mapping[str, Any], path: Path, state: Mapping[str, torch.Tensor]
) -> ModelInfo:
    """The architecture of ``state`` as a ModelInfo's fields (``architecture``, ``members``,
    ``member_architecture``, the rest from ``meta``): the JSON's when it says, else
    inferred from the keys. ``meta`` passed ``metadata_problem``."""
    architecture = meta.get("architecture")
    if architecture is None:
        architecture, network, members = _infer_architecture(path, state)
    elif architecture == ENSEMBLE:
        network, members = meta["ensemble"]["architecture"], len(meta["ensemble"]["members"])
    else:
        network, members = architecture, 1
    return ModelInfo.from_metadata(
        path,
        meta,
        architecture=architecture,
        parameters=None,
        members=members,
        member_architecture=network if architecture == ENSEMBLE else None,
    )


# --------------------------------------------------------------------------- reading a pair


@dataclass(frozen=True)
class _Pair:
    """The bytes of a weights file and of the JSON that describes them, read consistently."""

    weights: bytes
    metadata: dict[str, Any]  # {} when there is no JSON
    metadata_bytes: bytes | None


def _pending_path(weights: Path, sha256: str) -> Path:
    """Where ``_replace_pair`` puts new weights until they take ``weights``' name."""
    return weights.with_name(f".{weights.name}.{sha256[:16]}.pending")


def _read_pair(path: Path) -> _Pair:
    """The weights at ``path`` and the JSON beside them, checked to belong together.

    The JSON records the SHA-256 of the weights it describes. When the file beside it has
    other bytes, the pair is either being replaced right now (``_replace_pair``: the JSON is
    the new one and the new weights wait under ``_pending_path``, or a replacement finished
    between our two reads: read again), or the two were never saved together.

    Why a mismatch is an error, not "ignore the JSON and load the weights": the JSON is
    what says how to feed the network (normalisation, architecture) and when to answer "not
    sure"; weights served without it give confident wrong answers, and a JSON left beside
    other weights claims their accuracy (new weights beside the old 99.56%). Refusing costs
    one command to fix, and the message names it.
    """
    meta_path = metadata_path(path)
    described = path.suffix != TRAINING_STATE_SUFFIX  # x.json describes x.pth, not x.ckpt
    for attempt in range(2):
        meta_bytes = (
            _read_capped(meta_path, MAX_METADATA_BYTES, "metadata JSON") if described else None
        )
        weights = _read_capped(path, MAX_WEIGHTS_BYTES, "weights file")
        if weights is None:
            raise CheckpointError(f"{path}: model file not found (it was removed while loading).")
        if meta_bytes is None:
            return _Pair(weights, {}, None)
        meta = _parse_json(meta_bytes, meta_path, path)
        recorded = meta.get("weights_sha256")
        if recorded is None or _sha256(weights) == recorded:
            return _Pair(weights, meta, meta_bytes)
        pending = _read_capped(_pending_path(path, recorded), MAX_WEIGHTS_BYTES, "weights file")
        if pending is not None and _sha256(pending) == recorded:
            return _Pair(pending, meta, meta_bytes)  # the new pair, committed, not yet renamed
        if attempt == 0:
            time.sleep(_RETRY_SECONDS)
    raise CheckpointError(
        f"{meta_path} describes other weights than {path.name} (its weights_sha256 is "
        f"{recorded[:12]}..., the file's is {_sha256(weights)[:12]}...): they were not saved "
        f"together. Save or promote the model again (weights and JSON together), put back the "
        f"JSON of these weights, or delete the JSON to load {path.name} as a plain "
        f"seed-format model."
    )


def read_metadata(weights: str | Path) -> dict[str, Any]:
    """The JSON beside ``weights`` ({} when there is none), read as ``load_model`` reads it:
    at most ``MAX_METADATA_BYTES``, strict JSON, validated (``metadata_problem``); whether
    it describes ``weights`` is the caller's to check. Raises ``CheckpointError``."""
    weights = Path(weights)
    meta_bytes = _read_capped(metadata_path(weights), MAX_METADATA_BYTES, "metadata JSON")
    return {} if meta_bytes is None else _parse_json(meta_bytes, metadata_path(weights), weights)


def _build(info: ModelInfo) -> nn.Module:
    """A fresh network of the architecture ``info`` describes (an ``Ensemble`` of its
    members' architecture, or one network); its names were checked already."""
    if info.architecture == ENSEMBLE:
        network = info.member_architecture or ""
        return Ensemble([build_model(network) for _ in range(info.members)])
    return build_model(info.architecture)


def _load_pair(path: Path, pair: _Pair, device: str | torch.device) -> LoadedModel:
    """The one validation step: weights and metadata of ``pair`` into a ready model."""
    state = _read_state_dict(path, pair.weights)
    info = _describe_state(pair.metadata, path, state)
    model = _build(info)
    _check_weights(path, state, model)
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
        what = (
            f"an {info.description}"
            if info.architecture == ENSEMBLE
            else f"the {info.architecture} architecture"
        )
        raise CheckpointError(
            f"{path}: these weights do not fit {what} ({detail}). "
            f"Is this a checkpoint of another model?"
        ) from exc
    info = replace(info, parameters=sum(p.numel() for p in model.parameters()))
    _check_loaded(path, model, info.mean, info.std)
    # Channels-last weights match the channels-last inputs of ``model.logits_of``: oneDNN
    # then skips converting every convolution's weights on every call.
    model = model.to(device, memory_format=torch.channels_last).eval()
    return LoadedModel(model, info)


def load_model(
    path: str | Path | None = None, device: str | torch.device = "cpu", tta: bool = False
) -> LoadedModel:
    """Load weights (and their JSON metadata, when present) into the right architecture.

    ``path`` is a weights file or a run directory; without it, ``paths.find_model`` decides
    (./models/, then the model shipped in the package). A plain seed-style state_dict
    without metadata loads as ``MNISTCNN`` with the standard MNIST normalisation (an
    ensemble's, with ``members.<i>.`` keys, as an ``Ensemble`` of the architecture its keys
    show). Weights and metadata are validated (see the module docstring). ``tta`` wraps the
    network in ``model.ShiftTTA`` (``info.tta`` says so). Raises ``CheckpointError``.
    """
    path = find_model(path).path
    loaded = _load_pair(path, _read_pair(path), device)
    return with_tta(loaded) if tta else loaded


def with_tta(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` answering through ``model.ShiftTTA``: its probabilities averaged over the
    input and its one-pixel shifts (five forward passes per image)."""
    if loaded.info.tta:
        return loaded
    return LoadedModel(ShiftTTA(loaded.model).eval(), replace(loaded.info, tta=True))


def find_model(path: str | Path | None) -> paths.Found:
    """``paths.find_model``, with its ``NotFoundError`` as a ``CheckpointError``."""
    try:
        return paths.find_model(path)
    except paths.NotFoundError as exc:
        raise CheckpointError(str(exc)) from None


# --------------------------------------------------------------------------- writing a pair


def _json_bytes(path: Path, metadata: Mapping[str, Any]) -> bytes:
    """``metadata`` as the JSON file ``load_model`` will accept, or a ``CheckpointError``:
    never write what cannot be read back."""
    problem = metadata_problem(metadata)
    if problem is None:
        try:
            return (json.dumps(metadata, indent=2, allow_nan=False) + "\n").encode()
        except ValueError:  # NaN or infinity somewhere outside the fields checked
            problem = "it holds NaN or infinity, which JSON cannot carry"
        except TypeError as exc:
            problem = str(exc)
    raise CheckpointError(f"{path}: refusing to write this metadata: {problem}.")


def _finish_interrupted(weights: Path) -> None:
    """Settle what a killed ``_replace_pair`` left beside ``weights``: a committed
    replacement (the JSON names the pending weights) is completed; uncommitted pending
    files are removed."""
    try:
        with metadata_path(weights).open("rb") as f:
            meta = json.loads(f.read(MAX_METADATA_BYTES))
        recorded = meta.get("weights_sha256") if isinstance(meta, dict) else None
    except (OSError, ValueError, RecursionError):  # no JSON, or not ours: nothing committed
        recorded = None
    prefix, suffix = f".{weights.name}.", ".pending"
    if not weights.parent.is_dir():
        return
    for leftover in weights.parent.iterdir():
        if not (leftover.name.startswith(prefix) and leftover.name.endswith(suffix)):
            continue
        if (
            isinstance(recorded, str)
            and leftover == _pending_path(weights, recorded)
            and file_sha256(leftover) == recorded
        ):
            os.replace(leftover, weights)
        else:
            leftover.unlink(missing_ok=True)


def _replace_pair(weights: Path, blob: bytes, meta_bytes: bytes) -> None:
    """Replace the weights at ``weights`` and their JSON together.

    Two files cannot be renamed in one step, so the JSON's rename is the commit point:

    1. the new weights are written, complete and flushed, to ``_pending_path`` (the old pair
       is untouched; a crash here leaves the old pair and a stray file);
    2. the new JSON replaces the old one (atomic rename). It names the new weights by their
       SHA-256, and ``_read_pair`` finds them under the pending name: from here on, readers
       get the new pair;
    3. the new weights take the usual name (atomic rename).

    A reader therefore sees the old pair or the new pair whenever it looks, and whenever
    the writer is killed. Writers are not meant to race each other on one model; the next
    save completes or removes what a killed one left (``_finish_interrupted``).
    """
    meta_path = metadata_path(weights)
    _finish_interrupted(weights)
    pending = _pending_path(weights, _sha256(blob))
    try:
        try:
            atomic.write_bytes(pending, blob)
        except OSError as exc:  # named after the file the caller knows, not the pending one
            raise atomic.WriteError(exc.errno, exc.strerror, str(weights)) from exc
        atomic.write_bytes(meta_path, meta_bytes)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    try:
        os.replace(pending, weights)
    except OSError as exc:
        # Committed already: readers get the new pair through the pending file.
        raise atomic.WriteError(exc.errno, exc.strerror or str(exc), str(weights)) from exc
    atomic.sync_directory(weights.parent)


def state_bytes(obj: Any) -> bytes:
    """What ``torch.save(obj, path)`` would write, made in memory: written then with
    ``atomic.write_bytes``, a full disk is an ``OSError`` of the file write
    (``atomic.WriteError``, naming the file), not torch's "enforce fail at
    inline_container.cc"."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_model(model: nn.Module, path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Write the state_dict to ``path`` and ``metadata`` (plus the weights' hash) beside it,
    the two replaced together (a reader never sees new weights beside old metadata).

    Refuses (``CheckpointError``) weights with NaN or infinite values and metadata that
    ``load_model`` would refuse. A failed write (full disk, read-only directory) is an
    ``atomic.WriteError`` naming the file, and leaves the previous pair as it was.
    """
    path = Path(path)
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise CheckpointError(
            f"{path}: refusing to save weights with NaN or infinite values (in "
            f"{', '.join(bad[:4])})."
        )
    # Contiguous and on the CPU: the file loads anywhere, channels-last training or GPU
    # notwithstanding.
    blob = state_bytes({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    meta_bytes = _json_bytes(metadata_path(path), {**metadata, "weights_sha256": _sha256(blob)})
    _replace_pair(path, blob, meta_bytes)


def promote(source: str | Path, destination: str | Path = paths.LOCAL_MODEL) -> Path:
    """Make a run's model the one in use: copy its weights and JSON to ``destination``
    (default ``./models/mnist_cnn_model.pth``, where every command here looks first).

    This is the deliberate way to replace a model; training alone never does. ``source`` is
    a weights file or a run directory. The model must load, and its JSON must describe
    these very weights (``weights_sha256``): nothing is replaced otherwise. The very bytes
    checked are the ones copied, and the pair at ``destination`` is replaced together. Returns
    the new weights' path. Raises ``CheckpointError``.
    """
    source = find_model(source).path
    destination = Path(destination)
    if source.suffix == TRAINING_STATE_SUFFIX:
        raise CheckpointError(
            f"{source}: a training state, not a model: finish the run (train --resume with "
            f"the same options), then promote its {paths.MODEL_FILENAME}."
        )
    if destination.exists() and destination.resolve() == source.resolve():
        raise CheckpointError(f"{source} is already the model at {destination}.")
    pair = _read_pair(source)
    _load_pair(source, pair, "cpu")  # a model that cannot be served is not promoted
    sha = _sha256(pair.weights)
    if pair.metadata.get("weights_sha256") == sha and pair.metadata_bytes is not None:
        meta_bytes = pair.metadata_bytes
    else:
        # No JSON (a seed-format model), or one that predates the hash: the destination's
        # JSON must name these weights, or an old one would describe them wrongly and the
        # switch would not be one rename.
        meta_bytes = _json_bytes(
            metadata_path(destination), {**pair.metadata, "weights_sha256": sha}
        )
    try:
        _replace_pair(destination, pair.weights, meta_bytes)
    except OSError as exc:  # atomic.WriteError: one line that names the file
        raise CheckpointError(str(exc)) from exc
    return destination


# --------------------------------------------------------------------------- ensembles

# The manifest's fields that describe the members: the caller's extra metadata cannot
# change them.
_ENSEMBLE_FACTS = ("architecture", "ensemble", "parameters", "input")


def _member_entry(path: Path, pair: _Pair) -> dict[str, Any]:
    """What an ensemble's manifest records about one member (its "ensemble.members" item)."""
    training = pair.metadata.get("training")
    seed = training.get("seed") if isinstance(training, Mapping) else None
    return {
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "run": str(path.parent),  # informational: the model loads without it
        "weights_sha256": _sha256(pair.weights),
        "metrics": dict(pair.metadata.get("metrics") or {}),
    }


def build_ensemble(member_paths: Sequence[str | Path]) -> tuple[Ensemble, dict[str, Any]]:
    """The ``Ensemble`` of the models at ``member_paths`` (weights files or run directories;
    eval mode, on the CPU) and its manifest: the JSON ``save_ensemble`` writes, without
    "metrics" (the ensemble's own, which only an evaluation of it gives) and without the
    weights' hash (``save_model`` adds it).

    Every member loads through ``load_model``'s checks; all must have one architecture and
    one input normalisation, and none may be an ensemble. The members' "unsure" thresholds
    are not carried over: they were measured on one network, not on the average. Raises
    ``CheckpointError``.
    """
    if not 1 <= len(member_paths) <= MAX_ENSEMBLE_MEMBERS:
        raise CheckpointError(
            f"an ensemble needs 1 to {MAX_ENSEMBLE_MEMBERS} member models, not {len(member_paths)}."
        )
    members: list[LoadedModel] = []
    entries = []
    for given in member_paths:
        path = find_model(given).path
        if path.suffix == TRAINING_STATE_SUFFIX:
            raise CheckpointError(
                f"{path}: a training state, not a model: finish the run (train --resume with "
                f"the same options), then use its {paths.MODEL_FILENAME}."
            )
        pair = _read_pair(path)
        loaded = _load_pair(path, pair, "cpu")
        first = members[0] if members else loaded
        if loaded.architecture == ENSEMBLE:
            raise CheckpointError(
                f"{path}: an {loaded.info.description} cannot be a member of an ensemble; "
                f"give the models of its members instead."
            )
        if loaded.architecture != first.architecture:
            raise CheckpointError(
                f"{path}: a {loaded.architecture} cannot join an ensemble of "
                f"{first.architecture} ({first.path}): all members must have one architecture."
            )
        if (loaded.mean, loaded.std) != (first.mean, first.std):
            raise CheckpointError(
                f"{path}: its inputs are normalised with mean {loaded.mean} and std "
                f"{loaded.std}, those of {first.path} with mean {first.mean} and std "
                f"{first.std}: all members must share one input normalisation."
            )
        members.append(loaded)
        entries.append(_member_entry(path, pair))
    first = members[0]
    ensemble = Ensemble([m.model for m in members]).eval()
    manifest: dict[str, Any] = {
        "format_version": 1,
        "architecture": ENSEMBLE,
        "parameters": count_parameters(ensemble),
        "input": dict(first.metadata.get("input") or {"mean": first.mean, "std": first.std}),
        "classes": list(range(NUM_CLASSES)),
        "ensemble": {"architecture": first.architecture, "members": entries},
    }
    dataset = first.metadata.get("dataset")
    if dataset is not None and all(m.metadata.get("dataset") == dataset for m in members):
        manifest["dataset"] = dataset
    manifest["torch_version"] = torch.__version__
    manifest["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return ensemble, manifest


def save_ensemble(
    member_paths: Sequence[str | Path],
    destination: str | Path,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write the ensemble of the models at ``member_paths`` as one weights-and-JSON pair at
    ``destination`` (a ``.pth`` path, or a directory to hold ``mnist_cnn_model.pth``: one
    that exists, or a path without a suffix); returns the weights' path.

    The weights are the ``Ensemble``'s state_dict and the JSON its manifest
    (``build_ensemble``) updated with ``extra_metadata``: the ensemble's "metrics" (from
    evaluating it), or its "unsure" thresholds. ``extra_metadata`` cannot change the facts
    that describe the members (``_ENSEMBLE_FACTS``: ``ValueError``). The pair is replaced
    together, as by ``save_model``. Raises ``CheckpointError`` (a member that does not load
    or does not fit the others, a destination that is one of them, metadata ``load_model``
    would refuse) and ``atomic.WriteError``.
    """
    destination = Path(destination)
    if destination.is_dir() or not destination.suffix:  # runs/NAME, as find_model reads it
        destination = destination / paths.MODEL_FILENAME
    extra = dict(extra_metadata or {})
    ensemble, manifest = build_ensemble(member_paths)
    clash = sorted(k for k in _ENSEMBLE_FACTS if k in extra and extra[k] != manifest[k])
    if clash:
        raise ValueError(f"extra_metadata cannot change {', '.join(clash)}: the members decide")
    if destination.exists() and any(
        destination.resolve() == find_model(m).path.resolve() for m in member_paths
    ):
        raise CheckpointError(
            f"{destination} is one of the ensemble's members: write the ensemble elsewhere."
        )
    save_model(ensemble, destination, {**manifest, **extra})
    return destination
