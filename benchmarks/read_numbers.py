"""Reading whole numbers: MNIST digits written side by side, read by ``Predictor.read_number``.

(Not ``numbers.py``: run as a script, a file of that name in this folder would hide the
standard library's ``numbers``, which NumPy and torch import, from every benchmark here.)

Each number is 2 to 8 MNIST digits (the *test* split by default; ``--split validation``
takes the validation split the training holds out, which is what the segmentation's
thresholds were tuned on), each at its own size (+-15%) and baseline (+-8% of the height),
with random gaps: "separate" numbers leave 8-45% of the height between neighbours' boxes,
"touching" ones overlap their boxes by up to 15% of the height, so that strokes touch or
cross. Numbers are rendered as the single-digit benchmark renders digits
(``benchmarks/renders.py``):

- paper photo: pen on paper, photographed (uneven light, blur, sensor noise, JPEG), on a
  1280x400 frame (wider for long numbers);
- drawing pad: the digits redrawn with a round brush 7-18 pixels wide along their
  skeletons, black on white or on a transparent canvas (PNG);
- transparent canvas: pen-like strokes as the alpha of an RGBA PNG (never tuned on);
- handwriting fonts: numbers typed in Debian's handwriting-style fonts (``make
  benchmark-data``), slightly turned (never tuned on).

Columns: "number" is whole-number accuracy (every digit right, none missing or extra);
"digits" is per-digit accuracy (the digits of the truth matched in order: the length of
the number minus the edit distance, over the length); "ceiling" is the product of the
raw digits' accuracies: the share of numbers whose raw 28x28 MNIST digits the model reads
all right (fonts have none); "ceiling (alone)" the share of numbers whose digits, each
rendered alone the same way and read by the single-digit path (``predict``), are all
right: what a perfect segmentation would reach; "unsure" is the share of readings answered
"unsure"; "p50" the median time of ``read_number`` from the file's bytes, on one thread.

    python benchmarks/read_numbers.py [--quick] [--split test|validation] [--per-row 100]
        [--seed 0] [--kinds 'photo|pad'] [--model PATH] [--save DIR]

Targets: 4-digit separate numbers >= 95% whole-number accuracy in every kind; 4-digit
touching numbers >= 85%; per-digit accuracy >= 99% over all separate MNIST numbers; p50 <= 15 ms
for the 4-digit 1280x400 paper photos. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import renders
import torch
from PIL import Image, ImageDraw, ImageFont

from mnist_cnn.paths import SHIPPED_MODEL
from mnist_cnn.predict import Predictor
from mnist_cnn.preprocess import ImageError

Rng = np.random.Generator

SEPARATE_TARGET = 0.95
TOUCHING_TARGET = 0.85
PER_DIGIT_TARGET = 0.99
P50_TARGET_MS = 15.0

COUNTS = (2, 4, 6, 8)
QUICK_COUNTS = (2, 4, 8)
SPACINGS = ("separate", "touching")


# --------------------------------------------------------------------------- numbers


def gaps(n: int, height: float, spacing: str, rng: Rng) -> list[int]:
    """The gaps between neighbours' boxes, in pixels (negative: the boxes overlap)."""
    low, high = (0.08, 0.45) if spacing == "separate" else (-0.15, 0.0)
    return [round(rng.uniform(low, high) * height) for _ in range(n - 1)]


def lay_out(masks: list[np.ndarray], height: float, spacing: str, rng: Rng) -> np.ndarray:
    """Coverage masks side by side with random gaps and baselines: one coverage array."""
    shifts = [round(rng.uniform(-0.08, 0.08) * height) for _ in masks]
    between = gaps(len(masks), height, spacing, rng)
    bottoms = [round(height) + s for s in shifts]
    top = min(b - m.shape[0] for b, m in zip(bottoms, masks, strict=True))
    lefts, x = [], 0
    for i, m in enumerate(masks):
        lefts.append(x)
        x += m.shape[1] + (between[i] if i < len(between) else 0)
    total_w = max(left + m.shape[1] for left, m in zip(lefts, masks, strict=True))
    total_h = max(bottoms) - top
    out = np.zeros((total_h, total_w), np.float32)
    for m, left, bottom in zip(masks, lefts, bottoms, strict=True):
        renders.paste(out, m, bottom - m.shape[0] - top, left)
    return out


