"""docs/guide.md, the beginner's guide: its numbers are the model's, and its links lead somewhere.

What the guide says is read out of its markdown and compared with the thing itself:

- the layer table (shapes, parameters and the formulas beside them, multiply-adds) with a forward
  pass of ``MNISTCNN`` recorded by hooks and with ``numel()`` of each layer's parameters, and the
  receptive fields it quotes with probes of the network;
- the shipped model's scores, training history, recipe and "not sure" thresholds with its JSON
  metadata and the code's constants;
- the worst-mistakes table and the example photo's reading with the shipped model itself;
- every relative link and image with the repository, every anchor with the headings of the file
  it points into (GitHub's slugs), the figures with what ``make docs`` makes, and the commands it
  shows with the command line's parser.

A wrong number, a renamed heading, a missing figure or a renamed option fails a test.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import math
import operator
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from mnist_cnn import data, figures, locate
from mnist_cnn.checkpoint import metadata_path
from mnist_cnn.explain import PATCH, explain
from mnist_cnn.model import INPUT_SIZE, MNISTCNN, count_parameters, logits_of
from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Predictor
from mnist_cnn.train import OUTLIER_SHARE

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"
README = ROOT / "README.md"
EXAMPLE_PHOTO = ROOT / "docs" / "img" / figures.EXAMPLE_PHOTO
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The layers of MNISTCNN that are modules (and so have hooks and parameters), in order.
MODULE_LAYERS = ("conv1", "conv2", "fc1", "fc2")
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
}


# --------------------------------------------------------------------------- reading markdown


def outside_fences(markdown: str) -> Iterator[str]:
    """The lines of ``markdown`` that are not inside fenced code blocks (``` or ~~~, indented
    or not, as in list items)."""
    fence = None
    for line in markdown.splitlines():
        opener = re.match(r"\s*(`{3,}|~{3,})", line)
        if opener:
            mark = opener.group(1)[0]
            if fence is None:
                fence = mark
                continue
            if mark == fence:
                fence = None
                continue
        if fence is None:
            yield line


def plain(text: str) -> str:
    """Markdown text as read: emphasis and code marks dropped, whitespace collapsed."""
    return re.sub(r"\s+", " ", text.replace("*", "").replace("`", "")).strip()


def prose(markdown: str) -> str:
    """Everything outside code blocks, as one line of plain text."""
    return plain(" ".join(outside_fences(markdown)))


def tables(markdown: str) -> list[list[list[str]]]:
    """Every pipe table: its rows (header first, the delimiter row left out) of cells."""
    found: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*outside_fences(markdown), ""]:
        if line.lstrip().startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                rows.append(cells)
        elif rows:
            found.append(rows)
            rows = []
    return found


def table(markdown: str, *columns: str) -> list[dict[str, str]]:
    """The one table whose header has ``columns``, as a dict per row (cells as plain text)."""
    matching = [t for t in tables(markdown) if all(c in t[0] for c in columns)]
    assert len(matching) == 1, f"expected one table with the columns {columns}"
    header, *rows = matching[0]
    return [dict(zip(header, map(plain, row), strict=True)) for row in rows]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the rendered text (links' text, code's text) in lower
    case, without punctuation or symbols (letters, digits, ``_`` and ``-`` stay), each space
    a hyphen (github-slugger)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of every ATX heading outside code blocks; repeated slugs get -1, -2..."""
    seen: dict[str, int] = {}
    out = set()
    for line in outside_fences(markdown):
        match = re.match(r" {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(markdown: str) -> list[tuple[bool, str, str]]:
    """(is an image, text, target) of every inline link and image outside code."""
    found = []
    for line in outside_fences(markdown):
        line = re.sub(r"`[^`]*`", "", line)
        for bang, text, target in re.findall(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", line):
            found.append((bang == "!", text, target))
    return found


def decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def same(text: str, value: float) -> bool:
    """Whether ``text`` is ``value`` rounded to as many decimals as ``text`` shows."""
    text = text.replace(",", "").replace("−", "-")
    return text == f"{value:.{decimals(text)}f}"


def count(cell: str) -> int:
    """The count a table cell starts with: "18,496 = 64 × (32×3×3) + 64" -> 18496."""
    match = re.match(r"[\d,]+", cell)
    assert match, f"no number in {cell!r}"
    return int(match.group().replace(",", ""))


_OPERATORS = {ast.Add: operator.add, ast.Mult: operator.mul}


def arithmetic(expression: str) -> int:
    """The value of a formula of integers, +, × and brackets, as the guide writes them."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not a formula of +, × and integers: {expression!r}")

    text = expression.replace("×", "*").replace(",", "").strip()
    return value(ast.parse(text, mode="eval").body)


