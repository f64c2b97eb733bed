"""`mnist-cnn predict` on a folder that mixes good and bad files: every good file is still
classified (correctly, by the shipped model), every bad one is reported with its reason,
and the exit status says that something failed. A "not sure" answer is printed in words and
is not a failure."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _imaging import encode, font_digit, gray8, on_paper, with_exif_orientation
from PIL import Image

from mnist_cnn.cli import _prediction_line, main
from mnist_cnn.predict import Prediction, Predictor, Unsure

GOOD = {  # relative path -> digit
    "scans/three.png": 3,
    "scans/nested/deeper/five.jpg": 5,
    "photos/seven.jpg": 7,  # stored sideways with an EXIF orientation tag
    "canvas/two.png": 2,  # transparent canvas
    "canvas/eight.webp": 8,
    "misnamed/four.gif": 4,  # really a PNG
}
BAD = {  # relative path -> error code
    "broken/truncated.png": "unsupported_image",
    "broken/text.jpg": "unsupported_image",
    "broken/empty.png": "unsupported_image",
    "blank/white.png": "no_digit",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uploads")

    def write(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    paper = {d: gray8(on_paper(font_digit(d))) for d in range(10)}
    write("scans/three.png", encode(paper[3], "PNG"))
    write("scans/nested/deeper/five.jpg", encode(paper[5].convert("RGB"), "JPEG", quality=85))
    write("photos/seven.jpg", with_exif_orientation(paper[7], 6))
    rgba = np.zeros((240, 240, 4), np.uint8)
    rgba[..., 3] = np.round(font_digit(2) * 255).astype(np.uint8)
    write("canvas/two.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    write("canvas/eight.webp", encode(gray8(font_digit(8)).convert("RGB"), "WEBP", quality=90))
    write("misnamed/four.gif", encode(paper[4], "PNG"))
    good_png = encode(paper[1], "PNG")
    write("broken/truncated.png", good_png[: len(good_png) // 3])
    write("broken/text.jpg", b"this is not a photo\n")
    write("broken/empty.png", b"")
    write("blank/white.png", encode(Image.new("L", (100, 100), 255), "PNG"))
    write("notes/readme.txt", b"not an image, and not named like one: skipped")
    write(".hidden/one.png", good_png)  # hidden folders are skipped
    return root


def test_folder_with_good_and_bad_files(folder: Path, capsys) -> None:
    status = main(["predict", str(folder)])
    captured = capsys.readouterr()
    assert status == 1  # some files failed
    lines = captured.out.strip().splitlines()
    assert len(lines) == len(GOOD)
    for line in lines:
        path, rest = line.split(": ", 1)
        rel = Path(path).relative_to(folder).as_posix()
        assert rest.split()[0] == str(GOOD[rel]), line
        assert "top 3:" in rest
    for rel in BAD:
        assert str(folder / rel) in captured.err
    assert "readme.txt" not in captured.out + captured.err
    assert ".hidden" not in captured.out + captured.err
    assert f"{len(GOOD)} predicted, {len(BAD)} failed" in captured.err


def test_json_output(folder: Path, capsys) -> None:
    status = main(["predict", str(folder), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert status == 1
    assert document["predicted"] == len(GOOD) and document["failed"] == len(BAD)
    assert document["model"]["backend"] == "torch"
    results = {Path(r["path"]).relative_to(folder).as_posix(): r for r in document["results"]}
    assert set(results) == set(GOOD) | set(BAD)
    paths = [r["path"] for r in document["results"]]
    assert paths == sorted(paths, key=lambda p: Path(p).relative_to(folder).parts)
    assert document["unsure"] == 0
    for rel, digit in GOOD.items():
        r = results[rel]
        assert r["digit"] == digit and r["top3"][0]["digit"] == digit
        # Clear digits: the model is sure of them.
        assert r["status"] == "ok" and r["reason"] is None
        assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4
    for rel, code in BAD.items():
        assert results[rel]["error"]["code"] == code
        assert results[rel]["error"]["message"]


def test_save_inputs(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "inputs"
    main(
        [
            "predict",
            str(folder / "scans"),
            str(folder / "photos"),
            "--save-inputs",
            str(out),
            "--json",
        ]
    )
    document = json.loads(capsys.readouterr().out)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["nested/deeper/five.png", "seven.png", "three.png"]
    for r in document["results"]:
        image = np.asarray(Image.open(r["model_input"]))
        assert image.shape == (28, 28) and image.dtype == np.uint8
        assert image.max() == 255 and image[0, 0] == 0  # white digit on black


def test_all_good_files_exit_zero(folder: Path, capsys) -> None:
    assert main(["predict", str(folder / "scans"), str(folder / "canvas")]) == 0
    assert "4 predicted, 0 failed" in capsys.readouterr().err


def test_missing_file_is_reported_and_the_rest_processed(folder: Path, capsys) -> None:
    status = main(["predict", str(folder / "nope.png"), str(folder / "scans" / "three.png")])
    captured = capsys.readouterr()
    assert status == 1
    assert "nope.png" in captured.err and "No such file" in captured.err
    assert "three.png: 3" in captured.out


def test_bad_checkpoint_and_empty_folder(folder: Path, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(folder), "--model", str(tmp_path / "missing.pth")]) == 1
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty")]) == 1
    assert "no image files" in capsys.readouterr().err


def test_small_batches_give_the_same_answers(folder: Path, capsys) -> None:
    main(["predict", str(folder), "--json"])
    whole = json.loads(capsys.readouterr().out)
    main(["predict", str(folder), "--json", "--batch-size", "2"])
    batched = json.loads(capsys.readouterr().out)
    assert [r.get("digit") for r in whole["results"]] == [
        r.get("digit") for r in batched["results"]
    ]


@pytest.fixture
def everything_unsure(monkeypatch: pytest.MonkeyPatch) -> Unsure:
    """Every prediction flagged "unsure" (whatever the Predictor's own decision), keeping the
    model's digit and probabilities."""
    reason = Unsure("several_marks", "there is more than one mark in the picture")
    predict_inputs = Predictor.predict_inputs

    def flagged(self: Predictor, inputs: np.ndarray) -> list[Prediction]:
        return [dataclasses.replace(p, reason=reason) for p in predict_inputs(self, inputs)]

    monkeypatch.setattr(Predictor, "predict_inputs", flagged)
    return reason


def test_not_sure_is_printed_in_words_and_exits_zero(
    folder: Path, everything_unsure: Unsure, capsys
) -> None:
    status = main(["predict", str(folder / "scans"), str(folder / "canvas")])
    captured = capsys.readouterr()
    assert status == 0  # "not sure" is an answer, not a failure
    lines = captured.out.strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        path, rest = line.split(": ", 1)
        digit = GOOD[Path(path).relative_to(folder).as_posix()]
        assert rest.startswith(f"not sure ({digit}"), line
        assert f": {everything_unsure.message})" in rest and "top 3:" in rest
    assert "4 predicted, 0 failed, 4 not sure" in captured.err


def test_not_sure_in_json(folder: Path, everything_unsure: Unsure, capsys) -> None:
    status = main(["predict", str(folder), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert status == 1  # the bad files still fail; the unsure ones do not count as failures
    assert document["failed"] == len(BAD) and document["unsure"] == len(GOOD)
    for r in document["results"]:
        if "error" in r:
            continue
        assert r["status"] == "unsure"
        assert r["reason"] == {"code": "several_marks", "message": everything_unsure.message}


def _prediction(top3: tuple[tuple[int, float], ...], reason: Unsure | None) -> Prediction:
    probabilities = [0.0] * 10
    for digit, probability in top3:
        probabilities[digit] = probability
    return Prediction(
        digit=top3[0][0],
        confidence=top3[0][1],
        probabilities=tuple(probabilities),
        top3=top3,
        model_input=np.zeros((28, 28), np.uint8),
        reason=reason,
    )


def test_the_line_names_the_runner_up_when_it_is_a_contender() -> None:
    ambiguous = Unsure("ambiguous", "it could be either")
    close = _prediction(((4, 0.52), (9, 0.41), (7, 0.03)), ambiguous)
    assert _prediction_line(Path("photo.jpg"), close) == (
        "photo.jpg: not sure (4 or 9: it could be either)  top 3: 4 52.0%, 9 41.0%, 7 3.0%"
    )
    alone = _prediction(((8, 0.61), (3, 0.02), (5, 0.01)), Unsure("not_a_digit", "no digit"))
    assert _prediction_line(Path("x.png"), alone).startswith("x.png: not sure (8: no digit)  ")
    sure = _prediction(((3, 0.971), (5, 0.022), (8, 0.004)), None)
    assert _prediction_line(Path("s.png"), sure) == (
        "s.png: 3  (97.1%)  top 3: 3 97.1%, 5 2.2%, 8 0.4%"
    )


# --------------------------------------------------------------- paths that cannot be read
# Every path given or found is reported exactly once, with an error code, and counts in the
# exit status; nothing is skipped in silence, nothing blocks, nothing is a traceback.


def _run_predict(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``mnist-cnn predict ARGS`` in a fresh process (the shipped model, as cwd has none);
    a time limit turns a hang into a failure instead of a stuck suite."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn", "predict", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        stdin=subprocess.DEVNULL,
        timeout=120,
        env={**os.environ, **env},
    )


def _reported(err: str, path: Path | str) -> int:
    """How many error lines of stderr name ``path``."""
    return sum(line.startswith(f"mnist-cnn: error: {path}: ") for line in err.splitlines())


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    """A folder with two good digits (3 in good/three.png, 5 in good/deeper/five.png)."""
    root = tmp_path / "digits"
    (root / "good" / "deeper").mkdir(parents=True)
    (root / "good" / "three.png").write_bytes(encode(gray8(on_paper(font_digit(3))), "PNG"))
    (root / "good" / "deeper" / "five.png").write_bytes(
        encode(gray8(on_paper(font_digit(5))), "PNG")
    )
    return root


def test_an_unreadable_folder_is_reported(
    digits: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # Listing the folder fails as it does for another user's chmod 700 folder (running as
    # root, chmod cannot stop us reading it: the test below does it for real when it can).
    locked = digits / "good" / "deeper"
    scandir = os.scandir

    def refusing(path: Any = ".") -> Any:
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    status = main(["predict", str(digits), "--json"])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert status == 1
    assert _reported(captured.err, locked) == 1
    assert "Permission denied" in captured.err
    records = {r["path"]: r for r in document["results"]}
    assert records[str(locked)]["error"]["code"] == "unreadable_directory"
    assert records[str(digits / "good" / "three.png")]["digit"] == 3
    assert (document["predicted"], document["failed"]) == (1, 1)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root reads a chmod 000 folder anyway (the test above simulates the refusal)",
)
def test_a_chmod_000_folder_is_reported(digits: Path, capsys) -> None:
    locked = digits / "good" / "deeper"
    locked.chmod(0)
    try:
        status = main(["predict", str(digits)])
    finally:
        locked.chmod(0o755)
    captured = capsys.readouterr()
    assert status == 1
    assert _reported(captured.err, locked) == 1
    assert "1 predicted, 1 failed" in captured.err


def test_symlink_loops_are_reported_once_and_end(digits: Path, capsys) -> None:
    (digits / "good" / "deeper" / "back").symlink_to("..")  # a link to a folder above it
    (digits / "here").symlink_to(".")  # a link to the folder itself
    (digits / "self.png").symlink_to("self.png")  # a link to itself: ELOOP
    status = main(["predict", str(digits), "--json"])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    records = {r["path"]: r for r in document["results"]}
    assert status == 1
    loops = [digits / "good" / "deeper" / "back", digits / "here", digits / "self.png"]
    for loop in loops:
        assert _reported(captured.err, loop) == 1, captured.err
        assert records[str(loop)]["error"]["code"] == "symlink_loop"
    # The good files once each (not again through the links), and nothing else.
    assert sorted(records) == sorted(
        [str(digits / "good" / "three.png"), str(digits / "good" / "deeper" / "five.png")]
        + [str(loop) for loop in loops]
    )
    assert (document["predicted"], document["failed"]) == (2, 3)


def test_links_to_folders_are_followed(digits: Path, tmp_path: Path, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "two.png").write_bytes(encode(gray8(on_paper(font_digit(2))), "PNG"))
    (digits / "linked").symlink_to(elsewhere)
    assert main(["predict", str(digits)]) == 0
    assert f"{digits / 'linked' / 'two.png'}: 2 " in capsys.readouterr().out


def test_a_dangling_link_is_reported(digits: Path, capsys) -> None:
    (digits / "gone.png").symlink_to(digits / "missing.png")
    (digits / "gone_folder").symlink_to(digits / "missing")  # could have been a folder
    for args in ([str(digits)], [str(digits / "gone.png"), str(digits / "good")]):
        status = main(["predict", *args])
        captured = capsys.readouterr()
        assert status == 1
        assert _reported(captured.err, digits / "gone.png") == 1
        assert "broken symbolic link" in captured.err
        assert captured.out.count(": 3  (") == 1 and captured.out.count(": 5  (") == 1
    assert _reported(captured.err, digits / "gone_folder") == 0  # not under the folders given


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_special_files_are_refused_without_opening(digits: Path, tmp_path: Path) -> None:
    # Opening a FIFO waits for a writer forever; the old code hung here (the timeout of
    # _run_predict turns that into a failure).
    os.mkfifo(digits / "pipe.png")
    os.mkfifo(tmp_path / "named_pipe")
    proc = _run_predict(
        str(digits), str(tmp_path / "named_pipe"), os.devnull, "--json", cwd=tmp_path
    )
    records = {r["path"]: r for r in json.loads(proc.stdout)["results"]}
    assert proc.returncode == 1
    for special, kind in [
        (digits / "pipe.png", "a FIFO"),
        (tmp_path / "named_pipe", "a FIFO"),
        (os.devnull, "a character device"),
    ]:
        assert _reported(proc.stderr, special) == 1
        assert records[str(special)]["error"]["code"] == "not_a_file"
        assert kind in records[str(special)]["error"]["message"]
    assert records[str(digits / "good" / "three.png")]["digit"] == 3
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # runs the command in a subprocess
@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names not in UTF-8")
def test_a_file_name_not_in_utf8(digits: Path, tmp_path: Path) -> None:
    # A Latin-1 "é" (byte 0xE9) is not UTF-8: Python holds the name with a lone surrogate,
    # which a strict UTF-8 stdout refuses (a UnicodeEncodeError traceback before).
    name = os.fsdecode(b"caf\xe9.png")
    (digits / "good" / name).write_bytes(encode(gray8(on_paper(font_digit(7))), "PNG"))
    shown = f"{digits / 'good'}/caf\\xe9.png"
    strict = {"PYTHONIOENCODING": "utf-8:strict"}
    text = _run_predict(str(digits), cwd=tmp_path, **strict)
    assert text.returncode == 0, text.stderr
    assert any(line.startswith(f"{shown}: 7  (") for line in text.stdout.splitlines())
    assert "3 predicted, 0 failed" in text.stderr
    # In JSON the name is a string every parser accepts (valid Unicode, no lone surrogate).
    as_json = _run_predict(str(digits), "--json", cwd=tmp_path, **strict)
    assert as_json.returncode == 0, as_json.stderr
    paths = [r["path"] for r in json.loads(as_json.stdout)["results"]]
    assert shown in paths
    for path in paths:
        path.encode("utf-8")  # raises on a surrogate


def test_a_broken_name_in_an_error_line(tmp_path: Path, capsys) -> None:
    # Error lines show such names escaped, and control characters too, which could break
    # the line or drive the terminal; JSON records carry the controls (JSON escapes them)
    # but never a lone surrogate.
    bad = tmp_path / os.fsdecode(b"bad\xff\n\x1b[31m.png")
    bad.write_bytes(b"not an image")
    assert main(["predict", str(tmp_path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    shown = f"mnist-cnn: error: {tmp_path}/bad\\xff\\x0a\\x1b[31m.png: the "
    assert sum(line.startswith(shown) for line in lines) == 1, lines
    assert main(["predict", str(tmp_path), "--json"]) == 1
    (record,) = json.loads(capsys.readouterr().out)["results"]
    assert record["path"] == f"{tmp_path}/bad\\xff\n\x1b[31m.png"
    assert record["error"]["code"] == "unsupported_image"


def test_a_nul_in_a_path_is_a_clear_error(digits: Path, capsys) -> None:
    status = main(["predict", "bad\0name.png", "", str(digits / "good" / "three.png"), "--json"])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    records = document["results"]
    assert status == 1
    assert [r.get("error", {}).get("code") for r in records] == ["invalid_path"] * 2 + [None]
    assert records[0]["error"]["message"] == "the path contains a NUL character"
    assert records[1]["error"]["message"] == "the path is empty"
    assert records[2]["digit"] == 3
    assert _reported(captured.err, "bad\\x00name.png") == 1
    assert (document["predicted"], document["failed"]) == (1, 2)


def test_a_very_long_name_is_reported(digits: Path, capsys) -> None:
    long = digits / ("x" * 5000 + ".png")
    assert main(["predict", str(long), str(digits / "good" / "three.png")]) == 1
    captured = capsys.readouterr()
    assert _reported(captured.err, long) == 1
    assert "File name too long" in captured.err


# --------------------------------------------------------------------------- --number


def _written_number(text: str) -> np.ndarray:
    """``text`` in OpenCV's Hershey font, dark on white paper, digits apart: uint8 gray."""
    import cv2

    image = np.full((200, 140 * len(text) + 60), 255, np.uint8)
    for i, ch in enumerate(text):
        cv2.putText(image, ch, (40 + 140 * i, 150), cv2.FONT_HERSHEY_SIMPLEX, 4, 0, 12)
    return image


def test_predict_number_prints_the_number_and_each_digit(tmp_path: Path, capsys) -> None:
    path = tmp_path / "year.png"
    path.write_bytes(encode(Image.fromarray(_written_number("2026")), "PNG"))
    out_dir = tmp_path / "seen"
    assert main(["predict", "--number", str(path), "--save-inputs", str(out_dir)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: 2026  (") and line.count("%") == 5, line
    saved = sorted(p.name for p in out_dir.iterdir())
    assert saved == ["year-1.png", "year-2.png", "year-3.png", "year-4.png"]
    with Image.open(out_dir / "year-4.png") as six:
        assert six.size == (28, 28)


def test_predict_number_json_and_errors(tmp_path: Path, capsys) -> None:
    good, bad = tmp_path / "42.png", tmp_path / "bad.png"
    good.write_bytes(encode(Image.fromarray(_written_number("42")), "PNG"))
    bad.write_bytes(b"not an image")
    assert main(["predict", "--number", "--json", str(good), str(bad)]) == 1
    document = json.loads(capsys.readouterr().out)
    first, second = document["results"]
    assert first["number"] == "42" and first["status"] == "ok"
    assert [d["digit"] for d in first["digits"]] == [4, 2]
    x1 = first["digits"][0]["box"][2]
    assert x1 <= first["digits"][1]["box"][0]  # left to right, in the file's pixels
    assert second["error"]["code"] == "unsupported_image"
    assert document["failed"] == 1 and document["predicted"] == 1


def test_predict_number_of_one_digit_is_the_single_digit_answer(
    tmp_path: Path, capsys, shipped_predictor: Predictor
) -> None:
    path = tmp_path / "seven.png"
    path.write_bytes(encode(Image.fromarray(_written_number("7")), "PNG"))
    assert main(["predict", "--number", "--json", str(path)]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    single = shipped_predictor.predict(path)
    assert result["number"] == "7" and len(result["digits"]) == 1
    assert result["digits"][0]["probabilities"] == single.to_dict()["probabilities"]