def sizes(n: int, height: float, rng: Rng) -> list[float]:
    """Each digit's own height: the number's +-15%."""
    return [height * rng.uniform(0.85, 1.15) for _ in range(n)]


def paper_photo(digits: np.ndarray, spacing: str, rng: Rng) -> bytes:
    """Pen on paper, photographed: a 1280x400 frame (wider when the number needs it),
    uneven light, blur, sensor noise, JPEG."""
    height = rng.uniform(0.3, 0.5) * 400
    masks = [
        renders.pen_mask(d, int(h), rng)
        for d, h in zip(digits, sizes(len(digits), height, rng), strict=True)
    ]
    cov = lay_out(masks, height, spacing, rng)
    cov = renders.rotate(cov, rng.uniform(-3, 3))
    shape = (400, max(1280, int(cov.shape[1] / 0.85)))
    cov = renders.place(cov, shape, rng, 0.04)
    rgb = renders.ink_over(
        np.ones((*shape, 3), np.float32) * renders.paper_colour(rng),
        cov,
        renders.jitter(renders.BLUE_BLACK, rng, 0.3),
    )
    rgb = rgb * renders.uneven_light(shape, rng)
    return renders.jpeg(renders.finish(rgb, rng, blur=1.0, noise=0.025), rng)


def drawing_pad(digits: np.ndarray, spacing: str, rng: Rng) -> bytes:
    """A pad 300 pixels tall (wider for long numbers), the digits drawn with a round brush
    7-18 pixels wide, black on white or on a transparent canvas (PNG)."""
    height = rng.uniform(110, 170)
    width = rng.uniform(7, 18)
    masks = [
        renders.digit_strokes(d, h, width, rng)
        for d, h in zip(digits, sizes(len(digits), height, rng), strict=True)
    ]
    cov = lay_out(masks, height, spacing, rng)
    shape = (300, max(600, cov.shape[1] + 40))
    return renders.pad_file(renders.place(cov, shape, rng, 0.02), rng)


def transparent_canvas(digits: np.ndarray, spacing: str, rng: Rng) -> bytes:
    """A transparent web canvas with pen-like strokes (alpha = coverage), RGBA PNG."""
    height = rng.uniform(100, 160)
    masks = [
        renders.pen_mask(d, int(h), rng)
        for d, h in zip(digits, sizes(len(digits), height, rng), strict=True)
    ]
    cov = lay_out(masks, height, spacing, rng)
    shape = (260, max(500, cov.shape[1] + 30))
    cov = renders.place(cov, shape, rng, 0.02)
    rgba = np.zeros((*shape, 4), np.uint8)
    rgba[..., 3] = np.round(cov * 255).astype(np.uint8)
    return renders.encode(Image.fromarray(rgba, "RGBA"), "PNG")


Renderer = Callable[[np.ndarray, str, Rng], bytes]
KINDS: dict[str, Renderer] = {
    "paper photo": paper_photo,
    "drawing pad": drawing_pad,
    "transparent canvas": transparent_canvas,
}


def font_number(font: ImageFont.FreeTypeFont, text: str, rng: Rng) -> bytes:
    """``text`` typed in ``font``, black on white with a margin, turned by up to 4 degrees
    (PNG)."""
    left, top, right, bottom = font.getbbox(text)
    pad = 40
    page = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 255)
    ImageDraw.Draw(page).text((pad - left, pad - top), text, fill=0, font=font)
    page = page.rotate(rng.uniform(-4, 4), Image.Resampling.BILINEAR, expand=True, fillcolor=255)
    return renders.encode(page, "PNG")


# --------------------------------------------------------------------------- measuring


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


