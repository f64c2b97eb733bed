"""A seeded slice of the fuzz corpus (``_fuzz.py``): mutated files of every format, Pillow
modes, NumPy edge cases, extreme shapes and hostile paths each end as a prediction or a
documented error, never an unexpected exception or a hang. The full corpus, with peak
memory, is ``benchmarks/fuzz.py``.

The inputs run in a worker process with a watchdog, as in the benchmark: a hang fails the
test instead of stopping the suite. The harness itself is tested too, with a stand-in for
the library that misbehaves in each way the fuzzer must catch.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _fuzz
import numpy as np
import pytest

SEED = 0
SLICE = 400  # inputs: some 6 s on one core, after the worker's start

# Inputs the front end is known to mishandle, each strictly expected to fail in
# test_known_decode_bugs (and left out of the slice) until it is fixed. None today.
KNOWN_DECODE_BUGS: dict[str, str] = {}


def _report(results: list[_fuzz.Result]) -> str:
    """The inputs that failed, with the command that runs each again."""
    return "\n".join(
        f"{r.case.name} via {r.case.entry}: {r.outcome}: {r.detail.strip()[:600]}\n"
        f"  again: {_fuzz.reproduce(SEED, r.case.index)}"
        for r in results
        if r.outcome in (_fuzz.UNEXPECTED, _fuzz.HANG)
    )


def _first_of_kind(kind: str, family: str = "paths") -> _fuzz.Case:
    index = next(
        i
        for i in range(100_000)
        if _fuzz.family_of(i) == family and _fuzz.make_case(SEED, i).kind == kind
    )
    return _fuzz.make_case(SEED, index)


@pytest.mark.slow  # a few hundred hostile files through the front end
def test_a_seeded_slice_of_the_corpus() -> None:
    families = [f for f in _fuzz.FAMILIES if f != "bombs"]  # bombs: the benchmark's
    cases = [c for c in _fuzz.corpus(SEED, SLICE, families) if c.kind not in KNOWN_DECODE_BUGS]
    assert {c.family for c in cases} == set(families)  # every family is in the slice
    results = _fuzz.run(SEED, cases, time_limit=2.0, kill_after=5.0)
    assert [r.case.index for r in results] == [c.index for c in cases]
    assert not _report(results), "\n" + _report(results)
    outcomes = {r.outcome for r in results}
    # Both ends are exercised: some inputs are classified, some refused.
    assert outcomes == {_fuzz.PREDICTION, _fuzz.DOCUMENTED}


def test_every_hostile_path() -> None:
    # A FIFO, a socket, a device, a loop of links, a folder...: each refused promptly (a
    # FIFO that is opened blocks until the watchdog kills it).
    kinds = [k for k in _fuzz._PATHS if k not in KNOWN_DECODE_BUGS]
    cases = [_first_of_kind(kind) for kind in kinds]
    results = _fuzz.run(SEED, cases, time_limit=2.0, kill_after=5.0)
    assert not _report(results), "\n" + _report(results)
    good = {r.case.kind for r in results if r.outcome == _fuzz.PREDICTION}
    assert good == {"good file", "good file as Path", "non-utf8 name"}


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=why))
        for k, why in KNOWN_DECODE_BUGS.items()
    ]
    or [pytest.param("nul", id="none known")],  # with none, a fixed one stays fixed
)
def test_known_decode_bugs(kind: str) -> None:
    results = _fuzz.run(SEED, [_first_of_kind(kind)], time_limit=2.0, kill_after=5.0)
    assert not _report(results), "\n" + _report(results)


def test_the_corpus_is_reproducible(tmp_path: Path) -> None:
    # An input is rebuilt from (seed, index) alone: what `fuzz.py --case` relies on.
    def built(seed: int, index: int) -> bytes | None:
        scratch = tmp_path / str(len(list(tmp_path.iterdir())))
        scratch.mkdir()
        source = _fuzz.make_case(seed, index).build(scratch)
        if isinstance(source, np.ndarray):
            return source.tobytes() if source.dtype != object else repr(source).encode()
        if hasattr(source, "tobytes"):  # a Pillow image
            return source.tobytes()
        return source if isinstance(source, bytes) else None  # (paths name their folder)

    indices = range(0, 140, 3)
    first = [built(SEED, i) for i in indices]
    assert first == [built(SEED, i) for i in indices]
    assert sum(a is not None for a in first) > 30
    assert first != [built(SEED + 1, i) for i in indices]


# --------------------------------------------------------------------------- the harness

# What the stand-in does for case i: behaviour STAND_IN[i % 7], and the outcome the
# harness must see.
STAND_IN = [
    ("answers", _fuzz.PREDICTION),
    ("refuses", _fuzz.DOCUMENTED),
    ("raises", _fuzz.UNEXPECTED),
    ("slow", _fuzz.HANG),  # finishes, after the time limit
    ("stuck", _fuzz.HANG),  # never finishes: killed
    ("dies", _fuzz.UNEXPECTED),  # the worker process exits
    ("bad result", _fuzz.UNEXPECTED),
    ("takes 64 MB", _fuzz.PREDICTION),  # for the peak of memory
]
TIME_LIMIT = 1.0  # far from the quick calls' milliseconds; "slow" takes 1.5 s, killed at 4


def stand_in(case: _fuzz.Case) -> Callable[[Any], Any]:
    """The library's stand-in in the harness's test (run in the worker process)."""
    from mnist_cnn.decode import UnsupportedImageError  # (no PyTorch: the worker starts fast)
    from mnist_cnn.locate import Located

    behaviour = STAND_IN[case.index % len(STAND_IN)][0]
    located = Located(np.zeros((28, 28), np.uint8), (0, 0, 1, 1), 1, True)

    def call(source: Any) -> Any:
        if behaviour == "refuses":
            raise UnsupportedImageError("not an image")
        if behaviour == "raises":
            raise KeyError("a bug")
        if behaviour in ("slow", "stuck"):
            time.sleep(1.5 * TIME_LIMIT if behaviour == "slow" else 3600)
        if behaviour == "dies":
            os._exit(3)
        if behaviour == "bad result":
            return Located(np.zeros((27, 28)), (0, 0, 1, 1), 1, True)
        if behaviour == "takes 64 MB":
            np.ones(64 * 2**20, np.uint8)  # written, so resident; freed on return
        return located

    return call


@pytest.mark.slow  # starts and kills a worker per failure kind
def test_the_harness_catches_each_failure() -> None:
    cases = [_fuzz.make_case(SEED, i) for i in range(len(STAND_IN))]
    results = _fuzz.run(
        SEED, cases, target="test_fuzz:stand_in", time_limit=TIME_LIMIT, kill_after=4 * TIME_LIMIT
    )
    seen = [(r.outcome, r.detail.strip()[:200], r.seconds, r.peak_mb) for r in results]
    assert [r.outcome for r in results] == [outcome for _, outcome in STAND_IN], seen
    details = [r.detail for r in results]
    assert "KeyError: 'a bug'" in details[2]
    assert details[3].startswith("took") and "killed" in details[4]
    assert "died (status 3)" in details[5] and "not a uint8 28x28" in details[6]
    peaks = [r.peak_mb for r in results]
    if peaks[-1] is not None:  # measured (Linux): the growth over the call, not the process
        assert 63 <= peaks[-1] <= 90, seen
        assert peaks[0] < 20, seen


def test_oserror_is_documented_for_paths_only() -> None:
    def fails(source: Any) -> Any:
        raise FileNotFoundError(2, "No such file or directory")

    assert _fuzz.classify("missing.png", fails)[0] == _fuzz.DOCUMENTED
    assert _fuzz.classify(Path("missing.png"), fails)[0] == _fuzz.DOCUMENTED
    assert _fuzz.classify(b"\x89PNG", fails)[0] == _fuzz.UNEXPECTED


# --------------------------------------------------------------------------- bugs it found


@pytest.mark.parametrize("shape", [(64, 64), (100, 100), (80, 120), (138, 156)])
def test_a_fine_dither_is_no_digit_without_warnings(shape: tuple[int, int]) -> None:
    # A 1-pixel checkerboard (a 1-bit scan of a grey area; found by the fuzzer as a PBM)
    # closes up into ink without any background: the stroke width's median overflowed
    # float32 ("RuntimeWarning: overflow encountered in scalar add" in every log).
    from mnist_cnn.preprocess import NoDigitError, prepare

    checkerboard = (np.indices(shape).sum(0) % 2).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NoDigitError):
            prepare(checkerboard)


def test_ink_without_background_has_an_infinite_width() -> None:
    # With an odd number of pixels the overflowed "median" was a finite 6.8e38, and the
    # shade lifting then asked OpenCV for a disk of that radius: a TypeError.
    from mnist_cnn import locate

    for shape in [(50, 51), (51, 51)]:  # an even and an odd number of pixels
        solid = np.ones(shape, np.float32)
        assert locate._stroke_width(solid > 0) == float("inf")
        np.testing.assert_array_equal(locate._lift_shade(solid), solid)
