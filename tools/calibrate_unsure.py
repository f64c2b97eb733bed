"""Choose a model's "unsure" thresholds by measurement and store them in its metadata.

The rules are in ``mnist_cnn.unsure``; this command measures them. It renders calibration
data, never the test data the benchmark reports on (``benchmarks/renders.py``):

- digits: MNIST *validation* digits (the split training holds out) drawn as every kind of
  realistic upload (photos, desks, shadows, ruled paper, pencil, pads, ...), each kind from
  its own digits, plus the validation half of the UCI optical digits shown as scans;
- non-digits: the "calibration" part of the non-digit sets (letters in half of the fonts,
  shapes, scribbles, Fashion-MNIST's train file, two validation digits side by side).

Every image goes through the Predictor (decode, locate, forward), as in the product. Then
it searches the rules' thresholds (each may also be off) for the largest mean share of
non-digits answered "unsure" (or refused as "no digit"), subject to flagging at most
``--budget`` of the digit images (all kinds together, as the benchmark's target counts
them), and at most ``--kind-cap`` of the digits of
any one kind that the model reads correctly. By default the budget counts every digit, as
the benchmark's target does; with ``--basis right`` only the digits the model reads
correctly. The cap always counts those alone: flagging a digit the model gets wrong is no
loss, and a kind the model reads badly would otherwise hold every threshold down. The
table shows both rates.

Rendering takes most of the time: ``--cache FILE.npz`` keeps the prepared 28x28 inputs,
so that another budget, or another model, is tried in seconds (the logits are recomputed
for the model given; the file is rebuilt when the preprocessing, the renderers or the
sizes differ).

The thresholds go into the "unsure" entry of the model's JSON metadata (written
atomically), where ``LoadedModel.metadata["unsure"]`` and ``UnsurePolicy.from_metadata``
find them. Retraining writes a new JSON without the entry: re-run this after training.

    python tools/calibrate_unsure.py [--model FILE_OR_RUN_DIR] [--per-kind 200]
        [--per-set 200] [--budget 0.015] [--kind-cap 0.05] [--basis all] [--cache FILE]
        [--dry-run]

About 6 minutes on two cores with the defaults.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from mnist_cnn import atomic, paths, unsure
from mnist_cnn.checkpoint import CheckpointError, file_sha256, metadata_path
from mnist_cnn.predict import Predictor
from mnist_cnn.preprocess import ImageError, normalise
from mnist_cnn.unsure import UnsurePolicy

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import renders  # noqa: E402  (benchmarks/ is not a package)

# The search space. Which of these values (or "off") each rule gets is what the data decide;
# the lowest-logit threshold is then set as high as the budget left over allows.
MARGINS = (None, 0.05, 0.1, 0.2, 0.3, 0.5)
CONFIDENCES = (None, 0.2, 0.3, 0.4, 0.5, 0.6)  # with the largest-logit rule bisected
ASPECTS = (None, 1.2, 1.3, 1.4, 1.5, 1.7, 2.0)
HOLES = (None, (2, 1), (2, 2), (2, 3), (3, 1), (3, 2))  # (max_holes, min_hole_area)
MARKS = (None, 1)

# The code that makes the scored sets: the renderers and the preprocessing.
CODE_FILES = (
    "benchmarks/renders.py",
    "src/mnist_cnn/decode.py",
    "src/mnist_cnn/locate.py",
    "src/mnist_cnn/preprocess.py",
)


@dataclass(frozen=True)
class CalibrateConfig:
    """Command-line settings (``--help`` shows the defaults)."""

    model: str | None = None  # default: paths.find_model (./models/, else the shipped one)
    per_kind: int = 200  # validation digits per kind of upload
    per_set: int = 200  # images per drawn / Fashion / two-digit calibration set
    budget: float = 0.015  # largest share of the digit images flagged, all kinds together
    kind_cap: float = 0.05  # largest share of any one kind's correctly read digits flagged
    basis: str = "all"  # the digits the budget counts: "all", or "right" (read correctly)
    seed: int = 0
    cache: str | None = None  # .npz of the scored sets, reused when it matches
    dry_run: bool = False


@dataclass
class Scored:
    """One calibration set through the Predictor: what the rules need, per image."""

    name: str
    digits: bool  # real digits (else: should be unsure)
    counted: bool  # part of the target (the digit-like letters O o I l are not)
    total: int  # images rendered
    refused: int  # NoDigitError and other ImageErrors from the preprocessing
    errors: list[str]  # unexpected exceptions (bugs), by type: reported, not hidden
    logits: np.ndarray  # (n, 10) for the images not refused
    inputs: np.ndarray  # uint8 (n, 28, 28)
    marks: np.ndarray  # (n,) separate marks found by the locator
    labels: np.ndarray | None  # (n,) digits' labels


def score_set(
    predictor: Predictor,
    name: str,
    images: Iterable[object],
    labels: Iterable[int] | None,
    digits: bool,
    counted: bool = True,
) -> Scored:
    """Prepare every image as the product does and run the model on the batch."""
    kept, marks, kept_labels, errors = [], [], [], []
    refused = total = 0
    label_iter = iter(labels) if labels is not None else itertools.repeat(None)
    for image, label in zip(images, label_iter, strict=False):
        total += 1
        try:
            located = predictor.locate(image)
        except ImageError:
            refused += 1
            continue
        except Exception as exc:  # a preprocessing bug: count it, keep calibrating
            errors.append(type(exc).__name__)
            continue
        kept.append(located.image)
        marks.append(located.marks)
        kept_labels.append(label)
    inputs = np.stack(kept) if kept else np.zeros((0, 28, 28), np.uint8)
    logits = (
        predictor.logits(normalise(inputs, predictor.mean, predictor.std)).numpy()
        if len(inputs)
        else np.zeros((0, 10), np.float32)
    )
    return Scored(
        name,
        digits,
        counted,
        total,
        refused,
        errors,
        logits.astype(np.float64),
        inputs,
        np.asarray(marks, dtype=np.int64),
        np.asarray(kept_labels, dtype=np.int64) if labels is not None else None,
    )


def build(
    predictor: Predictor, config: CalibrateConfig, log: Callable[[str], None]
) -> tuple[list[Scored], list[str]]:
    """The calibration sets, scored; and what could not be built (missing fonts, data)."""
    start = time.perf_counter()
    out: list[Scored] = []

    def done(s: Scored) -> None:
        out.append(s)
        log(f"  {s.name}: {s.total} images ({time.perf_counter() - start:.0f} s)")

    digits, labels = renders.mnist_digits("validation")
    kinds = {**renders.EXISTING_KINDS, **renders.new_kinds(digits)}
    # Each kind draws its own validation digits (while there are enough), so that one odd
    # digit does not count once per kind.
    order = np.random.default_rng([config.seed, 0]).permutation(len(digits))
    for k, (name, render) in enumerate(kinds.items()):
        index = np.take(
            order, np.arange(k * config.per_kind, (k + 1) * config.per_kind), mode="wrap"
        )
        rng = np.random.default_rng([config.seed, 1, k])
        images = (render(digits[i], rng) for i in index)
        done(score_set(predictor, name, images, labels[index], digits=True))
    missing = []
    uci = renders.uci_digits("validation")
    if uci is None:
        missing.append("UCI digits (scikit-learn is not installed)")
    else:
        rng = np.random.default_rng([config.seed, 2])
        images = (renders.uci_scan(image, rng) for image in uci[0])
        done(score_set(predictor, "UCI digits, scanned", images, uci[1], digits=True))
    sets, absent = renders.nondigit_sets("calibration", config.seed, config.per_set)
    missing += absent
    for s in sets:
        done(score_set(predictor, s.name, s.images, None, digits=False, counted=s.counted))
    return out, missing


def cache_key(config: CalibrateConfig) -> dict[str, object]:
    """What the prepared inputs depend on: a cache made with other values (changed
    preprocessing or renderers, other sizes) is rebuilt. The model is not part of it: its
    logits are recomputed (``rescore``)."""
    code = hashlib.sha256()
    for name in CODE_FILES:
        path = REPO_ROOT / name
        code.update(path.read_bytes() if path.is_file() else b"")
    return {
        "code_sha256": code.hexdigest(),
        "per_kind": config.per_kind,
        "per_set": config.per_set,
        "seed": config.seed,
    }


def save_cache(
    path: Path, key: dict[str, object], scored: list[Scored], missing: list[str]
) -> None:
    """Write the scored sets to ``path`` (.npz, atomically)."""
    header = {
        "key": key,
        "missing": missing,
        "sets": [
            {
                "name": s.name,
                "digits": s.digits,
                "counted": s.counted,
                "total": s.total,
                "refused": s.refused,
                "errors": s.errors,
            }
            for s in scored
        ],
    }
    arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(header))}
    for i, s in enumerate(scored):
        arrays[f"logits{i}"], arrays[f"inputs{i}"], arrays[f"marks{i}"] = (
            s.logits,
            s.inputs,
            s.marks,
        )
        if s.labels is not None:
            arrays[f"labels{i}"] = s.labels
    atomic.write_with(path, lambda f: np.savez_compressed(f, **arrays))


def load_cache(path: Path, key: dict[str, object]) -> tuple[list[Scored], list[str]] | None:
    """The scored sets saved in ``path`` for the same ``key``, else None."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        header = json.loads(str(z["header"]))
        if header["key"] != key:
            return None
        scored = [
            Scored(
                **meta,
                logits=z[f"logits{i}"],
                inputs=z[f"inputs{i}"],
                marks=z[f"marks{i}"],
                labels=z[f"labels{i}"] if f"labels{i}" in z.files else None,
            )
            for i, meta in enumerate(header["sets"])
        ]
    return scored, header["missing"]