# --------------------------------------------------------------------------- the network


class _FunctionalSteps(TorchFunctionMode):
    """Records the outputs of the forward pass's functional steps (pooling, flattening),
    which happen outside any module and so outside the reach of module hooks."""

    def __init__(self, seen: list[tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in ("max_pool2d", "flatten"):
            self.seen.append(("pool" if name == "max_pool2d" else "flatten", out))
        return out


def trace(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(layer, output) of every step of ``model``'s forward pass on ``x``, in order: the input,
    the module layers (forward hooks) and the pooling and flattening between them, the
    poolings numbered (pool1, pool2)."""
    seen: list[tuple[str, torch.Tensor]] = [("input", x)]

    def keep(name: str) -> Callable:
        return lambda _module, _inputs, output: seen.append((name, output))

    handles = [getattr(model, n).register_forward_hook(keep(n)) for n in MODULE_LAYERS]
    try:
        with torch.no_grad(), _FunctionalSteps(seen):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    pools = 0
    named = []
    for name, output in seen:
        if name == "pool":
            pools += 1
            name = f"pool{pools}"
        named.append((name, output))
    return named


def parameters(model: nn.Module, layer: str) -> int:
    if layer not in MODULE_LAYERS:
        return 0
    return sum(p.numel() for p in getattr(model, layer).parameters())


def multiply_adds(model: nn.Module, layer: str, output: torch.Tensor) -> int:
    """Multiply-adds of one image through ``layer``: each output of a convolution takes
    in_channels x kernel of them, each output of a linear layer in_features."""
    module = getattr(model, layer, None)
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


@functools.cache
def _probed() -> dict[str, torch.Tensor]:
    """Every step's output for a blank image (first), then for 28 images that each have one
    bright row, then 28 that each have one bright column, through a network whose weights are
    all positive: a bright pixel then raises everything it reaches, through ReLU and
    max-pooling, and nothing else."""
    model = MNISTCNN().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    side = INPUT_SIZE
    probes = torch.zeros(1 + 2 * side, 1, side, side)
    for k in range(side):
        probes[1 + k, 0, k, :] = 100.0
        probes[1 + side + k, 0, :, k] = 100.0
    return dict(trace(model, probes))


def receptive_field(layer: str) -> tuple[int, int]:
    """(height, width) of the input patch that the centre value of ``layer``'s first map
    depends on: the rows and columns whose probes (``_probed``) change it."""
    out = _probed()[layer][:, 0]
    centre = out[:, out.shape[1] // 2, out.shape[2] // 2]
    changed = centre[1:] != centre[0]
    rows = torch.nonzero(changed[:INPUT_SIZE]).flatten()
    cols = torch.nonzero(changed[INPUT_SIZE:]).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    return json.loads(metadata_path(SHIPPED_MODEL).read_text(encoding="utf-8"))


# In a fact's pattern, NUM stands for a number as written (421,642, 0.25, 99.46) and WORD
# for a word, each captured.
NUM = r"(\d[\d,]*(?:\.\d+)?)"
WORD = r"([a-z]+)"


def facts_hold(text: str, facts: list[tuple[str, tuple[float | str, ...]]]) -> None:
    """Each pattern (regular expressions, with NUM and WORD) must occur in ``text`` at least
    once, and every occurrence must say the expected values: numbers as rounded in the text,
    words exactly."""
    for pattern, expected in facts:
        regex = pattern.replace("NUM", NUM).replace("WORD", WORD)
        found = re.findall(regex, text)
        assert found, f"the guide no longer says /{pattern}/"
        for groups in found:
            groups = (groups,) if isinstance(groups, str) else groups
            assert len(groups) == len(expected), pattern
            for said, true in zip(groups, expected, strict=True):
                ok = said == true if isinstance(true, str) else same(said.rstrip(","), true)
                assert ok, f"/{pattern}/: the guide says {said}, the truth is {true}"


# --------------------------------------------------------------------------- the tests


def test_slugs_are_githubs() -> None:
    # Headings of the README and the guide, with the anchors GitHub gives them.
    assert slug('"Not sure"') == "not-sure"
    assert slug("Look inside: `mnist-cnn explain`") == "look-inside-mnist-cnn-explain"
    assert slug("Data-parallel training: torchrun and `--nproc`") == (
        "data-parallel-training-torchrun-and---nproc"
    )
    assert slug("Fast: 99% in seconds on a laptop CPU") == "fast-99-in-seconds-on-a-laptop-cpu"
    assert slug("What the confidence means (calibration)") == (
        "what-the-confidence-means-calibration"
    )
    assert slug("The [guide](docs/guide.md) for mnist_cnn") == "the-guide-for-mnist_cnn"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n### B ###\n") == {"a", "a-1", "b"}


def test_layer_table_is_the_network(guide: str) -> None:
    model = MNISTCNN().eval()
    steps = trace(model, torch.zeros(1, 1, 28, 28))
    rows = table(guide, "layer", "output shape", "parameters", "multiply-adds")
    assert [row["layer"] for row in rows] == [name for name, _ in steps] + ["total"]
    *layers, total = rows
    for row, (name, output) in zip(layers, steps, strict=True):
        shape = tuple(int(n) for n in row["output shape"].split("×"))
        assert shape == tuple(output.shape[1:]), f"{name}: output shape"
        assert count(row["parameters"]) == parameters(model, name), f"{name}: parameters"
        assert count(row["multiply-adds"]) == multiply_adds(model, name, output), name
        if "=" in row["parameters"]:  # the formula beside the count adds up to it
            said, formula = row["parameters"].split("=")
            assert arithmetic(formula) == count(said), f"{name}: {row['parameters']}"
    # Every parameter is in a row of the table, and the total is the model's.
    assert sum(parameters(model, n) for n in MODULE_LAYERS) == count_parameters(model)
    assert count(total["parameters"]) == count_parameters(model) == 421_642
    assert count(total["multiply-adds"]) == sum(
        multiply_adds(model, name, output) for name, output in steps
    )


def test_what_the_guide_says_of_the_network(guide: str) -> None:
    model = MNISTCNN().eval()
    steps = trace(model, torch.zeros(1, 1, INPUT_SIZE, INPUT_SIZE))
    total = count_parameters(model)
    work = {name: multiply_adds(model, name, output) for name, output in steps}
    fc1 = parameters(model, "fc1")
    c_in, kh, kw = model.conv2.weight.shape[1:]
    facts_hold(
        prose(guide),
        [
            (r"fc1 holds NUM% of the parameters \(NUM of them\)", (100 * fc1 / total, fc1)),
            (r"conv2 does NUM% of the arithmetic", (100 * work["conv2"] / sum(work.values()),)),
            (r"Each of the NUM weights gets its own step size", (total,)),
            (r"A filter of conv2 has NUM×NUM×NUM = NUM weights", (c_in, kh, kw, c_in * kh * kw)),
            (r"conv2's output depends on an NUM×NUM patch", receptive_field("conv2")),
            (
                r"after the second pooling each number summarises a NUM×NUM patch",
                receptive_field("pool2"),
            ),
            (r"[Dd]ropout NUM", (model.dropout.p,)),
            (r"a NUM×NUM square of the 28×28 input", (PATCH, PATCH)),
        ],
    )


def test_what_the_guide_says_of_the_shipped_model(guide: str, meta: dict[str, Any]) -> None:
    metrics, dataset, training = meta["metrics"], meta["dataset"], meta["training"]
    history, policy = meta["history"], meta["unsure"]["thresholds"]
    calibration = meta["unsure"]["calibration"]
    n_train, n_val, n_test = (dataset[f"{k}_examples"] for k in ("train", "val", "test"))
    batch, epochs = training["batch_size"], training["epochs"]
    steps = math.ceil(n_train / batch)
    # The schedule training builds: torch's OneCycleLR with its defaults (an optimizer, which
    # the scheduler needs, would import torch._dynamo: seconds).
    assert training["schedule"] == "onecycle" and training["augment"]
    defaults = inspect.signature(torch.optim.lr_scheduler.OneCycleLR).parameters
    pct_start, div_factor = defaults["pct_start"].default, defaults["div_factor"].default
    peak = float(pct_start * epochs * steps) - 1  # the step at which the rate is highest
    peak_epoch = {v: k for k, v in ORDINALS.items()}[int(peak) // steps + 1]
    threads = {v: k for k, v in NUMBER_WORDS.items()}[training["threads"]]
    mean, std = meta["input"]["mean"], meta["input"]["std"]
    # The scores exactly as the metadata rounds them (0.9946: 99.46%), not rounded further.
    test_accuracy = f"{100 * metrics['test_accuracy']:.2f}"
    val_accuracy = f"{100 * metrics['val_accuracy']:.2f}"
    errors = round((1 - metrics["test_accuracy"]) * n_test)
    shift = training["translate"]
    first, last = history[0], history[-1]
    facts_hold(
        prose(guide),
        [
            # the scores
            (r"test accuracy of NUM%", (test_accuracy,)),
            (r"NUM errors in NUM test images", (errors, n_test)),
            (r"validation accuracy of NUM%", (val_accuracy,)),
            (
                r"test score \(NUM%\) is higher than the validation score \(NUM%\)",
                (test_accuracy, val_accuracy),
            ),
            (r"of the NUM were answered below 90%", (errors,)),
            # the data and the splits
            (
                r"NUM for training and NUM for testing",
                (data.SPLITS["train"][2], data.SPLITS["test"][2]),
            ),
            (r"training \(NUM images\)", (n_train,)),
            (r"validation \(NUM images held out of MNIST's NUM training", (n_val, n_train + n_val)),
            (r"test \(MNIST's NUM test images\)", (n_test,)),
            (r"MNIST's mean \(NUM\) and standard deviation \(NUM\)", (mean, std)),
            (r"background becomes −NUM and full white NUM", (mean / std, (1 - mean) / std)),
            (r"at most NUM pixels on its longest side", (locate.WORK_SIDE,)),
            # the recipe
            (r"batches of NUM images", (batch,)),
            (r"One pass over the NUM training images is an epoch, NUM steps", (n_train, steps)),
            (
                r"trained for NUM epochs \(NUM steps\), NUM s on WORD CPU cores",
                (epochs, epochs * steps, training["seconds"], threads),
            ),
            (r"starts low \(NUM\)", (training["lr"] / div_factor,)),
            (
                r"peak of NUM over the first NUM% of the steps \(during the WORD epoch\)",
                (training["lr"], 100 * pct_start, peak_epoch),
            ),
            (
                r"rotated by up to ±NUM°, scaled by NUM to NUM, shifted by up to NUM% of the "
                r"image \(NUM pixels\)",
                (data.MAX_ROTATION, *data.SCALE_RANGE, 100 * shift, shift * INPUT_SIZE),
            ),
            (
                r"each batch of NUM digits also carries NUM drawn non-digits",
                (batch, batch // OUTLIER_SHARE),
            ),
            (r"second term of the loss, weighted NUM", (training["outlier_weight"],)),
            # the curves
            (r"training loss fell from NUM to NUM", (first["train_loss"], last["train_loss"])),
            (
                r"validation loss from NUM \(epoch 1\) to NUM \(epoch NUM\)",
                (first["val_loss"], last["val_loss"], len(history)),
            ),
            (r"\(NUM against NUM in the last epoch\)", (last["train_loss"], last["val_loss"])),
            (
                r"training accuracy below validation accuracy \(NUM% against NUM%\)",
                (100 * last["train_accuracy"], 100 * last["val_accuracy"]),
            ),
            (
                r"Validation accuracy went NUM%, NUM%, NUM% and NUM% in the last four epochs",
                tuple(100 * h["val_accuracy"] for h in history[-4:]),
            ),
            (r"on NUM images, NUM point is one image", (n_val, 100 / n_val)),
            # "not sure"
            (r"more than NUM separate mark", (policy["max_marks"],)),
            (r"more than NUM times as wide as tall", (policy["max_aspect"],)),
            (r"encloses more than NUM loops", (policy["max_holes"],)),
            (r"top probability is below NUM%", (100 * policy["min_confidence"],)),
            (r"at most NUM% of real digits to be flagged", (100 * calibration["budget"],)),
            (
                r"the rules flag NUM% of the digits and catch NUM% of the non-digits",
                (100 * calibration["digit_flag_rate"], 100 * calibration["nondigit_catch_rate"]),
            ),
        ],
    )
    # The guide says that the "ambiguous" rule is off for the shipped model.
    assert "nearly tied. For the shipped model this rule is off" in prose(guide)
    assert policy["min_margin"] is None


def test_worst_mistakes_are_the_shipped_models(
    guide: str, test_split: data.Split, shipped_predictor: Predictor
) -> None:
    rows = table(guide, "test image", "label", "the model says", "confidence")
    assert len(rows) >= 3
    index = [int(row["test image"]) for row in rows]
    model, mean, std = shipped_predictor.model, shipped_predictor.mean, shipped_predictor.std
    assert model is not None
    probabilities = logits_of(model, data.normalise(test_split.images[index], mean, std))
    probabilities = probabilities.double().softmax(1)
    said = []
    for row, i, p in zip(rows, index, probabilities, strict=True):
        assert int(row["label"]) == int(test_split.labels[i]), f"test image {i}: label"
        assert int(row["the model says"]) == int(p.argmax()), f"test image {i}: answer"
        assert row["label"] != row["the model says"], f"test image {i} is no mistake"
        text = row["confidence"].rstrip("%")
        # float32 convolutions differ in their last bits between CPUs: half a shown digit,
        # and a hair more
        assert abs(float(text) - 100 * float(p.max())) <= 0.5 * 10 ** -decimals(text) + 2e-3, i
        said.append(float(text))
    assert said == sorted(said, reverse=True), "the mistakes are listed most confident first"


def test_example_photo_reading(
    guide: str, test_split: data.Split, shipped_predictor: Predictor
) -> None:
    explanation = explain(shipped_predictor, EXAMPLE_PHOTO)
    p = explanation.prediction
    text = prose(guide)
    # Which MNIST digits the example photo and the feature maps show, and what they are.
    for index, digit in re.findall(r"MNIST test digit (\d+), a (\d)", text):
        assert int(test_split.labels[int(index)]) == int(digit), f"MNIST test digit {index}"
    maker = (ROOT / "tools" / "make_example_photo.py").read_text(encoding="utf-8")
    (photo_digit,) = re.findall(r'"--index", type=int, default=(\d+)', maker)
    (said,) = re.findall(r"The example is MNIST test digit (\d+)", text)
    assert said == photo_digit
    (said,) = re.findall(r"feature maps: MNIST test digit (\d+)", text)
    assert int(said) == figures.FEATURE_DIGIT
    (answer, confidence), *_ = re.findall(
        r"In the example photo the model answers (\d) with (\d+(?:\.\d+)?)% confidence", text
    )
    assert int(answer) == p.digit
    assert abs(float(confidence) - 100 * p.confidence) <= 0.5 * 10 ** -decimals(confidence)
    (reach,) = re.findall(r"lower half reaches about (\d+)", text)
    assert abs(int(reach) - float(explanation.saliency.max())) < 1
    height, width = explanation.stages["fitted"].shape
    (wide, tall), *_ = re.findall(r"becomes (\d+) pixels wide and (\d+) tall", text)
    assert (int(wide), int(tall)) == (width, height)


def test_links_and_anchors_exist(guide: str) -> None:
    found = links(guide)
    readme_anchors = [t for _, _, t in found if t.startswith("../README.md#")]
    assert len(readme_anchors) >= 5, "the guide points into the README's sections"
    for is_image, text, target in found:
        if re.match(r"[a-z]+:", target):
            assert target.startswith(("https://", "http://")), target
            continue
        path, _, anchor = target.partition("#")
        file = (GUIDE.parent / path).resolve() if path else GUIDE
        assert file.is_relative_to(ROOT), f"{target} leaves the repository"
        assert file.exists(), f"{target}: no such file in the repository"
        if anchor:
            assert file.suffix == ".md", target
            headings = anchors(file.read_text(encoding="utf-8"))
            assert anchor in headings, f"{target}: no heading of {file.name} has that anchor"
        if is_image:
            assert text.strip(), f"{target} has no alt text"
            assert file.read_bytes()[:8] == PNG_SIGNATURE, f"{target} is not a PNG"


def test_figures_are_those_make_docs_makes(guide: str) -> None:
    images = [target for is_image, _, target in links(guide) if is_image]
    # Each of the figures `mnist-cnn explain --figures docs/img` writes, once, and no other.
    assert sorted(images) == sorted(f"img/{name}.png" for name in figures.NAMES)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^docs:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no docs target"
    assert "mnist-cnn explain --figures docs/img" in recipe.group(1)
    assert "mnist-cnn explain --figures docs/img" in prose(guide)


def test_commands_in_the_guide_exist(guide: str) -> None:
    from mnist_cnn import cli

    commands = re.findall(r"mnist-cnn ([a-z]+)((?: [^`#\n]*)?)", guide)
    assert len(commands) >= 5
    for name, rest in commands:
        assert name in cli.PARSERS, f"mnist-cnn {name}: no such command"
        if name == "serve":  # building its parser imports Flask
            continue
        sub = cli.build_parser(name)._subparsers._group_actions[0].choices[name]
        for option in re.findall(r"(?<!\S)(--[a-z-]+)", rest):
            assert option in sub._option_string_actions, f"mnist-cnn {name} {option}"
