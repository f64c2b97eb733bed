"""The guide's figures (docs/img/) are what ``make docs`` makes from the shipped model: a
test regenerates every one and compares it with the committed file, so a new shipped model
or a changed figure function cannot leave the guide showing another model's pictures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _web_fixtures import DATA_DIR, REPO_ROOT
from PIL import Image

from mnist_cnn.figures import EXAMPLE_PHOTO, NAMES, write_guide_figures
from mnist_cnn.paths import SHIPPED_MODEL

DOCS_IMG = REPO_ROOT / "docs" / "img"


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def differing_share(a: Path, b: Path, level: int = 32) -> float:
    """The share of pixels that differ by more than ``level`` in some channel (1.0 when the
    sizes differ): anti-aliasing and font hinting may move a few, a new figure moves many."""
    x, y = _pixels(a), _pixels(b)
    if x.shape != y.shape:
        return 1.0
    return float((np.abs(x - y).max(axis=2) > level).mean())


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("figures")
    write_guide_figures(out, SHIPPED_MODEL, DATA_DIR, DOCS_IMG / EXAMPLE_PHOTO)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_committed_figure_matches_the_generator(regenerated: Path, name: str) -> None:
    committed = DOCS_IMG / f"{name}.png"
    assert committed.is_file(), f"{committed} is missing: run `make docs`"
    share = differing_share(committed, regenerated / f"{name}.png")
    assert share < 0.005, f"{committed} is out of date ({share:.1%} of pixels differ): make docs"


def test_the_comparison_sees_a_different_figure(tmp_path: Path) -> None:
    """The tolerance passes a copy and fails another figure (or a shifted one)."""
    a, b = DOCS_IMG / "filters.png", DOCS_IMG / "confusion.png"
    assert differing_share(a, a) == 0.0
    assert differing_share(a, b) == 1.0  # other sizes
    shifted = tmp_path / "shifted.png"
    pixels = _pixels(a).astype(np.uint8)
    Image.fromarray(np.roll(pixels, 3, axis=1)).save(shifted)
    assert differing_share(a, shifted) > 0.005


@pytest.mark.slow
def test_the_example_photo_is_made_by_its_tool(tmp_path: Path) -> None:
    out = tmp_path / "photo.jpg"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "make_example_photo.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert differing_share(DOCS_IMG / EXAMPLE_PHOTO, out, level=8) == 0.0
