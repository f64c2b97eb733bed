"""One rule for every "where": the model and the MNIST files, from any directory, in a clone
or from a wheel installed elsewhere."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from mnist_cnn import paths

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO_ROOT / "data" / "mnist"


def test_the_shipped_model_is_package_data() -> None:
    assert paths.SHIPPED_MODEL.is_file() and paths.SHIPPED_MODEL.with_suffix(".json").is_file()
    assert paths.SHIPPED_MODEL.parent.parent == Path(paths.__file__).parent


def test_a_given_model_file_or_run_directory(tmp_path: Path) -> None:
    weights = tmp_path / "run" / paths.MODEL_FILENAME
    weights.parent.mkdir()
    weights.write_bytes(b"x")
    assert paths.find_model(weights) == paths.Found(weights, "given")
    assert paths.find_model(weights.parent).path == weights  # a training run's directory
    with pytest.raises(paths.NotFoundError, match="nope.pth: model file not found"):
        paths.find_model(tmp_path / "nope.pth")


def test_the_working_directory_comes_before_the_shipped_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert paths.find_model() == paths.Found(paths.SHIPPED_MODEL, "shipped with the package")
    (tmp_path / "models").mkdir()
    (tmp_path / paths.LOCAL_MODEL).write_bytes(b"x")
    assert paths.find_model() == paths.Found(paths.LOCAL_MODEL, "working directory")


def test_no_model_anywhere_names_the_places_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "SHIPPED_MODEL", tmp_path / "site" / paths.MODEL_FILENAME)
    with pytest.raises(paths.NotFoundError) as info:
        paths.find_model()
    message = str(info.value)
    assert str(tmp_path / paths.LOCAL_MODEL) in message and "site" in message
    assert "mnist-cnn train" in message


def test_data_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # From a clone, the bundled copy; the working directory's data/mnist comes first.
    assert paths.find_data() == paths.Found(BUNDLED_DATA, "the repository's bundled copy")
    local = tmp_path / paths.LOCAL_DATA
    local.mkdir(parents=True)
    (local / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    assert paths.find_data().path == paths.LOCAL_DATA
    # Installed elsewhere (no clone), nothing local: the user cache, else a clear error.
    shutil.rmtree(local)
    monkeypatch.setattr(paths, "repo_root", lambda: None)
    with pytest.raises(paths.NotFoundError, match="mnist-cnn download") as info:
        paths.find_data()
    assert str(tmp_path / "cache" / "mnist-cnn" / "mnist") in str(info.value)
    cached = paths.user_data_dir()
    cached.mkdir(parents=True)
    (cached / "train-images-idx3-ubyte").write_bytes(b"x")
    assert paths.find_data() == paths.Found(cached, "user cache")
    with pytest.raises(paths.NotFoundError, match="no such directory"):
        paths.find_data(tmp_path / "elsewhere")


@pytest.mark.slow
def test_commands_say_which_model_they_use(tmp_path: Path, clear_digits: list) -> None:
    image, label, _ = clear_digits[0]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    run = [sys.executable, "-m", "mnist_cnn", "predict", str(image)]
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "using model" in proc.stderr and "(shipped with the package)" in proc.stderr
    assert f": {label}" in proc.stdout


@pytest.mark.slow
def test_evaluate_from_another_directory_finds_the_bundled_data(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    run = [sys.executable, "-m", "mnist_cnn", "evaluate"]
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy 99." in proc.stdout
    assert (tmp_path / "reports" / "evaluation.json").is_file()  # reports go where you are


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bare_venv(where: Path) -> tuple[Path, Path]:
    """(python, site-packages) of a fresh virtualenv that sees this environment's packages
    (torch, OpenCV, ...) through a .pth line, not as a site directory: the editable install
    of this checkout stays out, as on a machine where mnist-cnn is not installed."""
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    (site / "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


@pytest.mark.slow
def test_the_seeds_commands_run_from_a_clone_without_an_install(tmp_path: Path) -> None:
    python, _ = _bare_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(python), *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
            timeout=300,
        )  # fmt: skip

    assert run("-c", "import mnist_cnn").returncode == 1  # really not installed
    quick = run("test_model_quick.py", "--count", "3")
    assert quick.returncode == 0, quick.stderr
    assert run("app.py", "--help").returncode == 0
    seed_import = run("-c", "from src.model import MNISTCNN; print(MNISTCNN.__module__)")
    assert seed_import.stdout.strip() == "mnist_cnn.model", seed_import.stderr
    seed_train = run("src/train.py", "--help")
    assert seed_train.returncode == 0 and "mnist-cnn train" in seed_train.stderr
    assert "--outlier-weight" in seed_train.stdout


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_works_on_its_own(tmp_path: Path, clear_digits: list) -> None:
    shipped_before = _sha256(paths.SHIPPED_MODEL)
    wheels = tmp_path / "wheels"
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    source = tmp_path / "source"
    junk = ("build", "dist", "*.egg-info", "runs", "models", "data", ".*", "__pycache__")
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*junk))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("mnist_cnn-*.whl")
    python, site = _bare_venv(tmp_path / "venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(python), *args], cwd=work, capture_output=True, text=True, env=env, timeout=300
        )

    where = run("-c", "import mnist_cnn.paths as p; print(p.__file__, p.SHIPPED_MODEL)")
    assert str(site) in where.stdout and str(REPO_ROOT) not in where.stdout, where
    image, label, _ = clear_digits[0]
    shutil.copy(image, work / "digit.png")
    predicted = run("-m", "mnist_cnn", "predict", "digit.png")
    assert predicted.returncode == 0, predicted.stderr
    assert f"digit.png: {label}" in predicted.stdout
    assert "(shipped with the package)" in predicted.stderr
    loaded = run(
        "-c",
        "from mnist_cnn.predict import Predictor; print(Predictor.from_checkpoint().info.path)",
    )
    assert loaded.returncode == 0 and str(site) in loaded.stdout, loaded.stderr
    # No clone, no ./data/mnist, an empty cache: the error says where it looked and what to do.
    nodata = run("-m", "mnist_cnn", "evaluate")
    assert nodata.returncode == 1 and "Traceback" not in nodata.stderr
    assert "MNIST not found" in nodata.stderr and "mnist-cnn download" in nodata.stderr
    assert str(tmp_path / "cache" / "mnist-cnn" / "mnist") in nodata.stderr
    evaluated = run("-m", "mnist_cnn", "evaluate", "--data-dir", str(BUNDLED_DATA))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test accuracy 99." in evaluated.stdout
    assert (work / "reports" / "evaluation.json").is_file()
    trained = run(
        "-m", "mnist_cnn", "train", "--preset", "fast", "--epochs", "1", "--train-subset", "500",
        "--val-size", "200", "--data-dir", str(BUNDLED_DATA), "--no-progress", "--promote",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    # The run in runs/fast/ (the preset's name), then promoted to where the commands look.
    run_dir = work / "runs" / "fast"
    for name in ("mnist_cnn_model.pth", "mnist_cnn_model.json", "training_curves.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "evaluation.json").is_file()
    promoted = work / paths.LOCAL_MODEL
    assert promoted.read_bytes() == (run_dir / "mnist_cnn_model.pth").read_bytes()
    assert f"wrote promoted model: {paths.LOCAL_MODEL}" in trained.stdout
    # What was promoted here is now what the commands here use; the shipped file is intact.
    again = run("-m", "mnist_cnn", "predict", "digit.png")
    assert "(working directory)" in again.stderr
    assert _sha256(paths.SHIPPED_MODEL) == shipped_before
