"""Generate the notebooks in notebooks/ from the package sources (`make notebooks`).

People upload a single notebook to Kaggle, without the repository, so each notebook carries
the modules of ``mnist_cnn`` it needs: one ``%%package_file mnist_cnn/<module>.py`` cell per
module, copied verbatim from ``src/mnist_cnn/``. When the notebook runs where ``mnist_cnn``
is not installed, those cells recreate the package in the working directory and the notebook
imports it; where it is installed (a clone with ``pip install -e .``), the installed package
is used and nothing is written. Everything the notebooks do is a call into the package: the
cells here only orchestrate and display.

The notebooks are written without outputs and with stable cell ids, so that regenerating
them from unchanged sources gives identical files. ``--check`` compares the committed
notebooks with what the sources generate and exits with status 1 when they differ (a test
runs it): edit the package or this file, never the notebooks, then run ``make notebooks``.

    python tools/build_notebooks.py            # write notebooks/*.ipynb
    python tools/build_notebooks.py --check    # exit 1 when they are out of date
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mnist_cnn import atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "src" / "mnist_cnn"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PACKAGE = "mnist_cnn"

GENERATED_NOTE = (
    "*Generated from the `mnist_cnn` package by `make notebooks` (`tools/build_notebooks.py`): "
    "edit the package or the generator, not this notebook.*"
)


# --------------------------------------------------------------------------- the package


def _imported_modules(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at any level (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from mnist_cnn import data` names a module; `from mnist_cnn.x import y` too.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if (
                parts[0] == PACKAGE
                and len(parts) >= 2
                and (PACKAGE_DIR / f"{parts[1]}.py").is_file()
            ):
                found.add(parts[1])
    return found


def module_closure(entry: Iterable[str]) -> list[str]:
    """``entry`` and every package module they import, transitively: file names, sorted,
    ``__init__.py`` first."""
    todo, seen = list(entry), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_imported_modules(PACKAGE_DIR / f"{module}.py") - seen)
    return ["__init__.py"] + [f"{m}.py" for m in sorted(seen)]


def package_cells(entry: Iterable[str]) -> list[NotebookNode]:
    """The cells that carry (and, when needed, write) the package's modules."""
    modules = module_closure(entry)
    cells = [
        new_markdown_cell(
            "## The `mnist_cnn` package\n"
            "The next cells carry the package's modules, so that this notebook runs on its own "
            '(uploaded alone to Kaggle, for instance). With `PACKAGE = "auto"` they are '
            "written to `./mnist_cnn/` only when `mnist_cnn` is not installed; in a clone of "
            "the repository with `pip install -e .` the installed package is used.\n\n"
            f"Modules: {', '.join(f'`{m}`' for m in modules)}."
        ),
        new_code_cell(BOOTSTRAP),
    ]
    for name in modules:
        source = (PACKAGE_DIR / name).read_text()
        cells.append(new_code_cell(f"%%package_file {PACKAGE}/{name}\n{source}"))
    return cells


BOOTSTRAP = '''\
import importlib
import importlib.util
import sys
from pathlib import Path

from IPython.core.magic import register_cell_magic

PACKAGE_DIR = Path.cwd() / "mnist_cnn"
MARKER = PACKAGE_DIR / ".written-by-notebook"  # marks a copy this notebook may overwrite

spec = importlib.util.find_spec("mnist_cnn")
installed = spec is not None and spec.origin is not None and (
    Path(spec.origin).resolve().parent != PACKAGE_DIR.resolve()  # not an earlier copy of ours
)
if PACKAGE not in ("auto", "embedded", "installed"):
    raise ValueError(f"PACKAGE must be 'auto', 'embedded' or 'installed', not {PACKAGE!r}")
if PACKAGE == "installed" and not installed:
    raise ModuleNotFoundError("mnist_cnn is not installed: pip install -e . in the repository")
WRITE_PACKAGE = PACKAGE == "embedded" or (PACKAGE == "auto" and not installed)
if WRITE_PACKAGE:
    # Never overwrite a directory this notebook did not create (the repository's own src/).
    if PACKAGE_DIR.exists() and not MARKER.exists() and any(PACKAGE_DIR.iterdir()):
        raise FileExistsError(
            f"{PACKAGE_DIR} exists and was not written by this notebook; run the notebook in "
            f"another directory, or set PACKAGE = 'installed'"
        )
    PACKAGE_DIR.mkdir(exist_ok=True)
    MARKER.touch()


@register_cell_magic
def package_file(line: str, cell: str) -> None:
    """%%package_file mnist_cnn/x.py: write this cell's source there when WRITE_PACKAGE."""
    if WRITE_PACKAGE:
        path = PACKAGE_DIR.parent / line.strip()
        path.write_text(cell if cell.endswith("\\n") else cell + "\\n")


print("using", "this notebook's copy of mnist_cnn" if WRITE_PACKAGE else "the installed mnist_cnn")
'''

