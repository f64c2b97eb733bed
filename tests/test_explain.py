"""``mnist_cnn.explain`` and ``mnist-cnn explain``: the stages, feature maps and saliency of
one image, each compared with a plain reference computation, and the command's figure,
JSON and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _imaging import encode, gray8, on_paper, seven, with_exif_orientation
from PIL import Image

from mnist_cnn import explain
from mnist_cnn.cli import main
from mnist_cnn.data import normalise
from mnist_cnn.decode import ImageTooLargeError, UnsupportedImageError, preview
from mnist_cnn.locate import STAGES, locate
from mnist_cnn.model import MNISTCNN, Ensemble, ShiftTTA, logits_of
from mnist_cnn.predict import Predictor


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A hand-made 7 on paper: float gray (200, 160)."""
    return on_paper(seven())


@pytest.fixture(scope="module")
def explained(shipped_predictor: Predictor, photo: np.ndarray) -> explain.Explanation:
    return explain.explain(shipped_predictor, photo)


def test_the_stages_are_recorded_without_changing_the_answer(photo: np.ndarray) -> None:
    stages: dict[str, np.ndarray] = {}
    with_stages = locate(photo, stages)
    plain = locate(photo)
    assert np.array_equal(with_stages.image, plain.image) and with_stages.box == plain.box
    assert tuple(stages) == tuple(sorted(stages, key=STAGES.index)) and set(stages) == set(STAGES)
    assert stages["grayscale"].shape == photo.shape
    assert max(stages["fitted"].shape) == 20
    assert stages["centred"].shape == (28, 28)
    # The last stage is the model's input itself; the cleaned ink is white on black.
    assert np.array_equal(explain.to_uint8(stages["centred"]), plain.image)
    cleaned = stages["cleaned"]
    assert cleaned[0, 0] < 0.1 and cleaned.max() > 0.9


def test_explanation_holds_every_part(explained: explain.Explanation) -> None:
    e = explained
    assert e.prediction.digit == 7 and e.prediction.status == "ok"
    assert list(e.stages) == list(STAGES)
    assert {k: v.shape for k, v in e.activations.items()} == {
        "conv1": (32, 28, 28),
        "conv2": (64, 14, 14),
    }
    assert all(v.min() >= 0 for v in e.activations.values())  # rectified
    assert e.saliency.shape == (28, 28) and e.saliency.dtype == np.float32
    assert e.original.shape == (200, 160, 3) and e.original.dtype == np.uint8


def test_saliency_lies_on_the_strokes(explained: explain.Explanation) -> None:
    image = explained.prediction.model_input
    share = explain.saliency_on_ink(explained.saliency, image)
    # The strokes (grown by a pixel) cover a fifth of the input or less: a map that paid
    # no attention to them (uniform) would put only that share of its mass there.
    uniform = explain.saliency_on_ink(np.ones((28, 28), np.float32), image)
    assert uniform < 0.35
    assert share > 0.75
    # The evidence is on the ink, not beside it: the saliency of a transposed 7 is not.
    assert explain.saliency_on_ink(explained.saliency.T, image) < share - 0.1


def test_occlusion_matches_a_plain_loop(shipped_predictor: Predictor) -> None:
    """The vectorised occlusion against one forward pass per erased patch."""
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 13:16] = 255  # a "1"
    image[6:9, 10:13] = 200
    digit = 1
    fast = explain.occlusion(shipped_predictor, image, digit)
    model = shipped_predictor.model

    def log_odds(x: np.ndarray) -> float:
        logp = torch.log_softmax(logits_of(model, normalise(x[None], 0.1307, 0.3081)).double(), 1)[
            0
        ]
        others = torch.cat([logp[:digit], logp[digit + 1 :]])
        return float(logp[digit] - torch.logsumexp(others, 0))

    whole = log_odds(image)
    reference = np.zeros((28, 28), np.float32)
    for r in range(28):
        for c in range(28):
            erased = image.copy()
            erased[max(0, r - 2) : r + 3, max(0, c - 2) : c + 3] = 0
            if erased.sum() != image.sum():
                reference[r, c] = whole - log_odds(erased)
    np.testing.assert_allclose(fast, reference, atol=2e-4)
    assert np.count_nonzero(fast) > 50


