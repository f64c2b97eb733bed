"""Where things are: one rule, used by every command, wherever the package is installed.

A **model** is, in this order:

1. the path given (``--model``): a weights file, or a directory that holds
   ``mnist_cnn_model.pth`` (a training run's output directory);
2. the working directory's conventional place, ``./models/mnist_cnn_model.pth``, where
   ``mnist-cnn promote`` (or ``train --promote``) puts a run's model: what you promoted
   here is what you serve here (a run alone, ``runs/<name>/``, replaces nothing);
3. the model shipped inside the package (``mnist_cnn/shipped/``, read through
   ``importlib.resources``), so that a wheel or ``pip install`` works on its own.

The **MNIST files** are, in this order: the directory given (``--data-dir``); the working
directory's ``./data/mnist``; the repository's bundled copy when the package runs from a
clone; the user cache directory (``$XDG_CACHE_HOME/mnist-cnn/mnist``, by default
``~/.cache/mnist-cnn/mnist``) that ``mnist-cnn download`` fills.

When nothing is found, the error names every place that was looked at and the one command
that fixes it for this installation. This module only answers "where": it reads no file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

MODEL_FILENAME = "mnist_cnn_model.pth"
LOCAL_MODEL = Path("models") / MODEL_FILENAME  # relative to the working directory
LOCAL_DATA = Path("data") / "mnist"  # relative to the working directory
RUNS = Path("runs")  # training runs, relative to the working directory

# setuptools installs packages as plain files (wheels are never imported from a zip), so the
# packaged weights have a real path that torch.load can open.
SHIPPED_MODEL = Path(str(resources.files("mnist_cnn") / "shipped" / MODEL_FILENAME))

# Any one of the four MNIST files, as the IDX name or gzipped: enough to call it "MNIST here".
_MNIST_MARKERS = ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")


class NotFoundError(FileNotFoundError):
    """Nothing found where it was looked for; the message says where, and how to fix it."""


@dataclass(frozen=True)
class Found:
    """A path and why it was chosen (``"given"``, ``"working directory"``, ...)."""

    path: Path
    source: str

    def describe(self) -> str:
        """``models/mnist_cnn_model.pth (working directory)``, for "using ..." lines."""
        return f"{self.path} ({self.source})"


def repo_root() -> Path | None:
    """The repository's root when the package runs from a clone (``src/mnist_cnn``), else
    ``None`` (an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src").is_dir() else None


def cache_dir() -> Path:
    """The user cache directory of mnist-cnn: ``$XDG_CACHE_HOME/mnist-cnn`` (default
    ``~/.cache/mnist-cnn``), ``%LOCALAPPDATA%\\mnist-cnn`` on Windows."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "mnist-cnn"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnist-cnn"


def user_data_dir() -> Path:
    """Where ``mnist-cnn download`` puts MNIST when there is no better place."""
    return cache_dir() / "mnist"


def run_dir(name: str) -> Path:
    """The directory of the training run ``name``: ``runs/<name>`` in the working directory."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"a run name is one plain directory name, not {name!r}")
    return RUNS / name


def find_model(given: str | Path | None = None) -> Found:
    """The weights file to use (see the module docstring). Raises ``NotFoundError``."""
    if given is not None:
        path = Path(given)
        if path.is_dir():
            path = path / MODEL_FILENAME
        if not path.is_file():
            raise NotFoundError(
                f"{path}: model file not found. Give a .pth file or a directory that holds "
                f"{MODEL_FILENAME} (a training run's directory)."
            )
        return Found(path, "given")
    if LOCAL_MODEL.is_file():
        return Found(LOCAL_MODEL, "working directory")
    if SHIPPED_MODEL.is_file():
        return Found(SHIPPED_MODEL, "shipped with the package")
    raise NotFoundError(
        f"no model found: looked for {Path.cwd() / LOCAL_MODEL} and for the shipped "
        f"{SHIPPED_MODEL} (missing from this installation). Train one here with "
        f"`mnist-cnn train`, or reinstall the package."
    )


def _has_mnist(directory: Path) -> bool:
    return any((directory / name).is_file() for name in _MNIST_MARKERS)


def data_candidates() -> list[Found]:
    """Where MNIST may be, in the order of the rule (whether or not it is there)."""
    out = [Found(LOCAL_DATA, "working directory")]
    root = repo_root()
    if root is not None:
        out.append(Found(root / "data" / "mnist", "the repository's bundled copy"))
    out.append(Found(user_data_dir(), "user cache"))
    return out


def find_data(given: str | Path | None = None) -> Found:
    """The directory of the MNIST files (see the module docstring). Raises
    ``NotFoundError``."""
    if given is not None:
        path = Path(given)
        if not path.is_dir():
            raise NotFoundError(
                f"{path}: no such directory. Give the directory of the MNIST IDX files, or "
                f"run `mnist-cnn download --data-dir {path}`."
            )
        return Found(path, "given")
    candidates = data_candidates()
    for candidate in candidates:
        if _has_mnist(candidate.path):
            return candidate
    looked = ", ".join(str(c.path) for c in candidates)
    raise NotFoundError(
        f"MNIST not found: looked in {looked}. Run `mnist-cnn download` (it fills "
        f"{user_data_dir()})."
    )