def rescore(predictor: Predictor, scored: list[Scored]) -> list[Scored]:
    """The same prepared inputs with ``predictor``'s logits."""
    out = []
    for s in scored:
        logits = (
            predictor.logits(normalise(s.inputs, predictor.mean, predictor.std)).numpy()
            if len(s.inputs)
            else np.zeros((0, 10), np.float32)
        )
        out.append(replace(s, logits=logits.astype(np.float64)))
    return out


# --------------------------------------------------------------------------- choosing


@dataclass
class Features:
    """What the rules look at, per image of one set."""

    margin: np.ndarray
    max_logit: np.ndarray
    confidence: np.ndarray
    aspect: np.ndarray
    holes: dict[int, np.ndarray]  # min_hole_area -> loops
    marks: np.ndarray
    correct: np.ndarray | None  # digits the model reads right


def features(s: Scored) -> Features:
    """The rules' inputs for one scored set."""
    margin, max_logit, confidence, top2 = unsure.logit_scores(s.logits.reshape(-1, 10))
    areas = sorted({h[1] for h in HOLES if h is not None})
    geometry = {a: unsure.input_geometry(s.inputs, a) for a in areas}
    aspect = geometry[areas[0]][0] if geometry else np.ones(len(margin))
    correct = (top2[:, 0] == s.labels) if s.labels is not None else None
    return Features(
        margin,
        max_logit,
        confidence,
        aspect,
        {a: g[1] for a, g in geometry.items()},
        s.marks,
        correct,
    )


