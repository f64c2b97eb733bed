"""The checkpoint format (``mnist_cnn.checkpoint``): weights in a plain state_dict, metadata in
JSON beside them. A saved model loads back as it was, with its metadata and the hash of its
weights; what other scripts write (the seed's state_dict, DataParallel, torch.compile, a
training run's .ckpt) loads too; a run directory means the model file inside it. Every
failure is a ``CheckpointError`` that names the file, never a traceback, and a pickle that
would run code is refused without running it.

All fast: random weights, files in ``tmp_path``, no training.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SeedCNN, disk_full_for, save_checkpoint

from mnist_cnn import paths
from mnist_cnn.checkpoint import (
    CheckpointError,
    LoadedModel,
    ModelInfo,
    file_sha256,
    find_model,
    load_model,
    metadata_path,
    save_model,
)
from mnist_cnn.model import ARCHITECTURES, MNIST_MEAN, MNIST_STD, MNISTCNN, FastCNN, build_model
from mnist_cnn.predict import Predictor

# Both ways a checkpoint is opened: the library's, and the Predictor's (the CLI, the web app
# and Gradio load through it). A failure must be the same clear error through either.
LOADERS: dict[str, Callable[[Path], object]] = {
    "load_model": load_model,
    "Predictor": Predictor.from_checkpoint,
}


def random_model(cls: type[torch.nn.Module] = MNISTCNN, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised network; batch-norm statistics made non-trivial (as after
    training), so that buffers have to survive a round trip too."""
    torch.manual_seed(seed)
    model = cls()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def assert_same_weights(loaded: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = loaded.state_dict()
    assert list(got) == list(state)
    for key, tensor in state.items():
        assert torch.equal(got[key].cpu(), tensor), key


# --------------------------------------------------------------------------- save, load back


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_saved_model_loads_as_the_documented_one_liner(tmp_path: Path, name: str) -> None:
    model = build_model(name).to(memory_format=torch.channels_last).eval()
    path = tmp_path / "m.pth"
    save_model(model, path, {"architecture": name, "input": {"mean": 0.5, "std": 0.2}})
    state = torch.load(path, map_location="cpu")
    assert all(t.is_contiguous() for t in state.values())
    fresh = ARCHITECTURES[name]().eval()
    fresh.load_state_dict(state)
    loaded = load_model(path)
    assert (loaded.architecture, loaded.mean, loaded.std) == (name, 0.5, 0.2)
    assert loaded.metadata["weights_sha256"]
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.model(x), model(x))


