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


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mnist_cnn`` as a user would, in the repository."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn", *args],
        cwd=REPO,
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
        "--preset {default,fast,seed}",
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
def test_train_cli_fast_run_end_to_end(tmp_path: Path) -> None:
    proc = run_cli(
        "train",
        "--preset",
        "fast",
        "--epochs",
        "1",
        "--train-subset",
        "2000",
        "--model-path",
        str(tmp_path / "m.pth"),
        "--report-dir",
        str(tmp_path / "r"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch  1/1" in proc.stdout and "test accuracy" in proc.stdout
    assert json.loads((tmp_path / "m.json").read_text())["training"]["train_subset"] == 2000


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
        (["train", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["train", "--threads", "-3"], "argument --threads: must be at least 0, got -3"),
        (["train", "--architecture", "resnet"], "invalid choice: 'resnet'"),
        (["train", "--schedule", "cosine"], "invalid choice: 'cosine'"),
        (["train", "--epochs", "0"], "argument --epochs: must be at least 1"),
        (["evaluate", "--threads", "many"], "expected an integer, got 'many'"),
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
def test_a_closed_pipe_ends_quietly() -> None:
    # `mnist-cnn evaluate | head -1`, with a reader that is gone before the first line.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_cnn", "evaluate"], cwd=REPO, stdout=subprocess.PIPE,
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