IMPORT_PACKAGE = """\
if WRITE_PACKAGE:
    # The copy just written comes first, and no mnist_cnn imported earlier stands in its way.
    if str(PACKAGE_DIR.parent) not in sys.path:
        sys.path.insert(0, str(PACKAGE_DIR.parent))
    for name in [n for n in sys.modules if n == "mnist_cnn" or n.startswith("mnist_cnn.")]:
        del sys.modules[name]
    importlib.invalidate_caches()

import mnist_cnn
{imports}

print(f"mnist_cnn {{mnist_cnn.__version__}} from {{Path(mnist_cnn.__file__).parent}}")
"""


# --------------------------------------------------------------------------- notebooks


def _notebook(cells: Sequence[NotebookNode], slug: str) -> NotebookNode:
    nb = new_notebook(cells=list(cells))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{slug}-{i:02d}"  # stable ids: regenerating gives the same file
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        # Kaggle reads these when the notebook is imported: a GPU and internet by default.
        "kaggle": {
            "accelerator": "gpu",
            "isGpuEnabled": True,
            "isInternetEnabled": True,
            "language": "python",
            "sourceType": "notebook",
        },
    }
    return nb


def _text(source: str) -> str:
    return textwrap.dedent(source).strip("\n")


def _code(source: str) -> NotebookNode:
    return new_code_cell(_text(source))


def _markdown(source: str) -> NotebookNode:
    return new_markdown_cell(_text(source))


def _parameters(source: str) -> NotebookNode:
    # The "parameters" tag is papermill's convention; the tests replace this cell's source.
    return new_code_cell(_text(source), metadata={"tags": ["parameters"]})


TRAINING_INTRO = f"""
    # Train the MNIST CNN, on a free Kaggle GPU or anywhere
    {GENERATED_NOTE}

    This notebook trains the project's CNN on MNIST, shows the loss and accuracy curves, the
    confusion matrix and the worst mistakes, and saves `models/mnist_cnn_model.pth` (a plain
    `state_dict`) with its metadata `models/mnist_cnn_model.json`.

    **On Kaggle**
    1. *Create → New Notebook*, then *File → Import Notebook* and upload this file.
    2. In the right-hand panel (*Session options*): *Accelerator* → a GPU (T4 ×2, T4 or P100;
       with two GPUs one model trains on both, data-parallel, see `NPROC`). For the
       data, either switch *Internet* on (MNIST is downloaded, 11 MB), or *Add Input* a dataset
       holding the four MNIST IDX files (any layout, gzipped or not, such as
       `hojjatk/mnist-dataset`).
    3. *Run All*.
    4. Download `mnist_cnn_model.pth` and `mnist_cnn_model.json` from `/kaggle/working/models/`
       in the *Output* section, as the last cell explains, into `models/` of your clone.

    **Locally**: `pip install -e ".[notebooks]"` in the repository and open this notebook from
    the repository's root or from `notebooks/` (or simply run `mnist-cnn train`).
"""

TRAINING_PARAMETERS = """
    # Parameters: edit them here (the tests replace this cell).
    PRESET = "default"  # "default", "best" (most accurate), "seed" (the seed's), "fast" (quickest)
    EPOCHS = None  # None: the preset's (default 12, best 30, seed 10, fast 2)
    MEMBERS = 1  # > 1: train this many networks (seeds SEED, SEED+1, ...) and save their ensemble
    NPROC = "auto"  # data-parallel processes for one model; "auto": one per GPU (T4 x2: 2), else 1
    TRAIN_SUBSET = 0  # 0: all 55,000 training images; 3000 makes a quick CPU try
    DEVICE = "auto"  # "auto": a CUDA (or Apple) GPU when there is one, else the CPU
    SEED = 0  # initialisation, split, shuffling, augmentation, dropout
    RESUME = False  # True: continue an interrupted run from its last epoch (same parameters)
    OUTPUT_DIR = "models"  # weights and metadata (on Kaggle: /kaggle/working/models)
    REPORT_DIR = "reports"  # curves, confusion matrix, mistakes, evaluation.json
    INPUT_DIR = "/kaggle/input"  # attached Kaggle datasets: searched for MNIST at any depth
    DOWNLOAD_DIR = "data/mnist"  # MNIST is downloaded here when found nowhere (None: never)
    PACKAGE = "auto"  # "auto": the installed mnist_cnn, else this notebook's copy; "embedded": copy
"""

