"""The notebooks: generated from the package, committed clean, and they run on their own.

Both notebooks are executed with nbclient in a fresh working directory with
``PACKAGE = "embedded"``: the package is recreated from the notebook's own cells, as on
Kaggle when the notebook is uploaded alone, and nothing of the repository is used except
what the test hands over (a Kaggle-like input directory with MNIST, the shipped model).
Then the test checks what the notebooks produced, with the package's own loader.

Also here: ``data.find_data_dir`` (the notebooks' data search), and the GPU -> CPU path as
far as a CPU machine can take it: a file whose tensors are tagged ``cuda:0``, exactly what
``torch.save`` writes on a Kaggle GPU.
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.serialization
from nbclient import NotebookClient
from PIL import Image

from mnist_cnn import data
from mnist_cnn.checkpoint import file_sha256, load_model, save_model
from mnist_cnn.evaluate import evaluate
from mnist_cnn.model import MNIST_MEAN, MNIST_STD, MNISTCNN, logits_of
from mnist_cnn.paths import SHIPPED_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO_ROOT / "data" / "mnist"
NOTEBOOKS = REPO_ROOT / "notebooks"
TRAINING = NOTEBOOKS / "mnist_training.ipynb"
WEB_APP = NOTEBOOKS / "kaggle_web_app.ipynb"
BUILDER = REPO_ROOT / "tools" / "build_notebooks.py"
PACKAGE_SOURCES = REPO_ROOT / "src" / "mnist_cnn"

# One epoch on 3,000 images (24 steps) reaches about 86% on the test set; a run that learned
# nothing scores about 10%.
TRAINING_FLOOR = 0.75
CELL_TIMEOUT = 600  # seconds; a shared 2-core CI machine can be slow, a hang still ends


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def this_python_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run notebooks with this interpreter, whatever kernels the machine has registered.

    JUPYTER_PATH comes first in Jupyter's search path, so a user's own "python3" kernel
    (another Python, without torch) cannot stand in for this one.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3" / "kernel.json"
    spec.parent.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(root))
    mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    yield
    mp.undo()


def _with_parameters(path: Path, overrides: str) -> nbformat.NotebookNode:
    """The notebook with ``overrides`` appended to its cell tagged "parameters"."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    cells[0].source += "\n# test overrides\n" + overrides.strip() + "\n"
    return nb


def _client(nb: nbformat.NotebookNode, cwd: Path) -> NotebookClient:
    return NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )


