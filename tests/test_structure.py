"""The package's shape: one straight line of imports with no back-edges.

    data -> model -> checkpoint -> train -> evaluate, ensemble
    decode -> locate -> preprocess, segment -> predict -> explain -> figures, gradio_app, web -> cli

A module may import only modules of a lower layer (read from the source, function-level
imports included, since those are how heavy dependencies are deferred). The command line
is the top: nothing imports it; only the web app and the command that serves it import
the web app; library functions leave process-wide settings to the commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import pytest
import torch

import mnist_cnn

PACKAGE = Path(mnist_cnn.__file__).parent

# Lower layers first; a module imports only from layers below its own.
LAYERS = [
    {"atomic", "paths", "extras", "options", "decode", "unsure", "distributed"},
    {"data", "locate", "plots"},
    {"model", "preprocess", "outliers", "segment"},
    {"checkpoint"},
    {"train", "export"},
    {"evaluate", "predict", "ensemble"},
    {"explain"},
    {"figures", "gradio_app", "web.errors"},
    {"web"},  # the app factory; it registers the blueprints below (as flaskr's does)
    {"web.api", "web.pages"},
    {"web.server"},
    {"cli"},
    {"__main__"},
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _imports(path: Path) -> set[str]:
    """The mnist_cnn modules ``path`` imports, as names relative to the package."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mnist_cnn":  # from mnist_cnn import data, __version__
                found |= {a.name for a in node.names if a.name != "__version__"}
            elif node.module.startswith("mnist_cnn."):
                found.add(node.module.removeprefix("mnist_cnn."))
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("mnist_cnn.") for a in node.names if a.name.startswith("mnist_")
            }
    return found


GRAPH = {
    _module_name(path): _imports(path)
    for path in sorted(PACKAGE.rglob("*.py"))
    if _module_name(path) != "__init__"
}


def test_every_module_has_a_layer() -> None:
    assert set(GRAPH) == set(RANK), "place new modules in LAYERS"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_line(module: str) -> None:
    upward = sorted(dep for dep in GRAPH[module] if RANK[dep] >= RANK[module] and dep != module)
    assert not upward, f"{module} imports {upward}, which are not below it"


def test_nothing_imports_the_command_line() -> None:
    assert [m for m, deps in GRAPH.items() if "cli" in deps] == ["__main__"]


def test_only_the_web_app_and_its_command_import_the_web_app() -> None:
    importers = {m for m, deps in GRAPH.items() if any(d.split(".")[0] == "web" for d in deps)}
    assert importers <= {"web", "web.api", "web.pages", "web.errors", "web.server", "cli"}


def test_the_graph_is_read_from_the_source() -> None:
    # Guards the reader above: a known edge of each kind is seen.
    assert "data" in GRAPH["model"]  # from mnist_cnn.data import ...
    assert "plots" in GRAPH["train"]  # from mnist_cnn import plots (inside a function)
    assert "web.server" in GRAPH["cli"]


def test_loading_a_model_leaves_process_wide_settings_alone(random_weights: Path) -> None:
    """Thread pools are the command's to set (``mnist-cnn predict --threads``, the server):
    a library that loads a model for a notebook or a server must not change them."""
    from mnist_cnn.predict import Predictor

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        predictor = Predictor.from_checkpoint(random_weights, threads=1)
        predictor.predict_inputs(torch.zeros(2, 28, 28, dtype=torch.uint8).numpy())
        assert (torch.get_num_threads(), cv2.getNumThreads()) == before
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