TRAINING_CONFIG = """
    overrides = {
        "data_dir": str(DATA_DIR),
        "model_path": str(Path(OUTPUT_DIR) / "mnist_cnn_model.pth"),
        "report_dir": REPORT_DIR,
        "device": DEVICE,
        "train_subset": TRAIN_SUBSET,
        "seed": SEED,
    }
    if EPOCHS is not None:
        overrides["epochs"] = EPOCHS
    config = train.config_for(PRESET, **overrides)
    train.configure_process(config.threads)  # this notebook is the command: threads, allocator
    device = train.resolve_device(config.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    nproc = (gpus if gpus > 1 else 1) if NPROC == "auto" else int(NPROC)
    if nproc > 1 and MEMBERS > 1:
        raise ValueError("NPROC > 1 trains one model on several GPUs: set MEMBERS = 1 for it")
    gpu = f" ({gpus} x {torch.cuda.get_device_name(device)})" if gpus else ""
    what = f"an ensemble of {MEMBERS} " if MEMBERS > 1 else ""
    processes = f" in {nproc} data-parallel processes" if nproc > 1 else ""
    print(
        f"{what}{config.architecture}, {PRESET} preset, {config.epochs} epochs on "
        f"{device.type}{gpu}{processes}"
    )
    if device.type == "cpu":
        print("No GPU in use: on Kaggle, choose one under Session options -> Accelerator.")
"""

TRAINING_RUN = """
    if nproc > 1:
        # DistributedDataParallel needs one process per GPU: the package's command starts
        # them through torchrun (mnist-cnn train --nproc N), rank 0 writes the files.
        import subprocess
        import sys

        flags = [f"--{key.replace('_', '-')}={value}" for key, value in overrides.items()]
        command = [sys.executable, "-m", "mnist_cnn", "train", f"--preset={PRESET}"]
        command += [*flags, f"--nproc={nproc}", "--no-progress", *(["--resume"] * RESUME)]
        # Its output is read line by line: a child's own stdout would not reach the notebook.
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as run:
            for line in run.stdout:
                print(line, end="")
        if run.returncode:
            raise RuntimeError(f"training failed (exit status {run.returncode}): see above")
        outputs = {
            "model": config.model_file,
            "metadata": config.model_file.with_suffix(".json"),
            "curves": config.reports / "training_curves.png",
        }
    elif MEMBERS > 1:
        # The members train in turn on a GPU, side by side on a CPU with cores to spare.
        result = ensemble.train_ensemble(config, MEMBERS, log=print)
        first = ensemble.member_configs(config, MEMBERS)[0]
        outputs = {**result.outputs, "curves": first.reports / "training_curves.png"}
    else:
        result = train.train(config, resume=RESUME, progress=True, log=print)
        if result.interrupted:
            # train() stopped cleanly after saving the last finished epoch; stop "Run All" too.
            raise KeyboardInterrupt("set RESUME = True and run again to continue from there")
        outputs = result.outputs
"""

TRAINING_EVALUATE = """
    loaded = checkpoint.load_model(outputs["model"], device=device)
    test_split = data.load_split("test", DATA_DIR)
    evaluation = evaluate.evaluate(loaded.model, test_split, loaded.mean, loaded.std)
    report = evaluate.build_report(evaluation, loaded.path, data.dataset_sha256())
    report_files = evaluate.write_report(report, test_split.images, evaluation, REPORT_DIR)
    print(
        f"test accuracy {100 * report['accuracy']:.2f}% "
        f"({report['errors']} errors in {report['examples']:,} images)"
    )
"""