def _text_outputs(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"])
    return "\n".join(parts)


def _png_outputs(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


def _assert_embedded_copy(cwd: Path, nb: nbformat.NotebookNode) -> None:
    """The notebook ran on the package it carries, written byte for byte from its cells.

    (Whether those cells match src/mnist_cnn/ is the --check test's job.)
    """
    carried = {}
    for cell in nb.cells:
        first, _, body = cell.source.partition("\n")
        if first.startswith("%%package_file mnist_cnn/"):
            carried[first.removeprefix("%%package_file mnist_cnn/")] = body
    written = {p.name: p.read_text() for p in (cwd / "mnist_cnn").glob("*.py")}
    assert "__init__.py" in carried and len(carried) >= 5
    assert written == carried
    assert f"from {cwd.resolve() / 'mnist_cnn'}" in _text_outputs(nb)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kaggle_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A /kaggle/input look-alike: MNIST as the popular Kaggle dataset ships it
    (uncompressed, "train-images.idx3-ubyte" names, nested two levels deep), and before it,
    in sort order, a look-alike dataset with the same file names and other content."""
    root = tmp_path_factory.mktemp("kaggle_input")
    mnist = root / "hojjatk" / "mnist-dataset"
    mnist.mkdir(parents=True)
    for name in data.FILES:
        raw = gzip.decompress((BUNDLED_DATA / f"{name}.gz").read_bytes())
        (mnist / name.replace("-idx", ".idx")).write_bytes(raw)
    decoy = root / "a-fashion-mnist"
    decoy.mkdir()
    for name in data.FILES:  # a valid IDX header, but not MNIST's bytes
        ndim = 3 if "images" in name else 1
        header = (0x800 + ndim).to_bytes(4, "big") + b"".join(
            n.to_bytes(4, "big") for n in ((4, 28, 28) if ndim == 3 else (4,))
        )
        body = bytes(4 * 28 * 28 if ndim == 3 else 4)
        (decoy / f"{name}.gz").write_bytes(gzip.compress(header + body))
    return root


# --------------------------------------------------------------------------- generation


def test_committed_notebooks_have_no_outputs() -> None:
    for path in (TRAINING, WEB_APP):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, path
        for cell in code:
            assert cell.outputs == [], f"{path.name}: cell {cell.id} has outputs"
            assert cell.execution_count is None, f"{path.name}: cell {cell.id} was executed"
        assert "widgets" not in nb.metadata


def test_committed_notebooks_are_up_to_date_with_the_sources() -> None:
    run = subprocess.run(
        [sys.executable, str(BUILDER), "--check"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, f"run `make notebooks`:\n{run.stdout}{run.stderr}"


def test_check_mode_catches_a_stale_notebook(tmp_path: Path) -> None:
    for path in (TRAINING, WEB_APP):
        shutil.copy(path, tmp_path / path.name)
    stale = tmp_path / TRAINING.name
    nb = nbformat.read(stale, as_version=4)
    module_cell = next(c for c in nb.cells if c.source.startswith("%%package_file mnist_cnn/data"))
    module_cell.source += "\n# an edit made in the notebook instead of the package\n"
    nbformat.write(nb, stale)

    check = [sys.executable, str(BUILDER), "--check", "--dir", str(tmp_path)]
    run = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert f"{stale}: out of date" in run.stderr and "make notebooks" in run.stderr
    assert "an edit made in the notebook" in run.stderr  # the diff shows what differs

    build = [sys.executable, str(BUILDER), "--dir", str(tmp_path)]
    assert subprocess.run(build, capture_output=True, timeout=120).returncode == 0
    assert stale.read_bytes() == TRAINING.read_bytes()
    assert subprocess.run(check, capture_output=True, timeout=120).returncode == 0


def test_each_notebook_carries_every_module_it_imports() -> None:
    sys.path.insert(0, str(BUILDER.parent))
    try:
        import build_notebooks
    finally:
        sys.path.remove(str(BUILDER.parent))
    closure = build_notebooks.module_closure(["gradio_app"])
    # gradio_app -> predict -> preprocess, evaluate, checkpoint -> model, atomic ...
    assert {"gradio_app.py", "predict.py", "preprocess.py", "checkpoint.py", "model.py"} <= set(
        closure
    )
    for path in (TRAINING, WEB_APP):
        nb = nbformat.read(path, as_version=4)
        carried = {
            c.source.split("\n", 1)[0].removeprefix("%%package_file mnist_cnn/")
            for c in nb.cells
            if c.source.startswith("%%package_file ")
        }
        for name in carried:
            imports = build_notebooks._imported_modules(PACKAGE_SOURCES / name)
            assert {f"{m}.py" for m in imports} <= carried, f"{path.name}: {name} needs more"


# --------------------------------------------------------------------------- execution


@pytest.mark.slow
def test_training_notebook_runs_alone_and_saves_a_model_that_works(
    tmp_path: Path, kaggle_input: Path, test_split: data.Split
) -> None:
    nb = _with_parameters(
        TRAINING,
        f"""
        EPOCHS = 1
        TRAIN_SUBSET = 3000
        INPUT_DIR = {str(kaggle_input)!r}
        DOWNLOAD_DIR = None  # MNIST must be found in INPUT_DIR, not fetched
        PACKAGE = "embedded"
        """.replace("\n        ", "\n"),
    )
    _client(nb, tmp_path).execute()

    _assert_embedded_copy(tmp_path, nb)
    text = _text_outputs(nb)
    assert "MNIST found in " + str(kaggle_input / "hojjatk" / "mnist-dataset") in text

    weights = tmp_path / "models" / "mnist_cnn_model.pth"
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["training"]["epochs"] == 1 and meta["dataset"]["train_examples"] == 3000
    # The seed's one-liner, and the package's loader, on the notebook's file.
    MNISTCNN().load_state_dict(torch.load(weights, map_location="cpu"))
    loaded = load_model(weights)
    assert loaded.architecture == "MNISTCNN"
    accuracy = evaluate(loaded.model, test_split, loaded.mean, loaded.std).accuracy
    assert accuracy >= TRAINING_FLOOR
    # What the notebook reported and wrote is what the file really scores.
    assert meta["metrics"]["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert f"test accuracy {100 * accuracy:.2f}%" in text
    report = json.loads((tmp_path / "reports" / "evaluation.json").read_text())
    assert report["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    for figure in ("training_curves.png", "confusion_matrix.png", "misclassified.png"):
        assert Image.open(tmp_path / "reports" / figure).size[0] > 300
    assert _png_outputs(nb) >= 3  # curves, confusion matrix, mistakes shown inline
    assert "loads on the CPU with load_state_dict and gives the same outputs" in text


@pytest.mark.slow
def test_training_notebook_trains_one_model_in_two_processes(
    tmp_path: Path, kaggle_input: Path
) -> None:
    # What a Kaggle T4 x2 session does with NPROC = "auto", on two CPU processes (gloo):
    # the notebook starts the package's own command (its embedded copy) through torchrun.
    nb = _with_parameters(
        TRAINING,
        f"""
        PRESET = "fast"
        EPOCHS = 1
        TRAIN_SUBSET = 2000
        NPROC = 2
        INPUT_DIR = {str(kaggle_input)!r}
        DOWNLOAD_DIR = None
        PACKAGE = "embedded"
        """.replace("\n        ", "\n"),
    )
    _client(nb, tmp_path).execute()
    _assert_embedded_copy(tmp_path, nb)
    text = _text_outputs(nb)
    assert "in 2 data-parallel processes" in text
    assert "epoch  1/1" in text  # the processes' log reaches the notebook
    weights = tmp_path / "models" / "mnist_cnn_model.pth"
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["training"]["world_size"] == 2 and meta["architecture"] == "SprintCNN"
    assert load_model(weights).info.metrics["test_accuracy"] > 0.5
    assert "loads on the CPU with load_state_dict and gives the same outputs" in text


@pytest.mark.slow
def test_web_app_notebook_predicts_real_digits_and_serves_them(
    tmp_path: Path, clear_digits: list
) -> None:
    nb = _with_parameters(
        WEB_APP,
        f"""
        MODEL_PATH = {str(SHIPPED_MODEL)!r}
        TRAIN_IF_MISSING = False
        SHARE = False  # never a tunnel in tests
        PACKAGE = "embedded"
        """.replace("\n        ", "\n"),
    )
    paths = [str(p) for p, _, _ in clear_digits]
    probe = nbformat.v4.new_code_cell(
        "import json\n"
        f"results = [predict(p) for p in {paths!r}]\n"
        "print(json.dumps([[max(r[0], key=r[0].get), r[1].tolist(), r[2]] for r in results]))\n"
        "print(json.dumps(predict(b'not an image')[2]))"
    )
    client = _client(nb, tmp_path)
    with client.setup_kernel():
        # The port is picked once the kernel has bound its own random TCP ports: picked
        # before, it could be one of them, and Gradio would find it taken.
        port = _free_port()
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        params.source += f"SERVER_PORT = {port}\n"
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        nb.cells.append(probe)
        client.execute_cell(probe, len(nb.cells) - 1)
        lines = probe.outputs[0].text.strip().splitlines()
        # While the kernel lives, its Gradio server answers from outside.
        from gradio_client import Client, handle_file

        served = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            handle_file(clear_digits[0][0]), api_name="/classify_upload"
        )
    _assert_embedded_copy(tmp_path, nb)

    from mnist_cnn.predict import Predictor

    predictor = Predictor.from_checkpoint(SHIPPED_MODEL)
    results = json.loads(lines[0])
    for (path, label, _), (digit, model_input, message) in zip(clear_digits, results, strict=True):
        assert digit == str(label), f"{path.name} read as {digit}"
        assert message.startswith(f"**{label}**")
        # The notebook's function shows the image the Predictor gives the model.
        np.testing.assert_array_equal(np.array(model_input), predictor.predict(path).model_input)
    assert "cannot be used" in json.loads(lines[1])
    assert served[0]["label"] == str(clear_digits[0][1])
    assert f"running on http://127.0.0.1:{port}/" in _text_outputs(nb)


# --------------------------------------------------------------------------- finding the data


def test_find_data_dir_prefers_the_repository_copy(kaggle_input: Path) -> None:
    found = data.find_data_dir(
        candidates=[BUNDLED_DATA], search_roots=[kaggle_input], log=lambda _: None
    )
    assert found == BUNDLED_DATA


def test_find_data_dir_finds_a_kaggle_dataset_and_skips_look_alikes(
    kaggle_input: Path, tmp_path: Path, test_split: data.Split
) -> None:
    messages: list[str] = []
    found = data.find_data_dir(
        candidates=[tmp_path / "nothing-here"],
        search_roots=[kaggle_input],
        staging_dir=tmp_path / "staged",
        log=messages.append,
    )
    # Dotted names are not what load_split reads: they are staged under the standard names.
    assert found == tmp_path / "staged"
    for name in data.FILES:
        staged = found / name
        assert staged.is_symlink()
        assert staged.resolve().parent == (kaggle_input / "hojjatk" / "mnist-dataset").resolve()
    assert torch.equal(data.load_split("test", found).images, test_split.images)
    assert messages == [f"MNIST found in {kaggle_input / 'hojjatk' / 'mnist-dataset'}"]
    # By default the staging directory is named after the sources: stable, never shared.
    quiet = {"candidates": [], "search_roots": [kaggle_input], "log": lambda _: None}
    default = data.find_data_dir(**quiet)
    assert default.parent == Path(tempfile.gettempdir())
    assert default.name.startswith("mnist-cnn-data-") and data.find_data_dir(**quiet) == default


def test_find_data_dir_uses_a_standard_directory_in_place(tmp_path: Path) -> None:
    nested = tmp_path / "input" / "some-dataset" / "versions" / "3" / "mnist"
    nested.mkdir(parents=True)
    for name in data.FILES:
        (nested / f"{name}.gz").symlink_to(BUNDLED_DATA / f"{name}.gz")
    found = data.find_data_dir(candidates=[], search_roots=[tmp_path / "input"], log=print)
    assert found == nested


def test_find_data_dir_says_where_it_looked(kaggle_input: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-input"
    empty.mkdir()
    with pytest.raises(data.DatasetError) as info:
        data.find_data_dir(candidates=[tmp_path / "data"], search_roots=[empty], log=print)
    message = str(info.value)
    assert str(tmp_path / "data") in message and f"{empty}/**" in message
    assert "Add Input" in message and "Internet" in message

    # Only the look-alike: it is named among the files passed over.
    decoy_only = tmp_path / "decoy-input"
    shutil.copytree(kaggle_input / "a-fashion-mnist", decoy_only / "a-fashion-mnist")
    with pytest.raises(data.DatasetError, match="SHA-256"):
        data.find_data_dir(candidates=[], search_roots=[decoy_only], log=print)


def test_find_data_dir_downloads_when_found_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(data_dir: str | Path, **kwargs: object) -> list[Path]:
        # What the real one does with network: the four verified .gz files in data_dir.
        calls.append(Path(data_dir))
        Path(data_dir).mkdir(parents=True)
        for name in data.FILES:
            shutil.copy(BUNDLED_DATA / f"{name}.gz", Path(data_dir))
        return []

    monkeypatch.setattr(data, "download", fake_download)
    target = tmp_path / "downloaded"
    found = data.find_data_dir(
        candidates=[], search_roots=[tmp_path], download_to=target, log=lambda _: None
    )
    assert found == target and calls == [target]
    assert len(data.load_split("test", found)) == 10_000

    def offline(data_dir: str | Path, **kwargs: object) -> list[Path]:
        raise data.DatasetError("could not download train-images-idx3-ubyte.gz from any mirror")

    monkeypatch.setattr(data, "download", offline)
    with pytest.raises(data.DatasetError, match="any mirror(.|\n)*turn Internet on"):
        data.find_data_dir(
            candidates=[], search_roots=[], download_to=tmp_path / "x", log=lambda _: None
        )


# --------------------------------------------------------------------------- GPU -> CPU


def _save_as_on_a_gpu(state: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` as it runs on a CUDA machine: every storage is tagged "cuda:0".

    A CPU machine cannot make CUDA tensors, but the tag is all that differs in the file:
    ``torch.save`` records ``location_tag(storage)`` for each storage, and ``torch.load``
    restores each storage to that device unless ``map_location`` says otherwise.
    """
    real = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(state, path)
    finally:
        torch.serialization.location_tag = real


@pytest.fixture
def gpu_saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = MNISTCNN().eval()
    path = tmp_path / "kaggle" / "mnist_cnn_model.pth"
    path.parent.mkdir()
    _save_as_on_a_gpu(model.state_dict(), path)
    return path, model


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine cuda:0 tensors load")
def test_the_simulated_gpu_file_really_is_tagged_cuda(gpu_saved: tuple) -> None:
    path, _ = gpu_saved
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path)  # without map_location, as a careless loader would


def test_a_gpu_saved_state_dict_loads_on_the_cpu(gpu_saved: tuple, test_split: data.Split) -> None:
    path, original = gpu_saved
    state = torch.load(path, map_location="cpu")
    model = MNISTCNN()
    model.load_state_dict(state)  # the README's one-liner
    assert all(t.device.type == "cpu" for t in state.values())
    x = data.normalise(test_split.images[:64], MNIST_MEAN, MNIST_STD)
    torch.testing.assert_close(logits_of(model, x), logits_of(original, x), rtol=0, atol=0)
    # The package's loader (weights_only, map_location="cpu") takes it as it is.
    loaded = load_model(path)
    assert loaded.architecture == "MNISTCNN"
    # The very same weights (load_model returns them in channels-last layout for speed, which
    # changes the order of the convolution's sums, so logits agree to rounding, not bit for bit).
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    torch.testing.assert_close(logits_of(loaded.model, x), logits_of(original, x))


def test_a_checkpoint_trained_on_cuda_loads_on_the_cpu(
    gpu_saved: tuple, tmp_path: Path, test_split: data.Split
) -> None:
    """Weights and metadata as the training notebook leaves them on a Kaggle GPU."""
    path, original = gpu_saved
    save_model(original, path, {"architecture": "MNISTCNN", "training": {"device": "cuda"}})
    _save_as_on_a_gpu(original.state_dict(), path)  # as if the tensors had stayed on the GPU
    json_path = path.with_suffix(".json")
    meta = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**meta, "weights_sha256": file_sha256(path)}))

    loaded = load_model(path)
    assert loaded.metadata["training"]["device"] == "cuda"
    assert next(loaded.model.parameters()).device.type == "cpu"
    from mnist_cnn.predict import Predictor

    predictor = Predictor.from_checkpoint(path)
    image = test_split.images[0].numpy()
    x = data.normalise(torch.from_numpy(predictor.prepare(image))[None], MNIST_MEAN, MNIST_STD)
    expected = logits_of(original, x).softmax(1)[0]
    assert predictor.predict(image).probabilities == pytest.approx(expected.tolist(), abs=1e-6)