def test_round_trip_keeps_weights_metadata_and_the_weights_hash(tmp_path: Path) -> None:
    model = random_model(FastCNN)
    metadata = {
        "architecture": "FastCNN",
        "input": {"mean": 0.25, "std": 0.5, "size": 28},
        "metrics": {"test_accuracy": 0.9876, "val_loss": 0.04},
        "training": {"epochs": 3, "seed": 7},
    }
    path = tmp_path / "model.pth"
    save_model(model, path, metadata)

    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel) and type(loaded.model) is FastCNN
    assert_same_weights(loaded.model, model.state_dict())  # parameters and buffers, exactly
    # The JSON beside the weights: what was given, plus the hash of the weights file.
    recorded = json.loads(metadata_path(path).read_text())
    assert recorded == {**metadata, "weights_sha256": file_sha256(path)}
    assert recorded["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.metadata == recorded
    # ... read into the ModelInfo, and the LoadedModel's shortcuts to it.
    info = loaded.info
    assert (info.path, info.architecture, info.mean, info.std) == (path, "FastCNN", 0.25, 0.5)
    assert (loaded.path, loaded.architecture) == (info.path, info.architecture)
    assert (loaded.mean, loaded.std) == (info.mean, info.std)
    assert info.metrics == {"test_accuracy": 0.9876, "val_loss": 0.04}
    assert info.test_accuracy == 0.9876
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert info.backend == "torch"


def test_saving_does_not_change_the_metadata_given(tmp_path: Path) -> None:
    metadata = {"architecture": "MNISTCNN", "weights_sha256": "stale"}
    save_model(random_model(), tmp_path / "m.pth", metadata)
    assert metadata == {"architecture": "MNISTCNN", "weights_sha256": "stale"}
    recorded = json.loads((tmp_path / "m.json").read_text())
    assert recorded["weights_sha256"] == file_sha256(tmp_path / "m.pth")  # never the stale one


def test_the_loaded_model_is_ready_for_inference(tmp_path: Path) -> None:
    model = random_model(FastCNN, seed=1)
    loaded = load_model(save_checkpoint(model, tmp_path / "fast.pth", "FastCNN"))
    assert not loaded.model.training  # eval mode: no dropout, batch-norm statistics frozen
    weight = next(p for p in loaded.model.parameters() if p.dim() == 4)
    assert weight.device.type == "cpu"
    assert weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_metadata_path_and_file_sha256(tmp_path: Path) -> None:
    assert metadata_path("runs/a/mnist_cnn_model.pth") == Path("runs/a/mnist_cnn_model.json")
    assert metadata_path(Path("m.ckpt")) == Path("m.json")
    abc = tmp_path / "abc"
    abc.write_bytes(b"abc")
    # SHA-256("abc"), the FIPS 180-2 test vector.
    assert file_sha256(abc) == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert file_sha256(str(abc)) == file_sha256(abc)


def test_a_directory_means_the_model_file_inside_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    weights = save_checkpoint(random_model(), run / paths.MODEL_FILENAME)
    assert find_model(run) == paths.Found(weights, "given")
    assert load_model(run).path == weights
    assert load_model(str(run)).path == weights
    # A directory without it: the error names the file that was looked for.
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=f"{paths.MODEL_FILENAME}: model file not found"):
        load_model(tmp_path / "empty")


def test_find_model_raises_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pth: model file not found") as info:
        find_model(tmp_path / "nope.pth")
    assert not isinstance(info.value, paths.NotFoundError)  # one kind of error to catch


# --------------------------------------------------------------------------- what others write


def test_plain_seed_state_dict_file_loads_without_metadata(tmp_path: Path) -> None:
    seed = SeedCNN().eval()
    path = tmp_path / "seed.pth"
    torch.save(seed.state_dict(), path)
    loaded = load_model(path)
    assert loaded.architecture == "MNISTCNN" and loaded.mean == 0.1307 and loaded.std == 0.3081
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(loaded.model(x), seed(x))


def test_without_json_nothing_is_made_up(tmp_path: Path) -> None:
    path = tmp_path / "seed.pth"
    torch.save(random_model().state_dict(), path)
    info = load_model(path).info
    assert (info.architecture, info.mean, info.std) == ("MNISTCNN", 0.1307, 0.3081)
    assert (MNIST_MEAN, MNIST_STD) == (0.1307, 0.3081)
    assert info.metadata == {} and info.metrics == {} and info.test_accuracy is None
    assert info.parameters == 421_642


def test_fast_cnn_is_recognised_by_its_keys(tmp_path: Path) -> None:
    model = random_model(FastCNN, seed=2)
    path = tmp_path / "fast.pth"
    torch.save(model.state_dict(), path)  # no JSON to say what it is
    loaded = load_model(path)
    assert loaded.architecture == "FastCNN" and type(loaded.model) is FastCNN
    assert_same_weights(loaded.model, model.state_dict())


@pytest.mark.parametrize(
    ("prefix", "cls"),
    [
        ("module.", MNISTCNN),  # nn.DataParallel
        ("_orig_mod.", FastCNN),  # torch.compile
        ("module._orig_mod.", MNISTCNN),  # DataParallel of a compiled model
    ],
)
def test_wrapper_prefixes_are_stripped(tmp_path: Path, prefix: str, cls: type) -> None:
    model = random_model(cls, seed=3)
    path = tmp_path / "wrapped.pth"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    loaded = load_model(path)
    assert loaded.architecture == cls.__name__
    assert_same_weights(loaded.model, model.state_dict())