TRAINING_EXPLAIN = """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    predictor = Predictor.from_checkpoint(outputs["model"])
    explained = explain.explain(predictor, test_split.images[0].numpy())
    figure = explain.figure(explained)
    FigureCanvasAgg(figure)
    display(figure)
"""

TRAINING_CPU_CHECK = """
    weights = Path(outputs["model"])
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if loaded.info.members > 1:
        # An ensemble's state_dict holds its members' under members.<i>.: an Ensemble of the
        # members' architecture loads it whole.
        architecture = loaded.info.member_architecture
        cpu_model = model.Ensemble(
            [model.build_model(architecture) for _ in range(loaded.info.members)]
        )
    else:
        cpu_model = model.build_model(loaded.architecture)  # MNISTCNN() with the default preset
    cpu_model.load_state_dict(state)
    sample = data.normalise(test_split.images[:256], loaded.mean, loaded.std)
    torch.testing.assert_close(
        model.logits_of(cpu_model, sample),
        model.logits_of(loaded.model, sample),
        rtol=1e-4,
        atol=1e-4,
    )
    print(f"{weights} loads on the CPU with load_state_dict and gives the same outputs")
"""

TRAINING_DOWNLOAD = """
    import os

    from IPython.display import FileLink

    files = [Path(outputs["model"]), Path(outputs["metadata"])]
    for path in files:
        size, digest = path.stat().st_size / 1e6, checkpoint.file_sha256(path)
        print(f"{path.resolve()}  {size:.2f} MB  sha256 {digest[:16]}...")
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        print(
            "\\nOn Kaggle the files are in /kaggle/working/models/. In the right-hand panel, "
            "open Output -> /kaggle/working -> models and download each file (its ... menu -> "
            "Download). After Save Version (Save & Run All) they are also on the version's "
            "Output tab, with a Download button."
        )
    else:
        for path in files:
            display(FileLink(os.path.relpath(path)))
"""


TRAINING_INSTALL = """
    import importlib
    import subprocess
    import sys

    try:
        # Training draws its non-digits (Outlier Exposure) with OpenCV, the image front end's
        # library; Kaggle's images ship it. Elsewhere it is one pip install (Internet on).
        import cv2  # noqa: F401
    except ImportError:
        pip = [sys.executable, "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "opencv-python-headless"], check=True)
        importlib.invalidate_caches()
"""


# What the training notebook imports, and the command (__main__, cli) that it runs through
# torchrun to start data-parallel processes (NPROC > 1).
TRAINING_MODULES = [
    *("train", "ensemble", "plots", "evaluate", "checkpoint", "data", "model", "explain"),
    *("distributed", "cli", "__main__"),
]


def training_notebook() -> NotebookNode:
    """notebooks/mnist_training.ipynb: train on a GPU when there is one, save, download."""
    imports = """
        from mnist_cnn import checkpoint, data, ensemble, evaluate, explain, model, train
        from mnist_cnn.predict import Predictor

        import torch
        from IPython.display import Image, display
    """
    cells = [
        _markdown(TRAINING_INTRO),
        _parameters(TRAINING_PARAMETERS),
        _code(TRAINING_INSTALL),
        *package_cells(TRAINING_MODULES),
        _code(IMPORT_PACKAGE.format(imports=_text(imports))),
        _markdown("""
            ## The data
            `data.find_data_dir` looks in the repository's `data/mnist/`, then in every dataset
            attached under `INPUT_DIR` (any nesting, `.gz` or not), and downloads MNIST into
            `DOWNLOAD_DIR` when it is found nowhere. Every file is checked against MNIST's
            SHA-256, so a look-alike (Fashion-MNIST uses the same file names) is passed over.
        """),
        _code("""
            DATA_DIR = data.find_data_dir(search_roots=[INPUT_DIR], download_to=DOWNLOAD_DIR)
            print(f"reading MNIST from {DATA_DIR}")
        """),
        _markdown("## Training"),
        _code(TRAINING_CONFIG),
        _code(TRAINING_RUN),
        _code('display(Image(filename=outputs["curves"]))  # plots.curves_figure'),
        _markdown("""
            ## Evaluation of the saved model on the test set
            The model is read back from the file just written, with the one loader that the
            command line, the web app and the Gradio app use (`checkpoint.load_model`). The
            report and its figures (`mnist_cnn.plots`) go to `REPORT_DIR`.
        """),
        _code(TRAINING_EVALUATE),
        _code('display(Image(filename=report_files["confusion_matrix"]))'),
        _code('display(Image(filename=report_files["misclassified"]))  # the most confident'),
        _markdown("""
            ## Look inside
            How does the network read a digit? `explain.explain` follows one test image
            through the preprocessing and the network: each preprocessing stage, the 28x28
            input, an occlusion saliency map (red: the strokes the answer rests on; blue:
            strokes that speak against it) and the feature maps of the first two convolutions.
            `mnist-cnn explain IMAGE` draws the same figure for any image, and the
            repository's beginner's guide, `docs/guide.md`, explains what each part means.
        """),
        _code(TRAINING_EXPLAIN),
        _markdown("""
            ## The file loads on a CPU-only machine
            Whatever device trained it, the `.pth` is a plain `state_dict` of CPU tensors, so
            the seed's one-liner, `MNISTCNN().load_state_dict(torch.load(path,
            map_location="cpu"))`, loads it anywhere. This cell does exactly that and compares
            the outputs with those of the model above.
        """),
        _code(TRAINING_CPU_CHECK),
        _markdown("""
            ## Download the model
            Put both files in the `models/` directory of your clone of the repository; the
            command line, the web app and the Gradio interface then use them:
            ```
            mnist-cnn evaluate --model models/mnist_cnn_model.pth
            mnist-cnn gradio
            ```
        """),
        _code(TRAINING_DOWNLOAD),
    ]
    return _notebook(cells, "training")