def flags_without_scores(f: Features, policy: UnsurePolicy) -> np.ndarray:
    """Which images the policy flags by every rule except the lowest-logit and the
    lowest-probability ones (vectorised ``unsure.assess``: the tests check that the two
    agree)."""
    flagged = np.zeros(len(f.margin), dtype=bool)
    if policy.min_margin is not None:
        flagged |= f.margin < policy.min_margin
    if policy.max_aspect is not None:
        flagged |= f.aspect > policy.max_aspect
    if policy.max_holes is not None:
        flagged |= f.holes[policy.min_hole_area] > policy.max_holes
    if policy.max_marks is not None:
        flagged |= f.marks > policy.max_marks
    return flagged


def flags(f: Features, policy: UnsurePolicy) -> np.ndarray:
    """Which images ``policy`` answers "unsure"."""
    flagged = flags_without_scores(f, policy)
    if policy.min_max_logit is not None:
        flagged |= f.max_logit < policy.min_max_logit
    if policy.min_confidence is not None:
        flagged |= f.confidence < policy.min_confidence
    return flagged


def digit_rates(digit_feats: list[Features], policy: UnsurePolicy, basis: str) -> np.ndarray:
    """Share of each digit set that ``policy`` flags: of all its digits (``basis`` "all")
    or of those the model reads correctly ("right")."""
    rates = []
    for f in digit_feats:
        counted = f.correct if basis == "right" else np.ones(len(f.margin), dtype=bool)
        rates.append(flags(f, policy)[counted].mean() if counted.any() else 0.0)
    return np.array(rates)


