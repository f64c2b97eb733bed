"""Ensembles and test-time augmentation (TTA) wherever a model is loaded.

The two wrappers of ``mnist_cnn.model`` are checked against hand computations (an
ensemble's probabilities are the mean of its members' softmax probabilities; TTA's, the
mean over the shifted copies of the input), then the checkpoint format of an ensemble (one
weights-and-JSON pair, written by ``save_ensemble``, read by ``load_model``), its refusals,
and every way in: the Predictor, the command line, ONNX, the web app.

Fast, apart from the ONNX exports: tiny random FastCNNs, files in ``tmp_path``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import save_checkpoint
from torch import nn

from mnist_cnn import data, predict
from mnist_cnn.checkpoint import (
    ENSEMBLE,
    MAX_ENSEMBLE_MEMBERS,
    CheckpointError,
    build_ensemble,
    file_sha256,
    load_model,
    metadata_path,
    promote,
    save_ensemble,
)
from mnist_cnn.cli import main
from mnist_cnn.model import (
    MNIST_MEAN,
    MNIST_STD,
    TTA_SHIFTS,
    Ensemble,
    FastCNN,
    ShiftTTA,
    logits_of,
)
from mnist_cnn.paths import MODEL_FILENAME
from mnist_cnn.predict import Predictor
from mnist_cnn.unsure import UnsurePolicy

# Both ways a checkpoint is opened (as in test_checkpoint.py): a failure must be the same
# clear error through either.
LOADERS: dict[str, Callable[[Path], object]] = {
    "load_model": load_model,
    "Predictor": Predictor.from_checkpoint,
}


def _member(seed: int) -> FastCNN:
    """A random FastCNN with non-trivial batch-norm statistics (as after training)."""
    torch.manual_seed(seed)
    model = FastCNN()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _inputs(n: int = 6, seed: int = 0) -> torch.Tensor:
    images = torch.randint(0, 256, (n, 28, 28), generator=torch.Generator().manual_seed(seed))
    return data.normalise(images.to(torch.uint8))


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x).double()


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three runs of a FastCNN (seeds 10, 11, 12), each a run directory as training writes."""
    root = tmp_path_factory.mktemp("runs")
    return [
        save_checkpoint(
            _member(seed),
            root / f"member-{seed}" / MODEL_FILENAME,
            "FastCNN",
            metrics={"val_accuracy": 0.4 + seed / 100, "test_accuracy": 0.5 + seed / 100},
            training={"seed": seed},
        ).parent
        for seed in (10, 11, 12)
    ]


@pytest.fixture(scope="module")
def ensemble(members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ensemble of the first two members, in a run directory, with made-up metrics."""
    target = tmp_path_factory.mktemp("ens") / "ensemble"
    return save_ensemble(members[:2], target, {"metrics": {"test_accuracy": 0.625}})


# --------------------------------------------------------------------------- the wrappers


def test_an_ensemble_of_one_answers_its_members_probabilities() -> None:
    member = _member(0)
    x = _inputs()
    expected = F.log_softmax(_forward(member, x), dim=1)
    got = _forward(Ensemble([member]), x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)


def test_an_ensemble_of_two_averages_the_probabilities() -> None:
    a, b = _member(0), _member(1)
    with torch.no_grad():  # confident members, as trained ones are, whose averages differ
        for m in (a, b):
            m.head.weight *= 50
    x = _inputs()
    # By hand: each member's softmax, then their plain mean.
    expected = (_forward(a, x).softmax(1) + _forward(b, x).softmax(1)) / 2
    got = _forward(Ensemble([a, b]), x).exp()
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    # Not the softmax of the mean logits, which is another (wrong) answer here.
    mean_logits = (_forward(a, x) + _forward(b, x)) / 2
    assert (got - mean_logits.softmax(1)).abs().max() > 0.01


def test_tta_without_shifts_is_the_model() -> None:
    model = _member(0)
    x = _inputs()
    got = _forward(ShiftTTA(model, shifts=((0, 0),)), x)
    assert torch.allclose(got, F.log_softmax(_forward(model, x), dim=1), rtol=0, atol=1e-6)


class _PositionFree(nn.Module):
    """Logits from the sorted pixel values: the same for any shift (a roll permutes them)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1).sort(dim=1).values)


