"""The source distribution carries what its own test suite needs (MANIFEST.in), leaves out
junk, and still builds a wheel that is the package alone.

A packager unpacks the sdist, installs it and runs these tests; so every file of tests/ must
be in it, and every git-tracked file (the bundled MNIST, notebooks/, tools/, benchmarks/, the
top-level scripts the tests run...) but for the few in ``NOT_SHIPPED``.

The sdist is built from a copy of this checkout without its ``*.egg-info``: setuptools adds
every file listed in an existing ``SOURCES.txt`` to the sdist, so a stale one from an
earlier build would hide a line missing from MANIFEST.in (and building in place would also
write into the checkout). Junk is planted in the copy to check that it stays out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("setuptools", reason="the build backend (pyproject.toml) builds the sdist")

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tracked files deliberately not in the sdist: git and CI plumbing that no test reads.
NOT_SHIPPED = {".gitignore", ".ci/run"}

# Directories never copied, at any depth (the checkout's own junk is replaced by JUNK).
SKIPPED_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
}
# Top-level directories never copied: build output and what training writes.
SKIPPED_TOP = {"build", "dist", "models", "runs"}

# What a working checkout holds that must stay out of the sdist: training and notebook
# outputs, caches, temporary files, a virtualenv. Planted in the copy before building.
JUNK = [
    ".venv/pyvenv.cfg",
    ".pytest_cache/v/cache/lastfailed",
    ".ruff_cache/CACHEDIR.TAG",
    "models/mnist_cnn_model.pth",
    "runs/seed0/mnist_cnn_model.pth",
    "notebooks/models/mnist_cnn_model.pth",
    "notebooks/reports/evaluation.json",
    "notebooks/mnist_cnn/model.py",
    "notebooks/.ipynb_checkpoints/mnist_training-checkpoint.ipynb",
    "tests/__pycache__/conftest.cpython-311-pytest-9.0.pyc",
    "tests/.pytest_cache/v/cache/nodeids",
    "tools/__pycache__/build_notebooks.cpython-311.pyc",
    "src/mnist_cnn/__pycache__/paths.cpython-311.pyc",
    "data/mnist/train-images-idx3-ubyte.gz.tmp",
    "benchmarks/results.tmp",
]


def _build(backend_call: str, source: Path, out: Path) -> Path:
    """Run ``setuptools.build_meta.<backend_call>(out)`` in ``source`` (as ``python -m build
    --no-isolation`` would) and return the file it made."""
    out.mkdir()
    code = (
        "import sys; from setuptools import build_meta; "
        f"print(build_meta.{backend_call}(sys.argv[1]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=source, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, f"{backend_call} failed:\n{run.stdout}\n{run.stderr}"
    return out / run.stdout.strip().splitlines()[-1]


def _copy_checkout(dest: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory).resolve() == REPO_ROOT
        return {
            n
            for n in names
            if n in SKIPPED_DIRS or n.endswith(".egg-info") or (top and n in SKIPPED_TOP)
        }

    shutil.copytree(REPO_ROOT, dest, ignore=ignore, symlinks=True)
    for junk in JUNK:
        (dest / junk).parent.mkdir(parents=True, exist_ok=True)
        (dest / junk).write_bytes(b"junk")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sdist")
    _copy_checkout(root / "checkout")
    return _build("build_sdist", root / "checkout", root / "dist")


@pytest.fixture(scope="module")
def members(sdist: Path) -> set[str]:
    """The sdist's files, relative to its top directory (``mnist_cnn-<version>/``)."""
    with tarfile.open(sdist) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}


def _files_under(directory: Path) -> set[str]:
    """The files of a checkout directory, relative to the checkout, without caches."""
    found = set()
    for parent, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files:
            if not name.endswith((".pyc", ".pyo", ".tmp")):
                found.add((Path(parent) / name).relative_to(REPO_ROOT).as_posix())
    return found


def test_the_sdist_carries_the_whole_test_suite(members: set[str]) -> None:
    tests = _files_under(REPO_ROOT / "tests")
    assert "tests/conftest.py" in tests and "tests/test_sdist.py" in tests
    missing = sorted(tests - members)
    assert not missing, f"add to MANIFEST.in: {missing}"


def test_the_sdist_carries_every_tracked_file(members: set[str]) -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout (no git or no .git): the tracked files are unknown")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    tracked = {f for f in listed.stdout.split("\0") if f and (REPO_ROOT / f).is_file()}
    # The files the tests read by path are tracked: the check below covers them.
    assert {"data/mnist/SHA256SUMS", "tools/build_notebooks.py", "app.py"} <= tracked
    missing = sorted(tracked - NOT_SHIPPED - members)
    assert not missing, f"add to MANIFEST.in (or to NOT_SHIPPED if no test needs it): {missing}"


def test_the_sdist_leaves_out_junk(members: set[str]) -> None:
    assert not sorted(set(JUNK) & members)
    cached = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".git", ".venv"}
    junk = [
        m
        for m in members
        if cached & set(m.split("/")) or m.endswith((".pyc", ".tmp"))
        or m.split("/")[0] in SKIPPED_TOP
    ]  # fmt: skip
    assert not junk


def test_the_wheel_built_from_the_sdist_is_the_package_alone(
    sdist: Path, members: set[str], tmp_path: Path
) -> None:
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp_path, filter="data")
        else:  # Python without PEP 706 (before 3.10.12 / 3.11.4)
            tar.extractall(tmp_path)  # our own archive
    (unpacked,) = (p for p in tmp_path.iterdir() if p.is_dir())
    wheel = _build("build_wheel", unpacked, tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as zipped:
        names = set(zipped.namelist())
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    package = {m.removeprefix("src/") for m in members if m.startswith("src/mnist_cnn/")}
    assert "mnist_cnn/shipped/mnist_cnn_model.pth" in package
    assert names - dist_info == package