def test_a_training_checkpoint_loads_its_model(tmp_path: Path) -> None:
    # What `mnist-cnn train` writes to <model>.ckpt after each epoch (for --resume).
    model = random_model(seed=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.01)
    optimizer.step()  # so that the optimizer's state holds tensors too
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "mnist_cnn_model.ckpt"
    torch.save(
        {
            "config": {"architecture": "MNISTCNN", "epochs": 2, "lr": 1e-3},
            "epoch": 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"data": generator.get_state(), "torch": torch.get_rng_state()},
            "history": [{"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.9}],
            "seconds": 12.5,
        },
        path,
    )
    loaded = load_model(path)
    assert loaded.architecture == "MNISTCNN"
    assert_same_weights(loaded.model, model.state_dict())


# --------------------------------------------------------------------------- ModelInfo


def test_model_info_from_metadata() -> None:
    path = Path("model.pth")
    metadata = {
        "architecture": "MNISTCNN",
        "input": {"mean": 0.2, "std": 0.3},
        "metrics": {"test_accuracy": 0.99, "val_loss": 0.03},
        "training": {"epochs": 12},
    }
    info = ModelInfo.from_metadata(path, metadata, architecture="MNISTCNN", parameters=10)
    assert (info.path, info.architecture, info.mean, info.std) == (path, "MNISTCNN", 0.2, 0.3)
    assert info.metrics == {"test_accuracy": 0.99, "val_loss": 0.03}
    assert info.test_accuracy == 0.99
    assert (info.parameters, info.backend, info.metadata) == (10, "torch", metadata)
    # Metrics written as strings (ONNX metadata is text) still give a number.
    as_text = ModelInfo.from_metadata(
        path, {"metrics": {"test_accuracy": "0.25"}}, architecture="FastCNN", parameters=None
    )
    assert as_text.test_accuracy == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.mean = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("metadata", [{}, {"input": None, "metrics": None}, {"input": {}}])
def test_model_info_without_the_facts(metadata: dict) -> None:
    info = ModelInfo.from_metadata(
        Path("seed.pth"), metadata, architecture="MNISTCNN", parameters=None, backend="onnx"
    )
    assert (info.mean, info.std) == (MNIST_MEAN, MNIST_STD)  # MNIST's normalisation
    assert info.metrics == {} and info.test_accuracy is None
    assert info.parameters is None and info.backend == "onnx"


# --------------------------------------------------------------------------- failures


class RunsCode:
    """A pickle payload that creates ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("load", list(LOADERS.values()), ids=list(LOADERS))
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused(load: Callable[[Path], object], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # The payload is live: plain unpickling runs it.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(RunsCode(proof)))
    assert proof.exists()

    for name, write in {
        "torch.save": lambda p: torch.save({"conv1.weight": RunsCode(marker)}, p),
        "plain pickle": lambda p: p.write_bytes(pickle.dumps(RunsCode(marker))),
    }.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pth"
        write(path)
        with pytest.raises(CheckpointError, match="refused|not a readable") as info:
            load(path)
        assert str(path) in str(info.value), name
        assert not marker.exists(), f"{name}: the pickle ran code"


def _truncated(random_weights: Path, tmp_path: Path) -> Path:
    path = tmp_path / "truncated.pth"
    data = random_weights.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt(random_weights: Path, tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(np.random.default_rng(0).bytes(random_weights.stat().st_size))
    return path


def _garbage(random_weights: Path, tmp_path: Path) -> Path:
    # Not a zip archive nor a pickle: must not be called an unsafe pickle.
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"<html><body>404 Not Found</body></html>\n")
    return path


def _empty(random_weights: Path, tmp_path: Path) -> Path:
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    return path


def _missing(random_weights: Path, tmp_path: Path) -> Path:
    return tmp_path / "missing.pth"


def _other_architecture(random_weights: Path, tmp_path: Path) -> Path:
    # FastCNN weights whose metadata claims the seed CNN.
    return save_checkpoint(FastCNN(), tmp_path / "fast_as_seed.pth", "MNISTCNN")


def _wrong_shapes(random_weights: Path, tmp_path: Path) -> Path:
    # The seed's keys, but a 256-unit hidden layer: same names, other shapes.
    state = MNISTCNN().state_dict()
    state["fc1.weight"] = torch.zeros(256, 3136)
    state["fc1.bias"] = torch.zeros(256)
    state["fc2.weight"] = torch.zeros(10, 256)
    path = tmp_path / "wide.pth"
    torch.save(state, path)
    return path


def _not_a_state_dict(random_weights: Path, tmp_path: Path) -> Path:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    return path


def _a_lone_tensor(random_weights: Path, tmp_path: Path) -> Path:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    return path


def _not_tensors(random_weights: Path, tmp_path: Path) -> Path:
    path = tmp_path / "numbers.pth"
    torch.save({"conv1.weight": [1.0, 2.0], "epoch": 3}, path)
    return path


def _bad_metadata(random_weights: Path, tmp_path: Path) -> Path:
    path = tmp_path / "meta.pth"
    path.write_bytes(random_weights.read_bytes())
    path.with_suffix(".json").write_text("{not json")
    return path


@pytest.mark.parametrize("load", list(LOADERS.values()), ids=list(LOADERS))
@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_missing, "not found"),
        (_empty, "the file is empty"),  # not just the name of empty.pth
        (_truncated, "truncated or corrupt"),
        (_corrupt, "truncated or corrupt"),
        (_garbage, "truncated or corrupt"),
        (_other_architecture, "do not fit"),
        (_wrong_shapes, "do not fit"),
        (_not_a_state_dict, "expected a state_dict"),
        (_a_lone_tensor, "expected a state_dict"),
        (_not_tensors, "expected a state_dict"),
        (_bad_metadata, "not valid JSON"),
    ],
)
def test_checkpoint_failures(
    make, words: str, load: Callable[[Path], object], random_weights: Path, tmp_path: Path
) -> None:
    path = make(random_weights, tmp_path)
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert words in message
    assert path.name in message  # which file
    assert message.endswith((".", "?"))  # a sentence, usually with what to do


def test_weights_of_another_architecture_name_the_keys(tmp_path: Path) -> None:
    path = save_checkpoint(FastCNN(), tmp_path / "fast_as_seed.pth", "MNISTCNN")
    with pytest.raises(CheckpointError, match="do not fit the MNISTCNN architecture") as info:
        load_model(path)
    message = str(info.value)
    assert "missing keys ['conv1.bias', 'conv1.weight'" in message  # the seed's, first six
    assert "unexpected keys ['features.0.0.weight'" in message  # FastCNN's

    # One key too many: nothing missing, the extra one named.
    state = {**MNISTCNN().state_dict(), "fc3.weight": torch.zeros(10, 10)}
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \[\], unexpected keys \['fc3"):
        load_model(tmp_path / "extra.pth")


def test_weights_of_other_shapes_say_which(random_weights: Path, tmp_path: Path) -> None:
    path = _wrong_shapes(random_weights, tmp_path)
    with pytest.raises(CheckpointError, match="size mismatch for fc"):
        load_model(path)


@pytest.mark.parametrize(
    ("sidecar", "words"),
    [
        pytest.param("{not json", "not valid JSON", id="invalid JSON"),
        pytest.param("[1, 2, 3]", "expected a JSON object, found list", id="an array"),
        pytest.param('"MNISTCNN"', "expected a JSON object, found str", id="a string"),
        pytest.param(b"\xff\xfe\x00 not text", "not valid JSON", id="not UTF-8"),
        pytest.param(
            '{"architecture": "ResNet152"}',
            "unknown architecture 'ResNet152'",
            id="an unknown architecture",
        ),
    ],
)
def test_bad_json_beside_the_weights(
    sidecar: str | bytes, words: str, random_weights: Path, tmp_path: Path
) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(random_weights.read_bytes())
    meta = metadata_path(path)
    if isinstance(sidecar, bytes):
        meta.write_bytes(sidecar)
    else:
        meta.write_text(sidecar)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert words in message
    assert str(meta) in message  # the JSON file is named: that is the one to fix


# --------------------------------------------------------------------------- nonsense models
# Each of these loaded before the one validation step of load_model, and served NaN (or
# crashed with a traceback instead of a CheckpointError).


def _weights(tmp_path: Path, name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    """The seed CNN's random weights, each tensor changed by ``change``, without a JSON."""
    path = tmp_path / f"{name}.pth"
    torch.save({k: change(v) for k, v in random_model().state_dict().items()}, path)
    return path


@pytest.mark.parametrize("load", list(LOADERS.values()), ids=list(LOADERS))
@pytest.mark.parametrize(
    ("name", "change", "words"),
    [
        ("nan", lambda t: t * float("nan"), "NaN or infinite values (in conv1.weight"),
        ("inf", lambda t: t + float("inf"), "NaN or infinite values"),
        # float64 weights that float32 cannot hold become infinite when loaded.
        ("overflow", lambda t: t.double() * 1e300, "NaN or infinite values"),
        ("bool", lambda t: t > 0, "conv1.weight holds bool values"),
        ("int", lambda t: (t * 100).long(), "conv1.weight holds int64 values"),
        ("complex", lambda t: t.to(torch.complex64), "conv1.weight holds complex64 values"),
    ],
)
def test_nonsense_weights_are_refused(
    load: Callable[[Path], object], name: str, change, words: str, tmp_path: Path
) -> None:
    path = _weights(tmp_path, name, change)
    with pytest.raises(CheckpointError) as info:
        load(path)
    assert words in str(info.value) and path.name in str(info.value)


def test_finite_weights_with_nan_outputs_are_refused(tmp_path: Path) -> None:
    # Batch norm divides by sqrt(running_var): a negative variance gives NaN for every input,
    # although each number in the file is finite.
    model = random_model(FastCNN)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(-1.0)
    path = tmp_path / "negative_variance.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="outputs are NaN or infinite") as info:
        load_model(path)
    assert path.name in str(info.value)


def test_half_precision_weights_still_load(tmp_path: Path) -> None:
    # Floating point of another width is a state_dict as good as any: it is cast, not refused.
    model = random_model()
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    loaded = load_model(path)
    assert loaded.model.conv1.weight.dtype == torch.float32


def test_integer_state_dict_keys_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "numbered.pth"
    torch.save(dict(enumerate(random_model().state_dict().values())), path)
    with pytest.raises(CheckpointError, match="keys include int 0, not a parameter name") as info:
        load_model(path)
    assert path.name in str(info.value)


def test_a_dict_of_other_things_says_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save({"conv1.weight": [1.0, 2.0], "conv1.bias": {"a": 1}, "epoch": 3}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "values include list ('conv1.weight'), dict ('conv1.bias'), int ('epoch')" in message
    assert "found dict." not in message  # not just the outer type


@pytest.mark.parametrize("head", [b"\x80", b"P", b"PK", b"\x80\x02", b"PK\x03"])
def test_a_few_bytes_are_a_truncated_file(head: bytes, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    path.write_bytes(head)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_model(path)
    assert "refused" not in str(info.value)  # not called an unsafe pickle either


def test_nested_wrapper_prefixes_in_any_order(tmp_path: Path) -> None:
    # torch.compile of a DataParallel model: "_orig_mod.module." (the other order is tested
    # with the single prefixes above).
    model = random_model(FastCNN, seed=5)
    path = tmp_path / "compiled_parallel.pth"
    state = {"_orig_mod.module._orig_mod." + k: v for k, v in model.state_dict().items()}
    torch.save(state, path)
    loaded = load_model(path)
    assert loaded.architecture == "FastCNN"
    assert_same_weights(loaded.model, model.state_dict())


def _with_json(random_weights: Path, tmp_path: Path, meta: object) -> Path:
    """A copy of ``random_weights`` whose JSON is its own with ``meta`` merged in (or, for a
    string, that text), and the right weights_sha256."""
    path = tmp_path / "model.pth"
    path.write_bytes(random_weights.read_bytes())
    if isinstance(meta, str):
        metadata_path(path).write_text(meta)
    else:
        own = json.loads(metadata_path(random_weights).read_text())
        metadata_path(path).write_text(json.dumps({**own, **meta}))
    return path


@pytest.mark.parametrize("load", list(LOADERS.values()), ids=list(LOADERS))
@pytest.mark.parametrize(
    ("meta", "words"),
    [
        pytest.param(
            {"input": {"mean": 0.1, "std": 0}}, "input.std must be greater than 0", id="std 0"
        ),
        pytest.param(
            {"input": {"mean": 0.1, "std": -0.3}}, "input.std must be greater than 0", id="std<0"
        ),
        pytest.param('{"input": {"std": NaN}}', "NaN is not a JSON number", id="std NaN"),
        pytest.param(
            '{"input": {"mean": Infinity}}', "Infinity is not a JSON number", id="mean inf"
        ),
        pytest.param(
            '{"input": {"mean": 1e400}}', "1e400' is too large for a number", id="mean 1e400"
        ),
        pytest.param(
            {"input": {"mean": "0.13"}}, "input.mean must be a finite number", id="mean str"
        ),
        pytest.param({"input": {"std": True}}, "input.std must be a finite number", id="std bool"),
        pytest.param({"input": [0.1, 0.3]}, "'input' must be an object, not list", id="input list"),
        pytest.param(
            {"metrics": [0.99]}, "'metrics' must be an object, not list", id="metrics list"
        ),
        pytest.param(
            {"metrics": {"test_accuracy": "99%"}}, "metrics.test_accuracy must be", id="metric str"
        ),
        pytest.param(
            {"architecture": 5}, "'architecture' must be a string, not int", id="arch int"
        ),
        pytest.param({"weights_sha256": 12}, "'weights_sha256' must be 64", id="sha int"),
        pytest.param(
            {"unsure": {"format_version": 1, "thresholds": {"min_confidence": 5}}},
            "bad 'unsure' entry (min_confidence is a probability",
            id="unsure 5",
        ),
        pytest.param(
            {"unsure": {"format_version": 1, "thresholds": {"max_holes": "2"}}},
            "bad 'unsure' entry (max_holes must be",
            id="unsure str",
        ),
        pytest.param({"unsure": [1]}, "bad 'unsure' entry", id="unsure list"),
        pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="100k arrays"),
        pytest.param(
            '{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply", id="100k objects"
        ),
        pytest.param(
            {"training": json.loads("[" * 40 + "]" * 40)}, "nested more than 32", id="40 deep"
        ),
    ],
)
def test_bad_metadata_fields_are_refused(
    load: Callable[[Path], object], meta: object, words: str, random_weights: Path, tmp_path: Path
) -> None:
    path = _with_json(random_weights, tmp_path, meta)
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert words in message, message
    assert str(metadata_path(path)) in message  # the JSON is the file to fix
    assert message.endswith(".") and "\n" not in message


def test_a_huge_sidecar_is_refused_without_reading_it(random_weights: Path, tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "model.pth"
    path.write_bytes(random_weights.read_bytes())
    with metadata_path(path).open("wb") as f:
        f.truncate(200 << 20)  # 200 MB (sparse: instant to make)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="larger than 4 MB") as info:
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(metadata_path(path)) in str(info.value)
    assert peak < 32 << 20  # a few MB read, not 200 MB (nor the 4 GB of parsing it)


# --------------------------------------------------------------------------- weights and JSON


def test_json_of_other_weights_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = save_checkpoint(random_model(seed=1), tmp_path / "m.pth")
    torch.save(random_model(seed=2).state_dict(), path)  # new weights beside the old JSON
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert f"{metadata_path(path)} describes other weights than m.pth" in message
    assert "Save or promote the model again" in message and "delete the JSON" in message
    # What the message says works: without the JSON they are a plain seed-format model.
    metadata_path(path).unlink()
    assert load_model(path).metadata == {}


def test_a_training_state_is_not_described_by_the_models_json(tmp_path: Path) -> None:
    # runs/x/mnist_cnn_model.ckpt sits beside the .pth's JSON; metadata_path maps both to it.
    final = save_checkpoint(
        random_model(seed=1), tmp_path / "m.pth", metrics={"test_accuracy": 0.99}
    )
    state = random_model(seed=2).state_dict()
    ckpt = tmp_path / "m.ckpt"
    torch.save({"config": {"architecture": "MNISTCNN"}, "epoch": 1, "model": state}, ckpt)
    assert metadata_path(ckpt) == metadata_path(final)
    loaded = load_model(ckpt)
    assert loaded.metadata == {} and loaded.info.test_accuracy is None  # not the .pth's 99%
    assert_same_weights(loaded.model, state)


class Killed(BaseException):
    """The writer dying at a chosen moment (what kill -9 does, as far as the files go)."""


def _kill_at_rename(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the ``n``-th ``os.replace`` (a rename: the only steps that change what a reader
    sees) kill the writer before it happens."""
    real = os.replace
    calls = {"n": 0}

    def replace(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            raise Killed
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _read_back(path: Path) -> tuple[float, dict[str, torch.Tensor]]:
    loaded = load_model(path)
    state = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
    return loaded.info.metrics["test_accuracy"], state


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_killed_save_leaves_the_old_pair_or_the_new_one(
    kill_at: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = random_model(seed=1), random_model(seed=2)
    path = save_checkpoint(old, tmp_path / "m.pth", metrics={"test_accuracy": 0.9956})
    _kill_at_rename(monkeypatch, kill_at)
    with pytest.raises(Killed):
        save_checkpoint(new, path, metrics={"test_accuracy": 0.1})
    monkeypatch.undo()
    accuracy, state = _read_back(path)
    pairs = {0.9956: old.state_dict(), 0.1: new.state_dict()}
    assert accuracy in pairs
    for key, tensor in pairs[accuracy].items():
        assert torch.equal(state[key], tensor), (accuracy, key)  # the weights of that JSON
    # The next save completes or clears what the killed one left, and leaves nothing else.
    save_checkpoint(new, path, metrics={"test_accuracy": 0.2})
    assert _read_back(path)[0] == 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pth"]


def test_a_save_killed_after_its_json_is_read_as_the_new_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The third rename is the new weights taking their name, after the new JSON: a reader
    # must already get the new pair, although the old weights are still under the name.
    old, new = random_model(seed=1), random_model(seed=2)
    path = save_checkpoint(old, tmp_path / "m.pth", metrics={"test_accuracy": 0.9956})
    before = path.read_bytes()
    _kill_at_rename(monkeypatch, 3)
    with pytest.raises(Killed):
        save_checkpoint(new, path, metrics={"test_accuracy": 0.1})
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old weights are still there, under the name
    accuracy, state = _read_back(path)
    assert accuracy == 0.1
    for key, tensor in new.state_dict().items():
        assert torch.equal(state[key], tensor), key


def test_a_reader_between_two_renames_reads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader got the old JSON, then the writer finished, then it read the new weights:
    # it must look again rather than call the pair torn.
    from mnist_cnn import checkpoint

    path = save_checkpoint(random_model(seed=1), tmp_path / "m.pth", metrics={"test_accuracy": 0.5})
    fresh = tmp_path / "fresh"
    save_checkpoint(random_model(seed=2), fresh / "m.pth", metrics={"test_accuracy": 0.7})
    path.write_bytes((fresh / "m.pth").read_bytes())  # new weights, old JSON: torn for now
    slept: list[float] = []

    def writer_finishes(seconds: float) -> None:
        slept.append(seconds)
        metadata_path(path).write_bytes((fresh / "m.json").read_bytes())

    monkeypatch.setattr(checkpoint.time, "sleep", writer_finishes)
    assert load_model(path).info.test_accuracy == 0.7
    assert len(slept) == 1


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    broken = random_model()
    with torch.no_grad():
        broken.fc2.bias.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN or infinite values \\(in fc2.bias\\)"):
        save_model(broken, path, {"architecture": "MNISTCNN"})
    with pytest.raises(CheckpointError, match="input.std must be greater than 0"):
        save_model(random_model(), path, {"input": {"std": 0.0}})
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        save_model(random_model(), path, {"history": [{"val_loss": float("nan")}]})
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("full", ["pending weights", "m.json"])
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_pair(
    full: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_cnn import atomic

    path = save_checkpoint(random_model(seed=1), tmp_path / "m.pth", metrics={"test_accuracy": 0.9})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # The new weights do not fit; or they do, and then their JSON does not.
    disk_full_for(
        monkeypatch, lambda name: name.endswith(".pending") if full != "m.json" else name == full
    )
    with pytest.raises(atomic.WriteError) as info:
        save_checkpoint(random_model(seed=2), path, metrics={"test_accuracy": 0.1})
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert message.startswith(f"cannot write {tmp_path}") and "\n" not in message
    assert message.endswith("No space left on device")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files
    assert load_model(path).info.test_accuracy == 0.9


# --------------------------------------------------------------------------- promote


def test_promote_replaces_the_pair_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_cnn.checkpoint import promote

    target = save_checkpoint(
        random_model(seed=1), tmp_path / "models" / "m.pth", metrics={"test_accuracy": 0.9956}
    )
    run = save_checkpoint(
        random_model(seed=2), tmp_path / "run" / "m.pth", metrics={"test_accuracy": 0.1}
    )
    for kill_at in (1, 2, 3):
        _kill_at_rename(monkeypatch, kill_at)
        with pytest.raises(Killed):
            promote(run, target)
        monkeypatch.undo()
        accuracy, state = _read_back(target)
        expected = {0.9956: random_model(seed=1), 0.1: random_model(seed=2)}[accuracy]
        for key, tensor in expected.state_dict().items():
            assert torch.equal(state[key], tensor), (kill_at, key)
    assert promote(run, target) == target
    assert target.read_bytes() == run.read_bytes()
    assert metadata_path(target).read_bytes() == metadata_path(run).read_bytes()  # verbatim


def test_promoting_a_model_without_json_records_its_hash(tmp_path: Path) -> None:
    from mnist_cnn.checkpoint import promote

    target = save_checkpoint(
        random_model(seed=1), tmp_path / "models" / "m.pth", metrics={"test_accuracy": 0.99}
    )
    seed_format = tmp_path / "seed.pth"
    torch.save(random_model(seed=2).state_dict(), seed_format)
    promote(seed_format, target)
    # The old JSON (99%) must not describe the new weights; the new one says only whose it is.
    assert json.loads(metadata_path(target).read_text()) == {"weights_sha256": file_sha256(target)}
    assert load_model(target).info.test_accuracy is None


def test_a_training_state_is_not_promoted(tmp_path: Path) -> None:
    from mnist_cnn.checkpoint import promote

    ckpt = tmp_path / "m.ckpt"
    torch.save({"config": {}, "epoch": 1, "model": random_model().state_dict()}, ckpt)
    with pytest.raises(CheckpointError, match="a training state, not a model"):
        promote(ckpt, tmp_path / "models" / "m.pth")
    assert not (tmp_path / "models").exists()
