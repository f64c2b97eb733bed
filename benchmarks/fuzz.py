"""Fuzzing the image front end: what thousands of hostile or broken inputs do to it.

    python benchmarks/fuzz.py                       # 5,000 inputs of seed 0
    python benchmarks/fuzz.py --count 20000 --seed 7 --workers 2
    python benchmarks/fuzz.py --seed 0 --case 1234  # one input again, in detail

The inputs (``tests/_fuzz.py``, shared with ``tests/test_fuzz.py``, which runs a slice of
them in ``make test``) are seeded mutations of files in every format we decode (PNG, JPEG,
GIF, BMP, WEBP, TIFF, PPM; bit flips, truncation, spliced bytes, chunk and header edits,
huge and zero declared sizes), Pillow images in every mode, NumPy arrays of every dtype and
layout, extreme shapes, hostile paths and decompression bombs. Each goes to
``Predictor.predict`` (the shipped model) or ``mnist_cnn.preprocess.prepare`` in a worker
process with a watchdog, and ends as a prediction, a documented error (``ImageError``; for
a path, the ``OSError`` that ``load_image`` documents), an unexpected exception, or a hang
(slower than ``--time-limit``; the worker is killed at ``--kill-after`` and replaced). Peak
memory is each input's growth of the worker's peak resident set (Linux).

Prints a markdown table of outcomes per input family, then the inputs that were not a
prediction or a documented error, each with the command that runs it again.

Targets (issue 11): 0 unexpected exceptions, 0 hangs over 2 s, peak memory per request
<= 400 MB, over >= 5,000 inputs. Exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The corpus and the runner (tests/_fuzz.py, which needs no pytest), as the test uses them.
sys.path.insert(0, str(REPO / "tests"))

import _fuzz  # noqa: E402

MEMORY_TARGET_MB = 400.0
MIN_INPUTS = 5_000


def _progress(done: int, total: int) -> None:
    if done % 250 == 0 or done == total:
        print(f"  {done:,}/{total:,} inputs", file=sys.stderr, flush=True)


def table(results: list[_fuzz.Result], time_limit: float) -> list[str]:
    """The markdown table: one row per family, then the total."""
    by_family: dict[str, list[_fuzz.Result]] = defaultdict(list)
    for r in results:
        by_family[r.case.family].append(r)
    lines = [
        f"| family | inputs | prediction | documented error | unexpected | hang > {time_limit:g} s "
        "| warned | median ms | slowest s | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(f, by_family[f]) for f in _fuzz.FAMILIES if f in by_family]
    for name, group in [*rows, ("**all**", results)]:
        counts = {o: sum(r.outcome == o for r in group) for o in _fuzz.OUTCOMES}
        peaks = [r.peak_mb for r in group if r.peak_mb is not None]
        peak = f"{max(peaks):,.0f}" if peaks else "n/a"
        ms = statistics.median(r.seconds for r in group) * 1e3
        lines.append(
            f"| {name} | {len(group):,} | {counts[_fuzz.PREDICTION]:,} "
            f"| {counts[_fuzz.DOCUMENTED]:,} | {counts[_fuzz.UNEXPECTED]:,} "
            f"| {counts[_fuzz.HANG]:,} | {sum(bool(r.warnings) for r in group):,} | {ms:.1f} "
            f"| {max(r.seconds for r in group):.2f} | {peak} |"
        )
    return lines


def heaviest(results: list[_fuzz.Result], count: int = 8) -> list[str]:
    """The kinds of input with the largest peaks (one line each, the worst of the kind)."""
    worst: dict[str, _fuzz.Result] = {}
    for r in results:
        key = f"{r.case.family}/{r.case.kind}"
        if r.peak_mb is not None and (key not in worst or r.peak_mb > worst[key].peak_mb):
            worst[key] = r
    ranked = sorted(worst.values(), key=lambda r: -r.peak_mb)[:count]
    lines = [
        "| input (the worst of its kind) | outcome | seconds | peak MB |",
        "|---|---|---:|---:|",
    ]
    for r in ranked:
        lines.append(f"| {r.case.name} | {r.outcome} | {r.seconds:.2f} | {r.peak_mb:,.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=MIN_INPUTS, help="inputs to run")
    parser.add_argument("--seed", type=int, default=0, help="the corpus's seed")
    parser.add_argument(
        "--families",
        default=",".join(_fuzz.FAMILIES),
        help="comma-separated families to run",
    )
    parser.add_argument(
        "--case",
        type=int,
        action="append",
        metavar="INDEX",
        help="run only this input (repeatable) and print what it did in full",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--time-limit", type=float, default=2.0, help="an input slower than this is a hang (s)"
    )
    parser.add_argument(
        "--kill-after", type=float, default=5.0, help="kill a worker whose input runs this long (s)"
    )
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(_fuzz.FAMILIES))
    if unknown or args.count < 1 or args.workers < 1:
        parser.error(
            f"unknown families {unknown} (known: {', '.join(_fuzz.FAMILIES)})"
            if unknown
            else "--count and --workers must be at least 1"
        )
    if args.kill_after < args.time_limit:
        parser.error("--kill-after must be at least --time-limit")

    if args.case:
        cases = [_fuzz.make_case(args.seed, i) for i in args.case]
    else:
        cases = _fuzz.corpus(args.seed, args.count, families)
    print(
        f"fuzzing {len(cases):,} inputs (seed {args.seed}, {args.workers} worker(s), "
        f"{os.cpu_count()} CPUs)",
        file=sys.stderr,
    )
    start = time.perf_counter()
    results = _fuzz.run(
        args.seed,
        cases,
        time_limit=args.time_limit,
        kill_after=args.kill_after,
        workers=args.workers,
        progress=None if args.case else _progress,
    )
    elapsed = time.perf_counter() - start
    if args.case:
        for r in results:
            peak = "n/a" if r.peak_mb is None else f"{r.peak_mb:,.1f} MB"
            print(f"{r.case.name} via {r.case.entry}: {r.outcome} in {r.seconds:.3f} s, {peak}")
            print(f"  {r.detail.strip()}".replace("\n", "\n  "))
            for w in r.warnings:
                print(f"  warning: {w}")
        return 0

    print(
        f"\nFuzzing the image front end: {len(results):,} inputs of seed {args.seed}, "
        f"{elapsed:.0f} s ({args.workers} worker(s)); peak MB is each input's growth of the "
        "worker's peak resident set\n"
    )
    print("\n".join(table(results, args.time_limit)))
    print(
        "\n(warned: inputs on which our own code issued a warning, e.g. a NumPy overflow; "
        "peak MB: the largest of the family's peaks)"
    )
    bad = [r for r in results if r.outcome in (_fuzz.UNEXPECTED, _fuzz.HANG)]
    peaks = [r for r in results if r.peak_mb is not None]
    top = max(peaks, key=lambda r: r.peak_mb) if peaks else None
    if top is not None:
        print("\nThe largest peaks of memory:\n")
        print("\n".join(heaviest(results)))
    warned: dict[str, _fuzz.Result] = {}
    for r in results:
        for w in r.warnings:
            warned.setdefault(w, r)
    if warned:
        print(f"\n{len(warned)} distinct warnings from our code:\n")
        for w, r in sorted(warned.items()):
            print(f"- `{w}` (first: {r.case.name}, `{_fuzz.reproduce(args.seed, r.case.index)}`)")
    if bad:
        print(f"\n{len(bad)} inputs were not a prediction or a documented error:\n")
        print("| input | via | outcome | what happened | run it again |")
        print("|---|---|---|---|---|")
        for r in bad[:40]:
            what = r.detail.strip().splitlines()[0][:120].replace("|", "/")
            command = _fuzz.reproduce(args.seed, r.case.index)
            print(f"| {r.case.name} | {r.case.entry} | {r.outcome} | {what} | `{command}` |")
        if len(bad) > 40:
            print(f"\n(and {len(bad) - 40} more)")

    failures = []
    unexpected = sum(r.outcome == _fuzz.UNEXPECTED for r in results)
    hangs = sum(r.outcome == _fuzz.HANG for r in results)
    if unexpected:
        failures.append(f"{unexpected} unexpected exceptions (target 0)")
    if hangs:
        failures.append(f"{hangs} hangs over {args.time_limit:g} s (target 0)")
    if top is not None and top.peak_mb > MEMORY_TARGET_MB:
        over = sum(r.peak_mb > MEMORY_TARGET_MB for r in peaks)
        failures.append(
            f"{over} inputs peaked over {MEMORY_TARGET_MB:.0f} MB "
            f"(largest {top.peak_mb:,.0f} MB: {top.case.name})"
        )
    if len(results) < MIN_INPUTS:
        print(f"\n(fewer than the target's {MIN_INPUTS:,} inputs: a partial run)")
    for failure in failures:
        print(f"TARGET MISSED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