def pooled_rate(digit_feats: list[Features], policy: UnsurePolicy, basis: str) -> float:
    """Share of all the digit images together that ``policy`` flags (``basis`` as in
    ``digit_rates``): the benchmark's target counts images, not kinds."""
    flagged = counted = 0
    for f in digit_feats:
        mask = f.correct if basis == "right" else np.ones(len(f.margin), dtype=bool)
        flagged += int(flags(f, policy)[mask].sum())
        counted += int(mask.sum())
    return flagged / max(1, counted)


def catch_rate(s: Scored, f: Features, policy: UnsurePolicy) -> float:
    """Share of a non-digit set answered "unsure" or refused as "no digit"."""
    return (s.refused + int(flags(f, policy).sum())) / max(1, s.total - len(s.errors))


def choose(
    scored: list[Scored], budget: float, kind_cap: float, basis: str = "all"
) -> tuple[UnsurePolicy, list[Features]]:
    """The policy with the largest mean catch rate on the counted non-digit sets whose
    digit flag rates (``basis``: "all" digits or those read "right") stay within ``budget``
    (all digit images together), and which flags at most ``kind_cap`` of any one kind's correctly
    read digits (a kind the model reads badly would otherwise hold every threshold down
    for flagging its misread digits, which is what "not sure" is for)."""
    feats = [features(s) for s in scored]
    digit_feats = [f for s, f in zip(scored, feats, strict=True) if s.digits]
    targets = [(s, f) for s, f in zip(scored, feats, strict=True) if not s.digits and s.counted]
    # The two score rules (largest logit, top probability) can work together: the search
    # bisects one over the digits' own values with the other on the grid (or off).
    score_values = {
        "min_max_logit": np.unique(np.concatenate([f.max_logit for f in digit_feats])),
        "min_confidence": np.unique(np.concatenate([f.confidence for f in digit_feats])),
    }

    def fits(policy: UnsurePolicy) -> bool:
        # ``pooled_rate`` and ``digit_rates`` inlined: the rules run once per set, not once
        # per measure (the search calls this some 100,000 times).
        flagged = counted = 0
        for f in digit_feats:
            marked = flags(f, policy)
            if f.correct.any() and marked[f.correct].mean() > kind_cap:
                return False
            mask = f.correct if basis == "right" else slice(None)
            flagged += int(marked[mask].sum())
            counted += len(marked[mask])
        return flagged / max(1, counted) <= budget

    best: tuple[float, UnsurePolicy] | None = None
    grid = itertools.product(MARGINS, CONFIDENCES, ASPECTS, HOLES, MARKS)
    for margin, confidence, aspect, holes, marks in grid:
        policy = UnsurePolicy(
            min_margin=margin,
            min_confidence=confidence,
            max_aspect=aspect,
            max_holes=None if holes is None else holes[0],
            min_hole_area=1 if holes is None else holes[1],
            max_marks=marks,
        )
        if not fits(policy):
            continue
        for score, values in score_values.items():
            if score == "min_confidence" and confidence is not None:
                continue  # tried as the grid's value
            # The score rule takes what is left of the budget: the largest threshold that
            # still fits (flag rates only grow with it), by bisection.
            lo, hi = -1, len(values) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fits(replace(policy, **{score: float(values[mid])})):
                    lo = mid
                else:
                    hi = mid - 1
            candidate = replace(policy, **{score: float(values[lo])}) if lo >= 0 else policy
            catch = float(np.mean([catch_rate(s, f, candidate) for s, f in targets]))
            if best is None or catch > best[0] + 1e-12:
                best = (catch, candidate)
    if best is None:
        raise SystemExit(
            "no policy keeps the digits within the budget, not even with every rule off"
        )
    return best[1], feats


