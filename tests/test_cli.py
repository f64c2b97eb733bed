"""The command line: help shows defaults, errors are messages (not tracebacks), jobs run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mnist_cnn.cli import main
from mnist_cnn.model import MNISTCNN

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mnist_cnn`` as a user would, in the repository (or ``cwd``)."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_module_entry_point_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("train", "evaluate", "download"):
        assert command in proc.stdout


def test_train_help_shows_defaults(cli_help: Callable[..., str]) -> None:
    out = cli_help("train")
    for fragment in (
        "--epochs EPOCHS",
        "(default: 12)",
        "--translate TRANSLATE",
        "(default: 0.06)",
        "--lr LR",
        "(default: 0.003)",
        "--augment, --no-augment",
        "--preset {best,default,fast,seed}",
        "--resume",
    ):
        assert fragment in out


def test_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--epochs", "many"])
    assert exit_info.value.code == 2
    assert "expected an integer, got 'many'" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_evaluate_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("evaluate", "--model", str(tmp_path / "nope.pth"))
    assert proc.returncode == 1
    assert "nope.pth: model file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("train", "--data-dir", str(tmp_path), "--model-path", str(tmp_path / "m.pth"))
    assert proc.returncode == 1
    assert "file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_train_bad_device_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--device",
            "cuda",
            "--train-subset",
            "100",
            "--model-path",
            str(tmp_path / "m.pth"),
        ]
    )
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert code == 1
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_writes_report_for_a_seed_format_state_dict(tmp_path: Path) -> None:
    # a plain state_dict with no metadata, as the seed saved it (untrained: ~10% accuracy)
    path = tmp_path / "seed.pth"
    torch.manual_seed(0)
    torch.save(MNISTCNN().state_dict(), path)
    proc = run_cli("evaluate", "--model", str(path), "--report-dir", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "rep" / "evaluation.json").read_text())
    assert report["examples"] == 10_000
    assert 0.0 < report["accuracy"] < 0.3
    assert sum(map(sum, report["confusion_matrix"])) == 10_000
    assert len(report["per_class"]) == 10 and len(report["worst_mistakes"]) == 25
    for png in ("confusion_matrix.png", "misclassified.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_run_writes_its_directory_and_replaces_nothing(tmp_path: Path) -> None:
    """From a directory with a promoted model: training writes runs/NAME/ only, and the
    commands go on using the promoted model until the run is promoted."""
    before = _promoted_model_in(tmp_path)
    proc = run_cli(
        "train", "--preset", "fast", "--epochs", "1", "--train-subset", "2000",
        "--name", "quick", "--threads", "1", "--data-dir", str(REPO / "data" / "mnist"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "epoch  1/1" in proc.stdout and "test accuracy" in proc.stdout
    run = tmp_path / "runs" / "quick"
    expected = {
        "mnist_cnn_model.pth", "mnist_cnn_model.json", "mnist_cnn_model.ckpt",
        "training_curves.png", "evaluation.json", "confusion_matrix.png", "misclassified.png",
    }  # fmt: skip
    assert {p.name for p in run.iterdir()} == expected
    for name in sorted(expected):
        assert f"runs/quick/{name}" in proc.stdout or name.endswith(".ckpt"), name
    meta = json.loads((run / "mnist_cnn_model.json").read_text())
    assert meta["training"]["train_subset"] == 2000 and meta["training"]["name"] == "quick"
    assert meta["training"]["model_path"] == "runs/quick/mnist_cnn_model.pth"
    report = json.loads((run / "evaluation.json").read_text())
    assert report["accuracy"] == meta["metrics"]["test_accuracy"]
    assert f"mnist-cnn promote {Path('runs/quick')}" in proc.stdout  # says what to do next
    assert _promoted_model_in(tmp_path) == before  # nothing replaced
    assert not (tmp_path / "reports").exists()


def _promoted_model_in(where: Path) -> bytes:
    """Put a (random-weights) promoted model in ``where``/models/; returns its bytes."""
    target = where / "models" / "mnist_cnn_model.pth"
    if not target.exists():
        from conftest import save_checkpoint

        save_checkpoint(MNISTCNN(), target)
    return target.read_bytes() + target.with_suffix(".json").read_bytes()


def test_promote_makes_a_run_the_model_used_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import save_checkpoint

    from mnist_cnn import paths

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    run = tmp_path / "runs" / "mine"
    save_checkpoint(MNISTCNN(), run / "mnist_cnn_model.pth", metrics={"test_accuracy": 0.75})
    assert paths.find_model().source == "shipped with the package"
    assert main(["promote", "runs/mine"]) == 0
    assert "promoted runs/mine to models/mnist_cnn_model.pth" in capsys.readouterr().out
    promoted = paths.find_model()
    assert promoted == paths.Found(paths.LOCAL_MODEL, "working directory")
    assert promoted.path.read_bytes() == (run / "mnist_cnn_model.pth").read_bytes()
    assert json.loads(promoted.path.with_suffix(".json").read_text())["metrics"] == {
        "test_accuracy": 0.75
    }
    # Weights whose JSON describes other weights are refused, and nothing is replaced.
    torch.manual_seed(2)
    other = tmp_path / "runs" / "other" / "mnist_cnn_model.pth"
    save_checkpoint(MNISTCNN(), other)
    torch.save(MNISTCNN().state_dict(), other)  # new weights, the old JSON
    before = promoted.path.read_bytes()
    assert main(["promote", "runs/other"]) == 1
    assert "describes other weights" in capsys.readouterr().err
    assert promoted.path.read_bytes() == before
    # Neither is a missing run or the model onto itself.
    assert main(["promote", "runs/none"]) == 1
    assert "model file not found" in capsys.readouterr().err
    assert main(["promote", "models"]) == 1
    assert "already the model" in capsys.readouterr().err


def test_a_bad_run_name_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("train", "--name", "../elsewhere", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "a run name is one plain directory name" in proc.stderr


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    """A real SIGINT during training: exit 130, checkpoint kept, ``--resume`` completes."""
    args = [
        "train", "--preset", "fast", "--epochs", "6", "--train-subset", "8000",
        "--threads", "1", "--model-path", str(tmp_path / "m.pth"), "--report-dir", str(tmp_path),
    ]  # fmt: skip
    # A shell without job control starts background jobs with SIGINT ignored, and children
    # inherit that (then Python installs no KeyboardInterrupt handler): give the child the
    # default disposition that a terminal's Ctrl-C meets.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_cnn", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": ""},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("epoch  1/6"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in out and "Traceback" not in err
    assert (tmp_path / "m.ckpt").is_file() and not (tmp_path / "m.pth").exists()

    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch  6/6" in resumed.stdout
    meta = json.loads((tmp_path / "m.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("option", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(option: str) -> None:
    code = (
        "import sys\n"
        "from mnist_cnn.cli import main\n"
        f"try:\n    main([{option!r}])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print('torch' in sys.modules, 'flask' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False False"
    if option == "--help":
        for command in ("train", "evaluate", "predict", "serve", "gradio", "export", "download"):
            assert command in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--threads", "0"], "argument --threads: must be in [1, 64], got 0"),
        (["serve", "--grace", "-1"], "argument --grace: must be at least 0, got -1"),
        (["serve", "--port", "70000"], "argument --port: must be in [0, 65535], got 70000"),
        (["serve", "--header-timeout", "0"], "argument --header-timeout: must be greater than 0"),
        (["train", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["train", "--device", "foo"], "argument --device: invalid choice: 'foo'"),
        (["train", "--threads", "-3"], "argument --threads: must be in [0, 256], got -3"),
        (["train", "--threads", "-1"], "argument --threads: must be in [0, 256], got -1"),
        # torch started a million threads and crashed (a segfault, no message at all)
        (["train", "--threads", "1000000"], "argument --threads: must be in [0, 256], got 1000000"),
        (["train", "--architecture", "resnet"], "invalid choice: 'resnet'"),
        (["train", "--schedule", "cosine"], "invalid choice: 'cosine'"),
        (["train", "--epochs", "0"], "argument --epochs: must be at least 1"),
        (["train", "--epochs", "2.5"], "argument --epochs: expected an integer, got '2.5'"),
        (["train", "--train-subset", "-5"], "argument --train-subset: must be at least 0, got -5"),
        (["train", "--val-size", "0"], "argument --val-size: must be in [1, 60000), got 0"),
        (["train", "--val-size", "60000"], "argument --val-size: must be in [1, 60000), got 60000"),
        (
            ["train", "--label-smoothing", "2"],
            "argument --label-smoothing: must be in [0, 1), got 2",
        ),
        (["train", "--lr", "inf"], "argument --lr: must be a finite number, got inf"),
        (["train", "--lr", "nan"], "argument --lr: must be a finite number, got nan"),
        (["train", "--lr", "0"], "argument --lr: must be greater than 0, got 0"),
        (["train", "--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
        (["train", "--weight-decay", "-0.1"], "argument --weight-decay: must be at least 0"),
        (["train", "--translate", "0.5"], "argument --translate: must be in [0, 0.5), got 0.5"),
        (["train", "--outlier-weight", "-1"], "argument --outlier-weight: must be at least 0"),
        (["train", "--seed", "-1"], "argument --seed: must be in [0, 9223372036854775807]"),
        (["evaluate", "--threads", "many"], "expected an integer, got 'many'"),
        (["evaluate", "--threads", "100000"], "argument --threads: must be in [0, 256]"),
        (["predict", "x.png", "--threads", "-1"], "argument --threads: must be in [0, 256]"),
        (["predict", "x.png", "--batch-size", "0"], "must be at least 1"),
    ],
)
def test_bad_options_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnist_cnn.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # `mnist-cnn evaluate | head -1`, with a reader that is gone before the first line.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_cnn", "evaluate"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_install_hints_are_one_line_naming_the_extra() -> None:
    from mnist_cnn.extras import EXTRAS, install_hint

    for extra in EXTRAS:
        hint = install_hint(extra, "something")
        assert "\n" not in hint and f"pip install 'mnist-cnn[{extra}]'" in hint
        assert "something is missing" in hint


def test_evaluate_refuses_a_model_that_outputs_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It reported 9.8% (every answer a 0) and exited 0; now the model does not load.
    model = MNISTCNN()
    with torch.no_grad():
        model.fc2.bias.fill_(float("nan"))
    path = tmp_path / "nan.pth"
    torch.save(model.state_dict(), path)
    reports = tmp_path / "reports"
    assert main(["evaluate", "--model", str(path), "--report-dir", str(reports)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: the weights hold NaN or infinite values (in fc2.bias)" in err
    assert not reports.exists()


def test_train_with_an_unwritable_report_directory_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its parent is a file: refused even to root (a read-only directory is not, to root).
    blocker = tmp_path / "file"
    blocker.write_text("")
    before = _promoted_model_in(tmp_path)
    code = main(
        [
            "train", "--preset", "fast", "--epochs", "1", "--train-subset", "2000",
            "--model-path", str(tmp_path / "models" / "mnist_cnn_model.pth"),
            "--report-dir", str(blocker / "reports"), "--data-dir", str(REPO / "data" / "mnist"),
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert (
        err == f"mnist-cnn: error: cannot write in {blocker / 'reports'}: Not a directory; "
        "nothing was trained. Choose other places with --model-path and --report-dir.\n"
    )
    assert "epoch  1/1" not in out  # not one epoch spent
    assert _promoted_model_in(tmp_path) == before  # the model there is the one it was


def test_promote_onto_a_full_disk_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import disk_full_for, save_checkpoint

    run = save_checkpoint(MNISTCNN(), tmp_path / "run" / "mnist_cnn_model.pth")
    target = tmp_path / "models" / "mnist_cnn_model.pth"
    disk_full_for(monkeypatch, lambda name: True)
    assert main(["promote", str(run), "--to", str(target)]) == 1
    err = capsys.readouterr().err
    assert err == f"mnist-cnn: error: cannot write {target}: No space left on device\n"
    assert not target.exists()


@pytest.mark.slow
def test_evaluate_into_an_unwritable_report_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import save_checkpoint

    model = save_checkpoint(MNISTCNN(), tmp_path / "m.pth")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["evaluate", "--model", str(model), "--report-dir", str(blocker / "r")]) == 1
    *_, last = capsys.readouterr().err.splitlines()  # after "using model ..."
    assert last.startswith(f"mnist-cnn: error: cannot write {blocker / 'r'}/")
    assert last.endswith(": Not a directory")
