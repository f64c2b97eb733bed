"""Accuracy on realistic uploads, and "not sure" on things that are not one digit.

Digits: a seeded sample of MNIST digits (the *test* split by default; ``--split
validation`` takes the validation split the training holds out, for tuning) is rendered
as each kind of upload people really send, encoded to the bytes of a real file (JPEG,
PNG, 16-bit PNG, RGBA PNG, EXIF-tagged JPEG) and classified by the Predictor from those
bytes, so the whole path (decode, preprocess, forward) is measured. The renderers live in
``benchmarks/renders.py``:

- the kinds of issue 3 (paper photo, thin ballpoint, off-centre, rotated, noisy JPEG,
  transparent canvas, white on black, 16-bit scan, EXIF-rotated, the MNIST PNG);
- the kinds of issue 9: paper on a dark or a wooden desk, a hard shadow across the digit,
  ruled paper with a margin line, squared paper, pencil, coloured ink, a yellow sticky
  note, thick marker, neighbouring digits cut at the edges, big phone photos (2-12 MP,
  perspective, EXIF rotation), drawing-pad strokes (a round brush along the digit's
  skeleton) and a small digit in a corner of a large pad;
- handwriting MNIST never saw: the UCI optical digits (43 writers, scikit-learn's
  ``load_digits``), half of them per split, upscaled and shown as scans;
- digits in Debian's handwriting-style fonts at three slants (Femke Klaver, an outline
  font, is shown but not counted).

Columns: "ours" is top-1 accuracy whatever the status ("unsure" answers count when their
digit is right; a refused image counts as wrong); "plain resize" is a naive app
(grayscale, resize to 28x28, invert when mostly light); "refused" are images the
Predictor rejected (no digit found, ...); "flagged unsure" are answers with status
"unsure". The raw-MNIST row is the model on the sample's original 28x28 digits: the
ceiling the rendered kinds are compared with.

Not one digit: letters (printed and handwriting fonts; O o I l reported apart), shapes
and scribbles (drawing pad and paper photo), Fashion-MNIST (28x28 and photographed) and
two digits side by side. The part is "test" with ``--split test`` and "calibration" with
``--split validation``: the two share no font file, no data file and no seed (see
``renders.nondigit_sets``). An image counts as handled when the answer is "unsure" or the
image is refused as "no digit".

    python benchmarks/realistic_uploads.py [--model models/mnist_cnn_model.pth]
        [--split test|validation] [--per-kind 400] [--seed 0] [--kinds 'desk|pad']
        [--save DIR] [--json FILE]

Fonts and Fashion-MNIST come from Debian packages (``make benchmark-data``); missing ones
are listed. Targets (issue 9): each kind of issue 3 >= 99%; each new kind >= 97% and the
new kinds together within 1 point of the raw-MNIST ceiling; UCI writers >= 97%; font
digits >= 98%; >= 90% of the counted non-digit images answered "unsure" or "no digit";
<= 2% of the real digits flagged unsure. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import renders
from PIL import Image, ImageFont

import mnist_cnn
from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Predictor
from mnist_cnn.preprocess import ImageError

EXISTING_TARGET = 0.99
NEW_TARGET = 0.97
CEILING_GAP = 0.01  # the new kinds together, below the raw-MNIST ceiling
UCI_TARGET = 0.97
FONT_TARGET = 0.98
NONDIGIT_TARGET = 0.90
UNSURE_DIGITS_MAX = 0.02

FONT_ANGLES = (-8.0, 0.0, 8.0)
NO_DIGIT = "no_digit"  # the ImageError code of an image with nothing to read


# --------------------------------------------------------------------------- measuring


@dataclass
class Outcome:
    """What the Predictor answered for each image of one row of a table."""

    name: str
    group: str  # "existing", "new", "uci", "font", "nondigit"
    digits: np.ndarray  # predicted digit (-1 when the image was refused)
    statuses: list[str]  # "ok", "unsure", or the refusal's error code
    reasons: list[str | None]  # the Unsure reason's code
    confidences: np.ndarray
    labels: np.ndarray | None = None  # digits only
    plain: np.ndarray | None = None  # digits only: the plain-resize prediction
    what: list[str] = field(default_factory=list)  # non-digits: what each image shows
    counted: bool = True

    @property
    def n(self) -> int:
        return len(self.digits)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy whatever the status; a refused image is wrong."""
        return float((self.digits == self.labels).mean())

    @property
    def plain_accuracy(self) -> float:
        return float((self.plain == self.labels).mean())

    @property
    def refused(self) -> int:
        return sum(s not in ("ok", "unsure") for s in self.statuses)

    @property
    def unsure(self) -> int:
        return sum(s == "unsure" for s in self.statuses)

    @property
    def no_digit(self) -> int:
        return sum(s == NO_DIGIT for s in self.statuses)

    @property
    def handled(self) -> int:
        """Non-digits answered "unsure" or refused as "no digit"."""
        return self.unsure + self.no_digit

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "group": self.group, "images": self.n}
        if self.labels is not None:
            out |= {"accuracy": self.accuracy, "refused": self.refused, "unsure": self.unsure}
            if self.plain is not None:
                out["plain_resize"] = self.plain_accuracy
        else:
            out |= {"unsure": self.unsure, "no_digit": self.no_digit, "counted": self.counted}
        out["results"] = [
            {
                "digit": int(d),
                "status": s,
                "reason": r,
                "confidence": round(float(c), 5),
                **({"label": int(self.labels[i])} if self.labels is not None else {}),
                **({"what": self.what[i]} if self.what else {}),
            }
            for i, (d, s, r, c) in enumerate(
                zip(self.digits, self.statuses, self.reasons, self.confidences, strict=True)
            )
        ]
        return out


