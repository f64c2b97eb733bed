"""Options as frozen-dataclass fields that carry their own valid values.

``TrainConfig`` (training) and ``ServeConfig`` (the server) declare each option once, as a
field made by ``option``: its default and what values are valid. The command line turns the
bounds into argparse types and choices (a bad value is a usage error, exit 2), and the
library checks the same bounds for Python callers with ``option_problem``: one definition,
two checks that cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any


def option(
    default: Any,
    *,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> Any:
    """A field with its valid values: ``choices`` for names; for numbers, an inclusive
    ``minimum``/``maximum`` or an exclusive ``above``/``below`` (floats must also be
    finite). The one definition that the command line (argparse types and choices) and
    the library (for Python callers) both check, with ``option_problem``."""
    bounds = {"minimum": minimum, "maximum": maximum, "above": above, "below": below}
    return field(default=default, metadata={"choices": choices, **bounds})


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else str(value)


def option_problem(option: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for the option field ``option`` (``"must be at
    least 1, got 0"``), or ``None`` when it is valid."""
    kind = str(option.type)
    meta = option.metadata
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if kind == "str":
        if not isinstance(value, str):
            return f"must be a string, got {value!r}"
        choices = meta.get("choices")
        if choices and value not in choices:
            return f"must be one of {', '.join(choices)}, got {value!r}"
        return None
    if kind not in ("int", "float"):
        return None  # a field of another type (a path...): its own code checks it
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {value!r}"
    if kind == "int" and not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    low, high = meta.get("minimum"), meta.get("maximum")
    above, below = meta.get("above"), meta.get("below")
    too_low = (low is not None and value < low) or (above is not None and value <= above)
    too_high = (high is not None and value > high) or (below is not None and value >= below)
    if not (too_low or too_high):
        return None
    lower = low if low is not None else above
    upper = high if high is not None else below
    if lower is not None and upper is not None:
        left = "[" if low is not None else "("
        right = "]" if high is not None else ")"
        return (
            f"must be in {left}{_number_text(lower)}, {_number_text(upper)}{right}, "
            f"got {_number_text(value)}"
        )
    if lower is not None:
        word = "at least" if low is not None else "greater than"
        return f"must be {word} {_number_text(lower)}, got {_number_text(value)}"
    word = "at most" if high is not None else "less than"
    return f"must be {word} {_number_text(upper)}, got {_number_text(value)}"


def config_problems(config: Any) -> list[str]:
    """Every field of the dataclass instance ``config`` outside its own definition, as
    ``"name must be ..."``; empty when all are valid."""
    return [
        f"{option.name} {problem}"
        for option in dataclasses.fields(config)
        if (problem := option_problem(option, getattr(config, option.name))) is not None
    ]