WEB_APP_INTRO = f"""
    # Draw a digit: the MNIST CNN in a Gradio interface
    {GENERATED_NOTE}

    Loads a trained model through the package's Predictor (the same loader and preprocessing
    as the command line and the web app), offers `predict(image)` for direct calls, and
    launches an interface with a sketchpad and an upload box that shows the top probabilities
    and the 28×28 image the model sees.

    **On Kaggle**: import this notebook (*File → Import Notebook*), switch *Internet* on (Gradio
    is installed, and a public `*.gradio.live` link is opened because Kaggle's localhost is not
    reachable from your browser), and *Add Input* either your training notebook's output or a
    dataset in which you uploaded `mnist_cnn_model.pth` and `mnist_cnn_model.json`. With no
    model anywhere, a quick one is trained first. Then *Run All* and open the link.

    **Locally**: `pip install -e ".[gradio,notebooks]"` in the repository; or, without a
    notebook, `mnist-cnn gradio` (add `--share` for a public link).
"""

WEB_APP_PARAMETERS = """
    # Parameters: edit them here (the tests replace this cell).
    MODEL_PATH = None  # None: models/ or ../models/, then any mnist_cnn_model.pth in /kaggle/input
    TRAIN_IF_MISSING = True  # no model found: train a quick one (the fast preset)
    DOWNLOAD_DIR = "data/mnist"  # where MNIST goes if that training has to download it
    LAUNCH = True  # start the Gradio interface
    SHARE = None  # None: a public link on Kaggle and Colab only; True or False to force it
    SERVER_NAME = "127.0.0.1"  # "0.0.0.0" to serve other machines on the network
    SERVER_PORT = None  # None: the first free port from 7860
    PACKAGE = "auto"  # "auto": the installed mnist_cnn, else this notebook's copy; "embedded": copy
"""

WEB_APP_INSTALL = """
    import importlib
    import importlib.metadata
    import subprocess
    import sys


    def gradio_major() -> int:
        try:
            return int(importlib.metadata.version("gradio").split(".")[0])
        except importlib.metadata.PackageNotFoundError:
            return 0


    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    if gradio_major() != 6:
        # The interface is written for Gradio 6. Kaggle's image may have none, or another
        # version; installing needs Internet on.
        subprocess.run([*pip, "gradio>=6,<7", "gradio_client>=2"], check=True)
        importlib.invalidate_caches()
    try:
        import cv2  # noqa: F401  the image front end (Kaggle's images ship OpenCV)
    except ImportError:
        subprocess.run([*pip, "opencv-python-headless"], check=True)
        importlib.invalidate_caches()
"""