# --------------------------------------------------------------------------- reporting


def reasons(s: Scored, policy: UnsurePolicy) -> dict[str, int]:
    """How many of the set's images ``unsure.assess`` answers with each reason."""
    counts = dict.fromkeys(unsure.CODES, 0)
    for r in unsure.assess(s.logits.reshape(-1, 10), s.inputs, policy, list(s.marks)):
        if r is not None:
            counts[r.code] += 1
    return counts


def _errors(s: Scored) -> str:
    """The note on preprocessing errors of a set (", N errors (codes)"), or "" when none."""
    return f", {len(s.errors)} errors ({', '.join(sorted(set(s.errors)))})" if s.errors else ""


def report(
    scored: list[Scored], feats: list[Features], policy: UnsurePolicy
) -> tuple[str, dict[str, object]]:
    """The printed table and the summary stored beside the thresholds."""
    lines = [
        "| digits (calibration) | images | accuracy | refused | flagged | flagged, read right "
        "| ambiguous / not a digit / several marks |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    digit_flags, digit_right = [], []
    digit_feats = [f for s, f in zip(scored, feats, strict=True) if s.digits]
    pooled, pooled_right = (pooled_rate(digit_feats, policy, b) for b in ("all", "right"))
    for s, f in zip(scored, feats, strict=True):
        if not s.digits:
            continue
        flagged = flags(f, policy)
        right = flagged[f.correct].mean() if f.correct.any() else 0.0
        digit_flags.append(flagged.mean() if len(flagged) else 0.0)
        digit_right.append(right)
        r = reasons(s, policy)
        errors = _errors(s)
        lines.append(
            f"| {s.name} | {s.total} | {100 * f.correct.mean():.1f}% | {s.refused}{errors} | "
            f"{100 * flagged.mean():.1f}% | {100 * right:.1f}% | "
            f"{r['ambiguous']} / {r['not_a_digit']} / {r['several_marks']} |"
        )
    lines.append(
        f"| **all digit images** | | | | **{100 * pooled:.2f}%** | "
        f"**{100 * pooled_right:.2f}%** | |"
    )
    lines.append(
        f"| all kinds (mean) | | | | {100 * np.mean(digit_flags):.2f}% | "
        f"{100 * np.mean(digit_right):.2f}% | |"
    )
    lines += [
        "",
        "| non-digits (calibration) | images | refused | unsure or refused "
        "| ambiguous / not a digit / several marks |",
        "|---|---:|---:|---:|---|",
    ]
    catches = {}
    for s, f in zip(scored, feats, strict=True):
        if s.digits:
            continue
        catch = catch_rate(s, f, policy)
        if s.counted:
            catches[s.name] = round(catch, 4)
        r = reasons(s, policy)
        errors = _errors(s)
        lines.append(
            f"| {s.name} | {s.total} | {s.refused}{errors} | {100 * catch:.1f}% | "
            f"{r['ambiguous']} / {r['not_a_digit']} / {r['several_marks']} |"
        )
    mean_catch = float(np.mean(list(catches.values()))) if catches else 0.0
    lines.append(f"| **counted sets (mean)** | | | **{100 * mean_catch:.1f}%** | |")
    summary = {
        "digit_flag_rate": round(pooled, 4),
        "digit_flag_rate_read_right": round(pooled_right, 4),
        "digit_flag_rate_mean_of_kinds": round(float(np.mean(digit_flags)), 4),
        "nondigit_catch_rate": round(mean_catch, 4),
        "nondigit_catch_rates": catches,
    }
    return "\n".join(lines), summary


def write_entry(model: Path, entry: dict[str, object]) -> Path:
    """Set the "unsure" entry of the model's JSON metadata (read just before, written
    atomically, so other entries written meanwhile are kept)."""
    path = metadata_path(model)
    meta = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(meta, dict):
        raise SystemExit(f"{path}: expected a JSON object")
    meta["unsure"] = entry
    atomic.write_json(path, meta)
    return path


def parse_args(argv: list[str] | None) -> CalibrateConfig:
    defaults = CalibrateConfig()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=defaults.model,
        help="weights file (.pth) or run directory (default: ./models/mnist_cnn_model.pth "
        "when it exists, else the model shipped with the package)",
    )
    parser.add_argument(
        "--per-kind",
        type=int,
        default=defaults.per_kind,
        help="validation digits per kind of upload",
    )
    parser.add_argument(
        "--per-set",
        type=int,
        default=defaults.per_set,
        help="images per drawn, Fashion and two-digit set",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=defaults.budget,
        help="largest share of the digit images flagged, all kinds together",
    )
    parser.add_argument(
        "--kind-cap",
        type=float,
        default=defaults.kind_cap,
        help="largest share of any one kind's correctly read digits flagged",
    )
    parser.add_argument(
        "--basis",
        choices=("all", "right"),
        default=defaults.basis,
        help="digits the budget counts: all, or only those the model reads right",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the sampling and rendering"
    )
    parser.add_argument("--cache", default=None, help="keep the scored sets in this .npz file")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    config = CalibrateConfig(**{f.name: getattr(args, f.name) for f in fields(CalibrateConfig)})
    if config.per_kind < 1 or config.per_set < 1:
        parser.error("--per-kind and --per-set must be at least 1")
    if not 0 <= config.budget < 1 or not 0 <= config.kind_cap < 1:
        parser.error("--budget and --kind-cap are shares in [0, 1)")
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        model = paths.find_model(config.model).path
    except paths.NotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.from_checkpoint(model)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    key = cache_key(config)
    cached = load_cache(Path(config.cache), key) if config.cache else None
    if cached is None:
        log(f"rendering and scoring the calibration sets for {model} ...")
        scored, missing = build(predictor, config, log)
        if config.cache:
            save_cache(Path(config.cache), key, scored, missing)
    else:
        log(f"prepared inputs from {config.cache}")
        scored, missing = cached
        scored = rescore(predictor, scored)
    policy, feats = choose(scored, config.budget, config.kind_cap, config.basis)
    table, summary = report(scored, feats, policy)
    print(
        f"model: {model}; budget {100 * config.budget:.1f}% of {config.basis} digit images "
        f"(of any kind's correctly read digits at most {100 * config.kind_cap:.1f}%), "
        f"{config.per_kind} digits per kind, "
        f"seed {config.seed}\n"
    )
    print("thresholds: " + json.dumps(policy.to_metadata()["thresholds"]) + "\n")
    print(table)
    if missing:
        print(f"\nnot built (install them for a full calibration): {', '.join(missing)}")
    entry = {
        **policy.to_metadata(),
        "calibration": {
            **summary,
            "budget": config.budget,
            "kind_cap": config.kind_cap,
            "basis": config.basis,
            "per_kind": config.per_kind,
            "per_set": config.per_set,
            "seed": config.seed,
            "missing": missing,
            "weights_sha256": file_sha256(model),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python tools/calibrate_unsure.py",
        },
    }
    if config.dry_run:
        print("\n--dry-run: nothing written")
    else:
        path = write_entry(model, entry)
        print(f"\nwrote the unsure entry of {path}")
    log(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