def plain_resize(data: bytes) -> np.ndarray:
    """The naive baseline: grayscale, resize to 28x28, invert when mostly light."""
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and img.width * img.height > 2_000_000:
        # Big phone photos: decode at 1/8 scale (no visible difference once at 28x28, and
        # 20x faster); the photos of issue 3 are smaller and decoded as before.
        img.draft("L", (img.width // 8, img.height // 8))
    gray = img.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    a = np.asarray(gray, np.uint8)
    return 255 - a if a.mean() > 127 else a


def file_suffix(data: bytes) -> str:
    """The file name suffix of encoded image bytes."""
    return ".png" if data[:4] == b"\x89PNG" else ".jpg" if data[:2] == b"\xff\xd8" else ".bin"


def slug(name: str) -> str:
    """A folder name for a row of the tables."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    return "-".join(p for p in out.split("-") if p)[:60]


def measure(
    predictor: Predictor,
    name: str,
    group: str,
    images: Iterable[bytes],
    labels: np.ndarray | None = None,
    save: Path | None = None,
    plain: bool = True,
) -> Outcome:
    """Classify every image (bytes, consumed one at a time: 12 MP photos are not kept),
    with the plain-resize baseline beside it when there are ``labels`` and ``plain``."""
    prepared, marks, statuses, plain_inputs = [], [], [], []
    for i, data in enumerate(images):
        if save is not None:
            folder = save / group / slug(name)
            folder.mkdir(parents=True, exist_ok=True)
            tag = f"_{labels[i]}" if labels is not None else ""
            (folder / f"{i:04d}{tag}{file_suffix(data)}").write_bytes(data)
        try:
            if hasattr(predictor, "locate"):
                located = predictor.locate(data)
                prepared.append(located.image)
                marks.append(located.marks)
            else:  # the baseline's Predictor
                prepared.append(predictor.prepare(data))
            statuses.append(None)
        except ImageError as exc:
            prepared.append(np.zeros((28, 28), np.uint8))
            marks.append(1)
            statuses.append(exc.code)
        if labels is not None and plain:
            plain_inputs.append(plain_resize(data))
    if marks:  # the Predictor's "several marks" rule needs the located marks
        predictions = predictor.predict_inputs(np.stack(prepared), marks)
    else:
        predictions = predictor.predict_inputs(np.stack(prepared))
    digits = np.array([-1 if s else p.digit for p, s in zip(predictions, statuses, strict=True)])
    reasons = []
    for p, s in zip(predictions, statuses, strict=True):
        reason = None if s else getattr(p, "reason", None)  # older code has no status
        reasons.append(None if reason is None else reason.code)
    out_statuses = [
        s or getattr(p, "status", "ok") for p, s in zip(predictions, statuses, strict=True)
    ]
    plain_digits = None
    if plain_inputs:
        plain_digits = np.array([p.digit for p in predictor.predict_inputs(np.stack(plain_inputs))])
    return Outcome(
        name=name,
        group=group,
        digits=digits,
        statuses=out_statuses,
        reasons=reasons,
        confidences=np.array(
            [0.0 if s else p.confidence for p, s in zip(predictions, statuses, strict=True)]
        ),
        labels=labels,
        plain=plain_digits,
    )


# --------------------------------------------------------------------------- the rows


def wanted(name: str, group_title: str, filters: list[str]) -> bool:
    """Whether a row runs under ``--kinds``: a filter is a substring of its name or of
    its group's title (case-insensitive)."""
    if not filters:
        return True
    text = f"{name} | {group_title}".lower()
    return any(f in text for f in filters)


GROUP_TITLES = {
    "existing": "kinds of issue 3 (existing)",
    "new": "kinds of issue 9 (new)",
    "uci": "UCI writers",
    "font": "handwriting-style fonts",
    "nondigit": "not one digit (non-digits)",
}


@dataclass(frozen=True)
class Settings:
    """What every task needs to know (sent to the worker processes)."""

    model: str
    split: str
    seed: int
    per_kind: int
    per_set: int
    save: Path | None

    @property
    def part(self) -> str:
        """The non-digit part that goes with the digit split (tune on one, measure on the
        other)."""
        return "test" if self.split == "test" else "calibration"


@dataclass
class Context:
    """A process's predictor, digit sample and row definitions (built once per process)."""

    settings: Settings
    predictor: Predictor
    digits: np.ndarray  # the sample: per_kind MNIST digits of the split
    labels: np.ndarray
    kinds: list[tuple[str, renders.Renderer, str]]  # (name, renderer, group), in seed order
    specs: dict[str, renders.NonDigitSpec]
    missing: list[str]


def context(settings: Settings) -> Context:
    """The predictor, the seeded sample and the rows' definitions for ``settings``."""
    all_digits, all_labels = renders.mnist_digits(settings.split)
    rng = np.random.default_rng(settings.seed)
    index = rng.choice(len(all_digits), size=settings.per_kind, replace=False)
    # Issue 3's kinds first, in their old order: each kind's random stream is seeded by its
    # position, so their figures match the old benchmark's. Neighbours come from the split.
    kinds = [(name, render, "existing") for name, render in renders.EXISTING_KINDS.items()]
    kinds += [(name, render, "new") for name, render in renders.new_kinds(all_digits).items()]
    specs, missing = renders.nondigit_specs(settings.part, settings.seed, settings.per_set)
    return Context(
        settings=settings,
        predictor=Predictor.from_checkpoint(settings.model),
        digits=all_digits[index],
        labels=all_labels[index],
        kinds=kinds,
        specs={spec.name: spec for spec in specs},
        missing=missing,
    )


def task_list(ctx: Context, filters: list[str]) -> list[tuple[str, str]]:
    """The rows to run under ``--kinds``, as (what, name) tasks, in the tables' order."""
    tasks = [
        ("kind", name) for name, _, group in ctx.kinds if wanted(name, GROUP_TITLES[group], filters)
    ]
    if wanted("UCI", GROUP_TITLES["uci"], filters):
        tasks.append(("uci", "UCI"))
    if wanted("fonts", GROUP_TITLES["font"], filters):
        tasks.append(("fonts", "fonts"))
    tasks += [("nondigit", n) for n in ctx.specs if wanted(n, GROUP_TITLES["nondigit"], filters)]
    return tasks


def run_task(ctx: Context, task: tuple[str, str]) -> tuple[list[Outcome], list[str]]:
    """Render and classify one row (several for the fonts); and what was missing."""
    what, name = task
    s = ctx.settings
    if what == "kind":
        position = next(i for i, k in enumerate(ctx.kinds) if k[0] == name)
        _, render, group = ctx.kinds[position]
        kind_rng = np.random.default_rng([s.seed, position])
        images = (render(d, kind_rng) for d in ctx.digits)
        return [measure(ctx.predictor, name, group, images, ctx.labels, s.save)], []
    if what == "uci":
        row = uci_row(ctx.predictor, s.split, s.seed, s.save)
        missing = ["scikit-learn (the UCI digits): pip install scikit-learn"] if row is None else []
        return ([row] if row else []), missing
    if what == "fonts":
        return font_rows(ctx.predictor, s.save)
    built = ctx.specs[name].build()
    row = measure(ctx.predictor, built.name, "nondigit", built.images, None, s.save)
    row.what, row.counted = built.what, built.counted
    return [row], []


# The worker processes' context (``--jobs`` > 1): set once by ``_init_worker``.
_WORKER: dict[str, Context] = {}


def _init_worker(settings: Settings) -> None:
    import torch

    torch.set_num_threads(1)  # the processes are the parallelism
    _WORKER["ctx"] = context(settings)


def _run_in_worker(task: tuple[str, str]) -> tuple[list[Outcome], list[str]]:
    print(f"  [{time.strftime('%H:%M:%S')}] {task[1]}", file=sys.stderr, flush=True)
    return run_task(_WORKER["ctx"], task)


def run_all(
    ctx: Context, tasks: list[tuple[str, str]], jobs: int
) -> list[tuple[list[Outcome], list[str]]]:
    """Every task's rows, in order: in this process, or in ``jobs`` worker processes
    (each row has its own seeded random stream, so the figures do not depend on ``jobs``)."""
    if jobs <= 1:
        out = []
        for task in tasks:
            print(f"  [{time.strftime('%H:%M:%S')}] {task[1]}", file=sys.stderr, flush=True)
            out.append(run_task(ctx, task))
        return out
    # The slowest rows first, so that no worker is left with a long one at the end.
    order = sorted(range(len(tasks)), key=lambda i: tasks[i][1] not in SLOW_ROWS)
    spawn = multiprocessing.get_context("spawn")  # fork and torch's threads do not mix
    with ProcessPoolExecutor(jobs, spawn, _init_worker, (ctx.settings,)) as pool:
        results = list(pool.map(_run_in_worker, [tasks[i] for i in order]))
    out: list[tuple[list[Outcome], list[str]]] = [([], [])] * len(tasks)
    for i, result in zip(order, results, strict=True):
        out[i] = result
    return out


SLOW_ROWS = frozenset(
    {"big phone photo (2-12 MP, perspective, EXIF)", "thin ballpoint strokes (JPEG)"}
)


def uci_row(predictor: Predictor, split: str, seed: int, save: Path | None) -> Outcome | None:
    """The UCI optical digits of the split's half, shown as scans; None without sklearn."""
    loaded = renders.uci_digits(split)
    if loaded is None:
        return None
    images, labels = loaded
    rng = np.random.default_rng([seed, 100])
    name = f"UCI optical digits, 43 writers, as scans ({split} half)"
    return measure(
        predictor, name, "uci", (renders.uci_scan(im, rng) for im in images), labels, save
    )


def font_rows(predictor: Predictor, save: Path | None) -> tuple[list[Outcome], list[str]]:
    """Each handwriting-style font's digits at three slants, and the fonts missing."""
    files, missing = renders.font_files()
    missing = [f"font family {f}" for f in missing]
    rows = []
    for path in files:
        font = ImageFont.truetype(str(path), 150)
        if not renders.has_digits(font):
            missing.append(f"{path.name} (no digit glyphs)")
            continue
        images = [
            renders.encode(renders.font_digit(font, d, a), "PNG")
            for d in range(10)
            for a in FONT_ANGLES
        ]
        labels = np.array([d for d in range(10) for _ in FONT_ANGLES])
        row = measure(predictor, path.stem, "font", images, labels, save)
        row.counted = renders.font_family(path) not in renders.OUTLINE_FONTS
        rows.append(row)
    return rows, missing


# --------------------------------------------------------------------------- the report


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def share(count: int, n: int) -> str:
    """ "1.25% (5)": a count with its share of ``n``."""
    return f"{pct(count / n) if n else '-'} ({count})"


def pooled(rows: list[Outcome]) -> tuple[int, float]:
    """(images, accuracy) of several digit rows together."""
    n = sum(r.n for r in rows)
    return n, (sum(r.accuracy * r.n for r in rows) / n if n else float("nan"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="weights file (.pth)")
    parser.add_argument(
        "--split",
        choices=("test", "validation"),
        default="test",
        help="MNIST digits to render; validation also picks the calibration part of the non-digits",
    )
    parser.add_argument("--per-kind", type=int, default=400, help="MNIST digits per kind")
    parser.add_argument(
        "--per-set", type=int, default=200, help="images per drawn, Fashion-MNIST and two-digit set"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample and rendering")
    parser.add_argument(
        "--kinds",
        default="",
        help="substrings separated by '|' (names hold commas): run only the rows (kinds, "
        "sets) whose name or group (issue 3, issue 9, UCI, fonts, non-digits) holds one",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (the figures do not depend on it)",
    )
    parser.add_argument("--save", type=Path, help="write every rendered image under DIR")
    parser.add_argument("--json", type=Path, help="write the results, image by image, to FILE")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    filters = [f.strip().lower() for f in args.kinds.split("|") if f.strip()]
    settings = Settings(args.model, args.split, args.seed, args.per_kind, args.per_set, args.save)
    ctx = context(settings)
    predictor, labels, part = ctx.predictor, ctx.labels, settings.part
    # The ceiling: the model on the sample's own 28x28 arrays, no decoding, no preprocessing.
    raw_predictions = predictor.predict_inputs(ctx.digits)
    raw = Outcome(
        name="raw MNIST",
        group="raw",
        digits=np.array([p.digit for p in raw_predictions]),
        statuses=[getattr(p, "status", "ok") for p in raw_predictions],  # older code: no status
        reasons=[None] * len(raw_predictions),
        confidences=np.array([p.confidence for p in raw_predictions]),
        labels=labels,
    )

    results = run_all(ctx, task_list(ctx, filters), args.jobs)
    outcomes = [row for rows, _ in results for row in rows]
    missing = list(ctx.missing)
    missing += [m for _, ms in results for m in ms if m not in missing]
    rows = [r for r in outcomes if r.group in ("existing", "new")]
    uci = next((r for r in outcomes if r.group == "uci"), None)
    fonts = [r for r in outcomes if r.group == "font"]
    nondigits = [r for r in outcomes if r.group == "nondigit"]
    seconds = time.perf_counter() - start

    # ---- the tables
    existing = [r for r in rows if r.group == "existing"]
    new = [r for r in rows if r.group == "new"]
    photo_like = [r for r in existing if r.name != "MNIST digit as a PNG"]
    counted_fonts = [r for r in fonts if r.counted]
    info = predictor.info
    print(
        f"model: {info.path} ({info.architecture}, MNIST test accuracy "
        f"{pct(info.test_accuracy or 0)}); code: {Path(mnist_cnn.__file__).parent}\n"
        f"{args.per_kind} MNIST {args.split} digits per kind, seed {args.seed}; non-digits: "
        f"{part} part\n"
    )
    print("| kind of upload | images | ours | plain resize | refused | flagged unsure |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| raw MNIST 28x28, no preprocessing (ceiling of this sample) | {raw.n} | "
        f"{pct(raw.accuracy)} | | | {share(raw.unsure, raw.n)} |"
    )

    def line(r: Outcome, label: str | None = None) -> None:
        plain = pct(r.plain_accuracy) if r.plain is not None else ""
        print(
            f"| {label or r.name} | {r.n} | {pct(r.accuracy)} | {plain} | {r.refused} | "
            f"{share(r.unsure, r.n)} |"
        )

    def total(label: str, group: list[Outcome], extra: str = "") -> None:
        n, acc = pooled(group)
        unsure = sum(r.unsure for r in group)
        refused = sum(r.refused for r in group)
        print(f"| **{label}**{extra} | {n} | **{pct(acc)}** | | {refused} | {share(unsure, n)} |")

    for r in existing:
        line(r)
    if photo_like:
        total("issue 3 kinds overall", photo_like, " (MNIST PNG not counted, as before)")
    for r in new:
        line(r)
    if new:
        _, acc_new = pooled(new)
        total("issue 9 kinds overall", new, f" ({pct(raw.accuracy - acc_new)} below the ceiling)")
    if uci is not None:
        line(uci)
    if counted_fonts:
        total(
            "handwriting-style fonts",
            counted_fonts,
            f" ({len(counted_fonts)} fonts x 10 digits x {len(FONT_ANGLES)} slants)",
        )
    real = [*rows, *([uci] if uci else []), *counted_fonts]
    n_real = sum(r.n for r in real)
    unsure_real = sum(r.unsure for r in real)
    if real:
        print(
            f"| **all real digits above: flagged unsure** | {n_real} | | | | "
            f"**{share(unsure_real, n_real)}** |"
        )

    if fonts:
        print()
        print(
            "| handwriting-style font | digits | ours | plain resize | refused | flagged unsure |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for r in fonts:
            line(r, r.name if r.counted else f"{r.name} (outline lettering, not counted)")

    counted_nd = [r for r in nondigits if r.counted]
    if nondigits:
        print()
        print("| not one digit | images | unsure | no digit | answered unsure or no digit |")
        print("|---|---:|---:|---:|---:|")
        for r in nondigits:
            print(
                f"| {r.name} | {r.n} | {r.unsure} | {r.no_digit} | "
                f"{'**' if r.counted else ''}{share(r.handled, r.n)}{'**' if r.counted else ''} |"
            )
        n_nd = sum(r.n for r in counted_nd)
        handled_nd = sum(r.handled for r in counted_nd)
        print(f"| **counted sets overall** | {n_nd} | | | **{share(handled_nd, n_nd)}** |")
    if missing:
        print(f"\nnot found (make benchmark-data): {', '.join(missing)}")
    print(f"\n{seconds:.0f} s")

    # ---- the targets
    failures = []
    for r in existing:
        if r.accuracy < EXISTING_TARGET:
            failures.append(f"{r.name} {pct(r.accuracy)} < {pct(EXISTING_TARGET)}")
    for r in new:
        if r.accuracy < NEW_TARGET:
            failures.append(f"{r.name} {pct(r.accuracy)} < {pct(NEW_TARGET)}")
    if new and raw.accuracy - acc_new > CEILING_GAP:
        failures.append(
            f"issue 9 kinds overall {pct(acc_new)}: more than {100 * CEILING_GAP:.0f} point "
            f"below the raw-MNIST ceiling {pct(raw.accuracy)}"
        )
    if wanted("UCI", GROUP_TITLES["uci"], filters):
        if uci is None:
            failures.append("UCI writers not measured (scikit-learn missing)")
        elif uci.accuracy < UCI_TARGET:
            failures.append(f"UCI writers {pct(uci.accuracy)} < {pct(UCI_TARGET)}")
    if wanted("fonts", GROUP_TITLES["font"], filters):
        _, font_acc = pooled(counted_fonts)
        if not counted_fonts or font_acc < FONT_TARGET:
            failures.append(f"font digits {pct(font_acc)} < {pct(FONT_TARGET)}")
    if counted_nd:
        rate = sum(r.handled for r in counted_nd) / sum(r.n for r in counted_nd)
        if rate < NONDIGIT_TARGET:
            failures.append(
                f"non-digits answered unsure or no digit {pct(rate)} < {pct(NONDIGIT_TARGET)}"
            )
    if any("Fashion-MNIST" in m for m in missing) and wanted(
        "Fashion-MNIST", GROUP_TITLES["nondigit"], filters
    ):
        failures.append("Fashion-MNIST not measured (apt-get install dataset-fashion-mnist)")
    if n_real and unsure_real / n_real > UNSURE_DIGITS_MAX:
        failures.append(
            f"real digits flagged unsure {pct(unsure_real / n_real)} > {pct(UNSURE_DIGITS_MAX)}"
        )
    for failure in failures:
        print(f"TARGET MISSED: {failure}", file=sys.stderr)

    if args.json:
        report = {
            "model": str(info.path),
            "code": str(Path(mnist_cnn.__file__).parent),
            "split": args.split,
            "nondigit_part": part,
            "seed": args.seed,
            "per_kind": args.per_kind,
            "per_set": args.per_set,
            "kinds_filter": filters,
            "raw_mnist_ceiling": raw.accuracy,
            "digits": [r.to_json() for r in [*rows, *([uci] if uci else []), *fonts]],
            "nondigits": [r.to_json() for r in nondigits],
            "missing": missing,
            "targets_missed": failures,
            "seconds": round(seconds, 1),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