@dataclass
class Row:
    """The readings of one row of the table."""

    kind: str
    spacing: str
    count: int
    truths: list[str] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    unsure: list[bool] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    raw_all_right: list[bool] = field(default_factory=list)
    alone_all_right: list[bool] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kind}, {self.spacing}, {self.count} digits"

    @property
    def n(self) -> int:
        return len(self.truths)

    @property
    def accuracy(self) -> float:
        return float(np.mean([t == r for t, r in zip(self.truths, self.read, strict=True)]))

    def digits_right(self) -> tuple[int, int]:
        """(digits matched in order, digits in the truths)."""
        right = sum(
            max(0, len(t) - edit_distance(t, r))
            for t, r in zip(self.truths, self.read, strict=True)
        )
        return right, sum(len(t) for t in self.truths)

    @property
    def per_digit(self) -> float:
        right, total = self.digits_right()
        return right / total

    @property
    def ceiling(self) -> float | None:
        return float(np.mean(self.raw_all_right)) if self.raw_all_right else None

    @property
    def alone(self) -> float | None:
        return float(np.mean(self.alone_all_right)) if self.alone_all_right else None

    @property
    def p50(self) -> float:
        return float(np.median(self.ms))


def read(predictor: Predictor, data: bytes) -> tuple[str, bool, float]:
    """(the number read, whether unsure, milliseconds); a refused image reads as ""."""
    start = time.perf_counter()
    try:
        reading = predictor.read_number(data)
        text, unsure = reading.number, reading.status == "unsure"
    except ImageError:
        text, unsure = "", True
    return text, unsure, 1000 * (time.perf_counter() - start)


def read_alone(predictor: Predictor, data: bytes) -> int:
    """The single-digit path's answer for an image of one digit (-1 when refused)."""
    try:
        return predictor.predict(data).digit
    except ImageError:
        return -1