WEB_APP_MODEL = """
    try:
        model_path = gradio_app.find_model(MODEL_PATH)
    except checkpoint.CheckpointError as exc:
        if MODEL_PATH is not None or not TRAIN_IF_MISSING:
            raise
        print(f"{exc}\\nTraining a quick model instead (the fast preset).")
        config = train.config_for(
            "fast",
            data_dir=str(data.find_data_dir(download_to=DOWNLOAD_DIR)),
            model_path="models/mnist_cnn_model.pth",
        )
        model_path = train.train(config, progress=True, log=print).outputs["model"]

    predictor = Predictor.from_checkpoint(model_path)
    accuracy = predictor.info.test_accuracy
    print(
        f"{predictor.info.architecture} from {model_path}"
        + (f", {100 * accuracy:.2f}% on the MNIST test set" if accuracy else "")
    )
"""

WEB_APP_PREDICT = """
    from IPython.display import Markdown, display
    from PIL import Image, ImageDraw


    def predict(image):
        \"\"\"(probabilities by digit, the 28x28 uint8 model input, a message) for one image.\"\"\"
        return gradio_app.classify(predictor, image)


    # A 7 drawn the way people draw on the canvas: black strokes on white.
    seven = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(seven).line([(70, 60), (210, 60), (120, 230)], fill=0, width=18)
    probabilities, model_input, message = predict(seven)
    display(Markdown(message))
    display(Image.fromarray(model_input).resize((112, 112), Image.NEAREST))
    print(predict(Image.new("L", (280, 280), 255))[2])  # an empty canvas
"""

WEB_APP_LAUNCH = """
    demo = gradio_app.build_interface(predictor)
    if LAUNCH:
        url = gradio_app.launch(demo, host=SERVER_NAME, port=SERVER_PORT, share=SHARE, block=False)
        print(f"running on {url}" + (f" and {demo.share_url}" if demo.share_url else ""))
"""


def web_app_notebook() -> NotebookNode:
    """notebooks/kaggle_web_app.ipynb: the Gradio interface on a trained model."""
    imports = """
        from mnist_cnn import checkpoint, data, gradio_app, train
        from mnist_cnn.predict import Predictor
    """
    cells = [
        _markdown(WEB_APP_INTRO),
        _parameters(WEB_APP_PARAMETERS),
        _code(WEB_APP_INSTALL),
        *package_cells(["gradio_app", "predict", "train", "data"]),
        _code(IMPORT_PACKAGE.format(imports=_text(imports))),
        _markdown("""
            ## The model
            `gradio_app.find_model` looks in `models/` and `../models/`, then for
            `mnist_cnn_model.pth` anywhere under `/kaggle/input`.
        """),
        _code(WEB_APP_MODEL),
        _markdown("""
            ## Predict directly
            `predict(image)` is the function behind the interface. Give it a file path, the
            file's bytes, a PIL image or a NumPy array; it returns the ten probabilities, the
            28×28 model input and a message (which says why when there is no digit).
        """),
        _code(WEB_APP_PREDICT),
        _markdown("## The interface"),
        _code(WEB_APP_LAUNCH),
        _markdown("The interface runs until the notebook's kernel stops, or `demo.close()`."),
    ]
    return _notebook(cells, "web-app")


NOTEBOOKS: dict[str, Callable[[], NotebookNode]] = {
    "mnist_training.ipynb": training_notebook,
    "kaggle_web_app.ipynb": web_app_notebook,
}


def render(nb: NotebookNode) -> str:
    """The notebook as the text committed to the repository."""
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the notebooks, or with ``--check`` report whether they are up to date."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a notebook differs from what the sources generate",
    )
    parser.add_argument("--dir", type=Path, default=NOTEBOOKS_DIR, help="the notebooks' directory")
    args = parser.parse_args(argv)
    stale = []
    for filename, build in NOTEBOOKS.items():
        path = args.dir / filename
        text = render(build())
        current = path.read_text() if path.is_file() else None
        if current == text:
            print(f"{path}: up to date")
            continue
        if args.check:
            stale.append(path)
            diff = difflib.unified_diff(
                (current or "").splitlines(), text.splitlines(), str(path), "generated", lineterm=""
            )
            print(f"{path}: out of date", *list(diff)[:20], sep="\n", file=sys.stderr)
            continue
        atomic.write_bytes(path, text.encode())
        print(f"{path}: written")
    if stale:
        print("Regenerate the notebooks with `make notebooks`.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