def test_tta_of_a_model_blind_to_position_is_the_model() -> None:
    model, x = _PositionFree(), _inputs()
    expected = F.log_softmax(_forward(model, x), dim=1)
    assert torch.allclose(_forward(ShiftTTA(model), x), expected, rtol=0, atol=1e-6)
    # A convolutional network does see the shifts: there, TTA changes the answer.
    cnn = _member(0)
    plain = F.log_softmax(_forward(cnn, x), dim=1)
    assert not torch.allclose(_forward(ShiftTTA(cnn), x), plain, atol=1e-4)


def _tta_by_hand(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TTA's probabilities computed independently: the mean softmax over the shifted copies."""
    probabilities = [
        _forward(model, torch.roll(x, shifts=s, dims=(2, 3))).softmax(1) for s in TTA_SHIFTS
    ]
    return torch.stack(probabilities).mean(0)


def test_tta_averages_over_the_shifted_copies() -> None:
    model, x = _member(0), _inputs()
    got = _forward(ShiftTTA(model), x).exp()
    assert torch.allclose(got, _tta_by_hand(model, x), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- the format


def test_save_ensemble_writes_one_pair_that_loads_back(ensemble: Path, members: list[Path]) -> None:
    assert ensemble.name == MODEL_FILENAME  # a run directory was given
    loaded = load_model(ensemble.parent)
    assert loaded.architecture == ENSEMBLE
    assert isinstance(loaded.model, Ensemble) and len(loaded.model.members) == 2
    info = loaded.info
    assert (info.members, info.member_architecture, info.tta) == (2, "FastCNN", False)
    assert info.description == "ensemble of 2 FastCNN"
    assert info.parameters == 2 * sum(p.numel() for p in FastCNN().parameters())
    assert info.test_accuracy == 0.625  # the caller's metrics, not a member's
    assert (info.mean, info.std) == (MNIST_MEAN, MNIST_STD)
    manifest = json.loads(metadata_path(ensemble).read_text())
    assert manifest["weights_sha256"] == file_sha256(ensemble)
    assert "unsure" not in manifest  # measured on one network, not on the average
    entry = manifest["ensemble"]
    assert entry["architecture"] == "FastCNN"
    for i, (record, run) in enumerate(zip(entry["members"], members[:2], strict=True)):
        member_json = json.loads(metadata_path(run / MODEL_FILENAME).read_text())
        assert record["seed"] == 10 + i
        assert record["run"] == str(run)
        assert record["weights_sha256"] == file_sha256(run / MODEL_FILENAME)
        assert record["metrics"] == member_json["metrics"]
    # The averaged answer, as the members loaded alone give it.
    x = _inputs()
    expected = sum(_forward(load_model(m).model, x).softmax(1) for m in members[:2]) / 2
    assert torch.allclose(_forward(loaded.model, x).exp(), expected, rtol=0, atol=1e-6)


def test_the_weights_are_a_plain_ensemble_state_dict(ensemble: Path, members: list[Path]) -> None:
    state = torch.load(ensemble, map_location="cpu", weights_only=True)
    assert all(key.startswith(("members.0.", "members.1.")) for key in state)
    plain = Ensemble([FastCNN(), FastCNN()])
    plain.load_state_dict(state)  # strict: every key, nothing else
    for i, run in enumerate(members[:2]):
        prefix = f"members.{i}."
        alone = FastCNN()
        alone.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
        original = torch.load(run / MODEL_FILENAME, map_location="cpu", weights_only=True)
        assert set(alone.state_dict()) == set(original)
        for key, tensor in original.items():
            assert torch.equal(alone.state_dict()[key], tensor), key


def test_an_ensemble_of_one_loads_as_its_member(members: list[Path], tmp_path: Path) -> None:
    path = save_ensemble(members[:1], tmp_path / "one.pth")
    x = _inputs()
    got = logits_of(load_model(path).model, x).double().exp()
    expected = logits_of(load_model(members[0]).model, x).double().softmax(1)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    assert load_model(path).info.description == "ensemble of 1 FastCNN"


def test_an_ensemble_promotes_like_any_model(ensemble: Path, tmp_path: Path) -> None:
    target = promote(ensemble.parent, tmp_path / "models" / MODEL_FILENAME)
    assert file_sha256(target) == file_sha256(ensemble)
    assert load_model(target).info.description == "ensemble of 2 FastCNN"


def test_a_metadata_less_ensemble_state_dict_is_inferred(ensemble: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(ensemble, weights_only=True), bare)
    loaded = load_model(bare)
    assert loaded.info.description == "ensemble of 2 FastCNN"
    x = _inputs()
    assert torch.equal(logits_of(loaded.model, x), logits_of(load_model(ensemble).model, x))


def test_a_metadata_less_state_dict_with_too_many_members_is_refused(
    ensemble: Path, tmp_path: Path
) -> None:
    state = torch.load(ensemble, weights_only=True)
    state[f"members.{MAX_ENSEMBLE_MEMBERS}.head.bias"] = torch.zeros(10)
    torch.save(state, tmp_path / "huge.pth")
    with pytest.raises(CheckpointError, match=f"at most {MAX_ENSEMBLE_MEMBERS}"):
        load_model(tmp_path / "huge.pth")


def test_extra_metadata_cannot_rewrite_the_members(members: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot change architecture"):
        save_ensemble(members[:2], tmp_path / "e.pth", {"architecture": "FastCNN"})
    assert not (tmp_path / "e.pth").exists()


def test_build_ensemble_gives_the_model_and_manifest_to_evaluate_first(
    members: list[Path],
) -> None:
    model, manifest = build_ensemble(members)
    assert isinstance(model, Ensemble) and len(model.members) == 3
    assert manifest["architecture"] == ENSEMBLE and "metrics" not in manifest
    assert [m["seed"] for m in manifest["ensemble"]["members"]] == [10, 11, 12]


# --------------------------------------------------------------------------- refusals


def test_members_of_different_architectures_are_refused(
    members: list[Path], random_weights: Path, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError) as error:
        save_ensemble([members[0], random_weights], tmp_path / "e.pth")
    message = str(error.value)
    assert str(random_weights) in message
    assert "a MNISTCNN cannot join an ensemble of FastCNN" in message
    assert not (tmp_path / "e.pth").exists()


def test_members_with_different_normalisations_are_refused(
    members: list[Path], tmp_path: Path
) -> None:
    other = save_checkpoint(
        _member(5), tmp_path / "other.pth", "FastCNN", input={"mean": 0.5, "std": 0.25}
    )
    with pytest.raises(CheckpointError, match="share one input normalisation"):
        save_ensemble([members[0], other], tmp_path / "e.pth")


@pytest.mark.parametrize("count", [0, MAX_ENSEMBLE_MEMBERS + 1])
def test_an_ensemble_needs_one_to_the_most_members(
    members: list[Path], tmp_path: Path, count: int
) -> None:
    with pytest.raises(CheckpointError, match=f"1 to {MAX_ENSEMBLE_MEMBERS} member models"):
        save_ensemble([members[0]] * count, tmp_path / "e.pth")


def test_an_ensemble_is_not_a_member(ensemble: Path, members: list[Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot be a member of an ensemble"):
        save_ensemble([members[0], ensemble], tmp_path / "e.pth")


def test_an_ensemble_does_not_overwrite_a_member(members: list[Path]) -> None:
    before = file_sha256(members[0] / MODEL_FILENAME)
    with pytest.raises(CheckpointError, match="is one of the ensemble's members"):
        save_ensemble(members[:2], members[0])
    assert file_sha256(members[0] / MODEL_FILENAME) == before


def _edit(manifest: dict[str, Any], path: str, value: Any) -> None:
    """Set (or, with ``...``, delete) ``manifest[a][b]...`` for the path "a.b...";
    numbers index lists."""
    *parents, last = path.split(".")
    node: Any = manifest
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("ensemble", ..., "'architecture' is 'Ensemble' but there is no 'ensemble' entry"),
        ("ensemble", [1, 2], "'ensemble' must be an object, not list"),
        ("ensemble.architecture", "ResNet", "ensemble.architecture must be the members'"),
        ("ensemble.architecture", "Ensemble", "not 'Ensemble'"),
        ("ensemble.members", {}, "ensemble.members must be a list, not dict"),
        ("ensemble.members", [], "must list 1 to 64 members, not 0"),
        ("ensemble.members", [{}] * 65, "must list 1 to 64 members, not 65"),
        ("ensemble.members.1", "x", r"ensemble.members\[1\] must be an object, not str"),
        ("ensemble.members.0.seed", "ten", r"ensemble.members\[0\].seed must be an integer"),
        ("ensemble.members.0.seed", True, r"ensemble.members\[0\].seed must be an integer"),
        ("ensemble.members.0.run", 5, r"ensemble.members\[0\].run must be a string"),
        ("ensemble.members.0.weights_sha256", "abc", "must be 64 lowercase hex digits"),
        ("ensemble.members.0.metrics", [0.5], r"'ensemble.members\[0\].metrics' must be an object"),
        ("ensemble.members.0.metrics", {"acc": "high"}, "metrics.acc must be a finite number"),
        ("architecture", "FastCNN", "an 'ensemble' entry needs 'architecture': 'Ensemble'"),
        ("architecture", "Ensembles", "unknown architecture 'Ensembles'"),
        # A valid entry that does not describe these weights: three members listed, two held.
        ("ensemble.members", [{}, {}, {}], "do not fit an ensemble of 3 FastCNN"),
        ("ensemble.architecture", "MNISTCNN", "do not fit an ensemble of 2 MNISTCNN"),
    ],
)
@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_bad_ensemble_entry_is_a_clear_error(
    ensemble: Path, tmp_path: Path, path: str, value: Any, message: str, loader: str
) -> None:
    weights = tmp_path / MODEL_FILENAME
    weights.write_bytes(ensemble.read_bytes())
    manifest = json.loads(metadata_path(ensemble).read_text())
    _edit(manifest, path, value)
    metadata_path(weights).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message) as error:
        LOADERS[loader](weights)
    assert str(weights.parent) in str(error.value)  # the message names the file


# --------------------------------------------------------------------------- TTA on load


def test_load_model_with_tta_wraps_the_network(ensemble: Path) -> None:
    plain, wrapped = load_model(ensemble), load_model(ensemble, tta=True)
    assert isinstance(wrapped.model, ShiftTTA) and wrapped.info.tta
    assert wrapped.info.description == "ensemble of 2 FastCNN with shift TTA"
    assert wrapped.info.parameters == plain.info.parameters
    x = _inputs()
    got = logits_of(wrapped.model, x).double().exp()
    assert torch.allclose(got, _tta_by_hand(plain.model, x), rtol=0, atol=1e-6)


def test_tta_turns_off_only_the_largest_logit_rule(members: list[Path], tmp_path: Path) -> None:
    # Log-probabilities are at most 0: a logit threshold would flag every image.
    policy = UnsurePolicy(min_max_logit=5.0, min_confidence=0.3, max_marks=1)
    path = save_checkpoint(
        _member(3), tmp_path / "calibrated.pth", "FastCNN", unsure=policy.to_metadata()
    )
    assert Predictor.from_checkpoint(path).policy == policy
    with_tta = Predictor.from_checkpoint(path, tta=True).policy
    assert with_tta.min_max_logit is None
    assert (with_tta.min_confidence, with_tta.max_marks) == (0.3, 1)


# --------------------------------------------------------------------------- the ways in


def _digit_png(tmp_path: Path) -> Path:
    """A white 7-ish stroke on black: the Predictor finds a digit in it."""
    image = np.zeros((28, 28), np.uint8)
    image[5:8, 6:22] = 255
    image[8:24, 17:20] = 255
    path = tmp_path / "seven.png"
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


def test_the_predictor_reads_an_ensemble_path(
    ensemble: Path, members: list[Path], tmp_path: Path
) -> None:
    image = _digit_png(tmp_path)
    predictor = Predictor.from_checkpoint(ensemble.parent)  # the run directory
    assert predictor.info.description == "ensemble of 2 FastCNN"
    got = np.array(predictor.predict(image).probabilities)
    alone = [
        np.array(Predictor.from_checkpoint(m).predict(image).probabilities) for m in members[:2]
    ]
    assert np.abs(got - (alone[0] + alone[1]) / 2).max() < 1e-6
    with_tta = Predictor.from_checkpoint(ensemble, tta=True)
    assert with_tta.info.tta
    assert np.abs(np.array(with_tta.predict(image).probabilities) - got).max() > 1e-6


def test_cli_predict_with_an_ensemble_directory(
    ensemble: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _digit_png(tmp_path)
    assert main(["predict", str(image), "--model", str(ensemble.parent), "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    model = document["model"]
    assert model["architecture"] == ENSEMBLE and model["members"] == 2
    assert model["description"] == "ensemble of 2 FastCNN" and model["tta"] is False
    assert document["predicted"] == 1
    expected = Predictor.from_checkpoint(ensemble).predict(image).to_dict()
    assert document["results"][0]["probabilities"] == expected["probabilities"]
    assert "model: ensemble of 2 FastCNN" in captured.err
    assert main(["predict", str(image), "--model", str(ensemble), "--tta"]) == 0
    assert "model: ensemble of 2 FastCNN with shift TTA" in capsys.readouterr().err


def test_cli_evaluate_with_tta(
    ensemble: Path, test_split: data.Split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subset = data.Split(test_split.images[:64], test_split.labels[:64])
    monkeypatch.setattr(data, "load_split", lambda split, data_dir=None, verify=True: subset)
    reports = tmp_path / "reports"
    assert (
        main(["evaluate", "--model", str(ensemble.parent), "--tta", "--report-dir", str(reports)])
        == 0
    )
    report = json.loads((reports / "evaluation.json").read_text())
    assert report["examples"] == 64 and report["tta"] is True
    assert report["description"] == "ensemble of 2 FastCNN with shift TTA"
    # The loss of TTA's probabilities, computed by hand from the ensemble without TTA.
    x = data.normalise(subset.images)
    probabilities = _tta_by_hand(load_model(ensemble).model, x)
    loss = F.nll_loss(probabilities.log(), subset.labels).item()
    assert report["loss"] == pytest.approx(loss, abs=2e-6)


def test_onnx_metadata_of_an_ensemble_is_checked(tmp_path: Path) -> None:
    good = {
        "architecture": ENSEMBLE,
        "members": "3",
        "member_architecture": "FastCNN",
        "tta": "true",
    }
    info = predict._onnx_info(tmp_path / "m.onnx", good)
    assert info.description == "ensemble of 3 FastCNN with shift TTA"
    for bad, message in [
        ({"members": "0"}, "'members' must be 1 to 64, not 0"),
        ({"members": "100000000000"}, "'members' must be 1 to 64"),
        ({"members": "three"}, "'members' is 'three', not a number"),
        ({"member_architecture": "ResNet"}, "ensemble.architecture must be the members'"),
        ({"tta": "maybe"}, "'tta' must be true or false"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            predict._onnx_info(tmp_path / "m.onnx", {**good, **bad})


@pytest.mark.slow
def test_onnx_export_of_an_ensemble_with_and_without_tta(
    ensemble: Path, test_split: data.Split, tmp_path: Path
) -> None:
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from mnist_cnn import export

    inputs = data.normalise(test_split.images[:64])
    image = _digit_png(tmp_path)
    torch_answer = np.array(Predictor.from_checkpoint(ensemble).predict(image).probabilities)
    for tta in (False, True):
        target = ensemble.with_name(f"tta-{tta}.onnx")
        result = export.export_onnx(
            ensemble, target, batch_sizes=(1, 7, 64), inputs=inputs, tta=tta
        )
        assert result.argmax_agree and result.max_abs_diff < export.PARITY_TOLERANCE
        onnx_predictor = Predictor.from_checkpoint(target, backend="onnx", threads=1)
        info = onnx_predictor.info
        assert (info.architecture, info.members, info.member_architecture, info.tta) == (
            ENSEMBLE,
            2,
            "FastCNN",
            tta,
        )
        answer = np.array(onnx_predictor.predict(image).probabilities)
        if tta:
            expected = Predictor.from_checkpoint(ensemble, tta=True).predict(image).probabilities
            assert np.abs(answer - np.array(expected)).max() < 1e-5
        else:
            assert np.abs(answer - torch_answer).max() < 1e-5
            # TTA cannot be added to a graph after the fact: it is refused with the fix.
            with pytest.raises(CheckpointError, match="export --tta"):
                Predictor.from_checkpoint(target, backend="onnx", tta=True)


def test_the_web_app_describes_an_ensemble(ensemble: Path, tmp_path: Path) -> None:
    pytest.importorskip("flask", reason="the web extra is not installed")
    from mnist_cnn.web import WebConfig, create_app

    for tta in (False, True):
        client = create_app(
            WebConfig(model_path=ensemble.parent, tta=tta, log_predictions=False)
        ).test_client()
        body = client.get("/api/model").get_json()
        description = "ensemble of 2 FastCNN" + (" with shift TTA" if tta else "")
        assert body["architecture"] == ENSEMBLE and body["description"] == description
        assert (body["members"], body["member_architecture"], body["tta"]) == (2, "FastCNN", tta)
        assert body["test_accuracy"] == 0.625
        runs = [m["run"] for m in body["metadata"]["ensemble"]["members"]]
        assert runs == ["member-10", "member-11"]  # names only: no server directories
        assert str(tmp_path.parent) not in json.dumps(body)
        assert description in client.get("/").get_data(as_text=True)
        answer = client.post(
            "/api/predict", data=_digit_png(tmp_path).read_bytes(), content_type="image/png"
        )
        assert answer.status_code == 200
        assert answer.get_json()["model"]["description"] == description
        assert math.isclose(sum(answer.get_json()["probabilities"]), 1, abs_tol=1e-4)


def test_serve_and_gradio_pass_tta_on(
    ensemble: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnist_cnn import gradio_app
    from mnist_cnn.web import server

    configs: list[server.ServeConfig] = []
    real_serve = server.serve
    monkeypatch.setattr(server, "serve", configs.append)
    for flags, tta in (([], False), (["--tta"], True)):
        assert main(["serve", "--model", str(ensemble.parent), "--port", "0", *flags]) == 0
        assert configs[-1].tta is tta and configs[-1].model == ensemble
    # The library checks the field as the command line does.
    with pytest.raises(server.ServerError, match="tta must be true or false"):
        real_serve(server.ServeConfig(tta="yes", model=ensemble))  # type: ignore[arg-type]

    launched: list[Predictor] = []
    monkeypatch.setattr(gradio_app, "import_gradio", lambda: None)
    monkeypatch.setattr(gradio_app, "build_interface", lambda predictor: predictor)
    monkeypatch.setattr(gradio_app, "launch", lambda demo, **kwargs: launched.append(demo))
    assert main(["gradio", "--model", str(ensemble), "--tta"]) == 0
    assert launched[0].info.tta
    assert "(ensemble of 2 FastCNN with shift TTA)" in capsys.readouterr().out


# --------------------------------------------------------------------- training an ensemble


@pytest.mark.slow
def test_train_members_writes_an_ensemble_of_its_members(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from _web_fixtures import DATA_DIR

    from mnist_cnn.train import config_for, split_data

    out = tmp_path / "ens" / MODEL_FILENAME
    status = main(
        [
            "train", "--preset", "fast", "--members", "2", "--epochs", "1",
            "--train-subset", "1000", "--val-size", "500", "--data-dir", str(DATA_DIR),
            "--model-path", str(out), "--no-progress",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "ensemble of 2: validation" in printed
    loaded = load_model(out)
    assert loaded.architecture == ENSEMBLE and loaded.info.members == 2
    manifest = json.loads(metadata_path(out).read_text())["ensemble"]
    assert [m["seed"] for m in manifest["members"]] == [0, 1]
    runs = [out.parent / "members" / f"seed-{seed}" / MODEL_FILENAME for seed in (0, 1)]
    assert [m["weights_sha256"] for m in manifest["members"]] == [file_sha256(r) for r in runs]

    # The ensemble answers the mean of its members' probabilities (the reference), and its
    # recorded validation accuracy is that of the members' shared split.
    config = config_for("fast", train_subset=1000, val_size=500, data_dir=str(DATA_DIR))
    _, val = split_data(config)
    inputs = data.normalise(val.images)
    probs = torch.stack([F.softmax(logits_of(load_model(r).model, inputs), 1) for r in runs])
    mean = probs.mean(0)
    assert torch.allclose(F.softmax(logits_of(loaded.model, inputs), 1), mean, atol=1e-5)
    accuracy = (mean.argmax(1) == val.labels).float().mean().item()
    assert loaded.info.metrics["val_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert (out.parent / "evaluation.json").is_file()  # the run's report, as for one model


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_members_stop_when_the_command_is_killed(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from _web_fixtures import DATA_DIR, worker_pids

    command = [
        sys.executable, "-m", "mnist_cnn", "train", "--preset", "best", "--members", "2",
        "--jobs", "2", "--data-dir", str(DATA_DIR), "--model-path", str(tmp_path / "m.pth"),
    ]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        members: list[int] = []
        while len(members) < 2:  # the pool's two workers (and its resource tracker)
            assert run.poll() is None and time.monotonic() < deadline
            members = [
                pid
                for pid in worker_pids(run.pid)
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            time.sleep(0.1)
        run.send_signal(signal.SIGKILL)
        run.wait(10)

        def alive(pid: int) -> bool:  # a zombie is dead, waiting for init to reap it
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in members):
            assert time.monotonic() < deadline, "members kept training for nobody"
            time.sleep(0.1)
    finally:
        if run.poll() is None:
            run.kill()


@pytest.mark.slow  # trains two small members
def test_ensemble_command_combines_trained_models(
    members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], test_split: data.Split
) -> None:
    out = tmp_path / "combined" / MODEL_FILENAME
    assert main(["ensemble", str(members[0]), str(members[1]), "--model-path", str(out)]) == 0
    printed = capsys.readouterr().out
    loaded = load_model(out)
    assert loaded.info.members == 2
    # Scored on the test set as evaluate scores it; these members record different seeds
    # and so different validation splits: no validation figure is claimed.
    expected = (
        logits_of(loaded.model, data.normalise(test_split.images)).argmax(1) == test_split.labels
    )
    assert loaded.info.metrics["test_accuracy"] == pytest.approx(expected.float().mean().item())
    assert "val_accuracy" not in loaded.info.metrics
    assert f"test {100 * expected.float().mean().item():.2f}%" in printed
    assert (out.parent / "evaluation.json").is_file()
    # A member that is not a model: one line, exit 1, nothing written.
    bad = tmp_path / "bad" / MODEL_FILENAME
    assert (
        main(["ensemble", str(members[0]), str(tmp_path / "none"), "--model-path", str(bad)]) == 1
    )
    assert not bad.exists()