def digit_rows(
    predictor: Predictor,
    split: str,
    per_row: int,
    counts: tuple[int, ...],
    seed: int,
    filters: list[str],
    save: Path | None,
) -> list[Row]:
    """The MNIST rows: every kind x spacing x count, each with its own seeded stream."""
    pool, labels = renders.mnist_digits(split)
    raw_right = np.array([p.digit for p in predictor.predict_inputs(pool)]) == labels
    rows = []
    for k, (kind, render) in enumerate(KINDS.items()):
        for s, spacing in enumerate(SPACINGS):
            for count in counts:
                row = Row(kind, spacing, count)
                if filters and not any(f in row.name for f in filters):
                    continue
                rng = np.random.default_rng([seed, k, s, count])
                alone_rng = np.random.default_rng([seed, k, s, count, 1])  # its own stream
                for i in range(per_row):
                    index = rng.choice(len(pool), size=count, replace=False)
                    truth = "".join(str(int(labels[j])) for j in index)
                    data = render(pool[index], spacing, rng)
                    if save is not None:
                        folder = save / f"{kind}-{spacing}-{count}".replace(" ", "-")
                        folder.mkdir(parents=True, exist_ok=True)
                        suffix = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
                        (folder / f"{i:04d}_{truth}{suffix}").write_bytes(data)
                    text, unsure, ms = read(predictor, data)
                    row.truths.append(truth)
                    row.read.append(text)
                    row.unsure.append(unsure)
                    row.ms.append(ms)
                    row.raw_all_right.append(bool(raw_right[index].all()))
                    row.alone_all_right.append(
                        all(
                            read_alone(predictor, render(pool[[j]], spacing, alone_rng))
                            == int(labels[j])
                            for j in index
                        )
                    )
                print(f"  {row.name}: {row.accuracy:.3f}", file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def font_rows(
    predictor: Predictor, per_row: int, counts: tuple[int, ...], seed: int, filters: list[str]
) -> tuple[list[Row], list[str]]:
    """Numbers typed in the handwriting-style fonts (outline lettering left out)."""
    files, missing = renders.font_files()
    files = [f for f in files if renders.font_family(f) not in renders.OUTLINE_FONTS]
    rows: list[Row] = []
    if not files:
        return rows, missing
    for count in counts:
        row = Row("handwriting fonts", "as typed", count)
        if filters and not any(f in row.name for f in filters):
            continue
        rng = np.random.default_rng([seed, 99, count])
        for _ in range(per_row):
            path = files[rng.integers(len(files))]
            font = ImageFont.truetype(str(path), int(rng.integers(90, 160)))
            truth = "".join(str(int(d)) for d in rng.integers(0, 10, count))
            text, unsure, ms = read(predictor, font_number(font, truth, rng))
            row.truths.append(truth)
            row.read.append(text)
            row.unsure.append(unsure)
            row.ms.append(ms)
        print(f"  {row.name}: {row.accuracy:.3f}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows, missing


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="weights file (.pth)")
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--per-row", type=int, default=100, help="numbers per row")
    parser.add_argument("--quick", action="store_true", help="25 numbers per row, 2/4/8 digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="", help="substrings of row names, separated by '|'")
    parser.add_argument("--save", type=Path, help="write every rendered image under DIR")
    args = parser.parse_args(argv)
    # One thread, as the p50 target says (the command owns the process's thread pools).
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    per_row = 25 if args.quick else args.per_row
    counts = QUICK_COUNTS if args.quick else COUNTS
    filters = [f.strip().lower() for f in args.kinds.split("|") if f.strip()]
    start = time.perf_counter()
    predictor = Predictor.from_checkpoint(args.model)
    rows = digit_rows(predictor, args.split, per_row, counts, args.seed, filters, args.save)
    fonts, missing = font_rows(predictor, per_row, counts, args.seed, filters)
    rows += fonts
    seconds = time.perf_counter() - start

    print(
        f"model: {predictor.info.path}; {per_row} numbers per row of MNIST {args.split} "
        f"digits, seed {args.seed}\n"
    )
    print(
        "| kind | spacing | digits | numbers | number | digits right | ceiling (raw) | "
        "ceiling (alone) | unsure | p50 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.kind} | {r.spacing} | {r.count} | {r.n} | {pct(r.accuracy)} | "
            f"{pct(r.per_digit)} | {pct(r.ceiling)} | {pct(r.alone)} | "
            f"{pct(float(np.mean(r.unsure)))} | "
            f"{r.p50:.1f} ms |"
        )
    for spacing in (*SPACINGS, "as typed"):
        group = [r for r in rows if r.spacing == spacing]
        if group:
            right = sum(r.digits_right()[0] for r in group)
            total = sum(r.digits_right()[1] for r in group)
            whole = sum(r.accuracy * r.n for r in group) / sum(r.n for r in group)
            print(
                f"| **all {spacing}** | | | {sum(r.n for r in group)} | **{pct(whole)}** | "
                f"**{pct(right / total)}** | | | | |"
            )
    if missing:
        print(f"\nnot found (make benchmark-data): font families {', '.join(missing)}")
    print(f"\n{seconds:.0f} s")

    failures = []
    for r in rows:
        if r.count == 4 and r.spacing in ("separate", "as typed") and r.accuracy < SEPARATE_TARGET:
            failures.append(f"{r.name}: {pct(r.accuracy)} < {pct(SEPARATE_TARGET)}")
        if r.count == 4 and r.spacing == "touching" and r.accuracy < TOUCHING_TARGET:
            failures.append(f"{r.name}: {pct(r.accuracy)} < {pct(TOUCHING_TARGET)}")
        if r.count == 4 and r.kind == "paper photo" and r.p50 > P50_TARGET_MS:
            failures.append(f"{r.name}: p50 {r.p50:.1f} ms > {P50_TARGET_MS:.0f} ms")
    separate = [r for r in rows if r.spacing == "separate"]
    if separate:
        right = sum(r.digits_right()[0] for r in separate)
        total = sum(r.digits_right()[1] for r in separate)
        if right / total < PER_DIGIT_TARGET:
            failures.append(
                f"per-digit accuracy of separate numbers {pct(right / total)} < "
                f"{pct(PER_DIGIT_TARGET)}"
            )
    for failure in failures:
        print(f"TARGET MISSED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