def test_feature_maps_match_the_layers(shipped_predictor: Predictor) -> None:
    image = np.zeros((28, 28), np.uint8)
    image[8:20, 8:20] = 255
    maps = explain.feature_maps(shipped_predictor.model, image, shipped_predictor)
    model = shipped_predictor.model
    x = normalise(image[None], 0.1307, 0.3081)
    with torch.no_grad():
        conv1 = F.relu(model.conv1(x))
        conv2 = F.relu(model.conv2(F.max_pool2d(conv1, 2)))
    np.testing.assert_allclose(maps["conv1"], conv1[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(maps["conv2"], conv2[0].numpy(), atol=1e-5)


def test_ensembles_and_tta_show_their_first_network(photo: np.ndarray) -> None:
    torch.manual_seed(0)
    members = [MNISTCNN().eval(), MNISTCNN().eval()]
    model = ShiftTTA(Ensemble(members)).eval()
    from mnist_cnn.checkpoint import ModelInfo

    info = ModelInfo(path=Path("x.pth"), architecture="Ensemble", mean=0.1307, std=0.3081)
    predictor = Predictor(lambda x: logits_of(model, x), info, model=model)
    e = explain.explain(predictor, photo)
    x = normalise(e.prediction.model_input[None], 0.1307, 0.3081)
    with torch.no_grad():
        expected = F.relu(members[0].conv1(x))[0].numpy()
    np.testing.assert_allclose(e.activations["conv1"], expected, atol=1e-5)


def test_without_the_network_there_are_no_feature_maps(
    shipped_predictor: Predictor, photo: np.ndarray
) -> None:
    """An ONNX Runtime predictor has no PyTorch module: the rest is still explained."""
    onnx_like = Predictor(shipped_predictor.logits, shipped_predictor.info)
    e = explain.explain(onnx_like, photo)
    assert e.activations == {}
    assert e.saliency.any()
    explain.figure(e)  # draws a note in place of the maps


def test_to_dict_is_json(explained: explain.Explanation) -> None:
    d = json.loads(json.dumps(explained.to_dict()))
    assert d["prediction"]["digit"] == 7
    assert set(d["stages"]) == set(STAGES)
    assert np.array(d["input"]).shape == (28, 28)
    assert d["saliency"]["method"] == "occlusion"
    assert np.array(d["saliency"]["values"]).shape == (28, 28)
    assert d["activations"]["conv2"]["shape"] == [64, 14, 14]
    assert np.array(d["activations"]["conv1"]["values"]).shape == (32, 28, 28)


def test_grid_and_overlay() -> None:
    maps = np.zeros((10, 4, 5), np.float32)
    maps[3, 1, 2] = 2.0
    maps[9] = 1.0
    g = explain.grid(maps, columns=4)
    assert g.shape == (3 * 4 + 2, 4 * 5 + 3)
    assert g[1 * 0 + 1, 3 * 6 + 2] == 255  # channel 3: row 0, column 3
    assert g[2 * 5 + 2, 1 * 6 + 1] == 128  # channel 9 at half the layer's maximum
    assert g[4, 0] == 96  # a gap
    image = np.zeros((28, 28), np.uint8)
    saliency = np.zeros((28, 28), np.float32)
    saliency[3, 4], saliency[10, 10] = 2.0, -2.0
    rgb = explain.overlay(image, saliency, scale=2)
    assert rgb.shape == (56, 56, 3)
    assert rgb[6, 8, 0] > 200 and rgb[6, 8, 2] < 60  # red: evidence for
    assert rgb[20, 20, 2] > 200 and rgb[20, 20, 0] < 60  # blue: evidence against
    assert not rgb[0, 0].any()


def test_preview_shows_the_image_as_people_see_it() -> None:
    upright = gray8(on_paper(seven()))
    turned = preview(with_exif_orientation(upright, 6))
    assert turned.shape == (200, 160, 3)  # upright again, as taken
    rgba = np.zeros((50, 40, 4), np.uint8)
    rgba[10:20, 10:20] = (255, 0, 0, 255)
    shown = preview(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(shown[0, 0]) == (255, 255, 255)  # transparency over white
    assert tuple(shown[15, 15]) == (255, 0, 0)
    big = preview(np.zeros((1000, 500)), side=100)
    assert big.shape == (100, 50, 3)
    with pytest.raises(UnsupportedImageError):
        preview(b"not an image")
    with pytest.raises(ImageTooLargeError):
        preview(encode(upright, "PNG"), max_pixels=100)


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory: pytest.TempPathFactory, photo: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("explain") / "seven.png"
    path.write_bytes(encode(gray8(photo), "PNG"))
    return path


def test_command_writes_the_figure(
    photo_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(photo_file)]) == 0
    out = capsys.readouterr().out
    assert ": 7 " in out and "wrote seven-explained.png" in out
    with Image.open(tmp_path / "seven-explained.png") as figure:
        assert figure.width > 1000 and figure.height > 700


def test_command_json(photo_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fig.png"
    assert main(["explain", str(photo_file), "--json", "--out", str(out)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["prediction"]["digit"] == 7
    assert np.array(document["saliency"]["values"]).shape == (28, 28)
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello", "not an image"),
        (encode(Image.new("L", (50, 50), 255), "PNG"), "no digit found"),
        (None, "No such file"),
    ],
)
def test_command_errors_are_messages(
    tmp_path: Path, capsys, content: bytes | None, message: str
) -> None:
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    assert main(["explain", str(path), "--out", str(tmp_path / "f.png")]) == 1
    err = capsys.readouterr().err
    assert "mnist-cnn: error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "f.png").exists()


def test_command_needs_one_image_or_figures(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["explain"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        main(["explain", "a.png", "--figures", "docs/img"])
    assert "not both" in capsys.readouterr().err


def test_figures_need_the_example_photo(tmp_path: Path, capsys) -> None:
    assert main(["explain", "--figures", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "example photo is missing" in err and "make_example_photo.py" in err
