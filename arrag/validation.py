"""The one check of numbers from users: finite, in range, integral where a count is meant.

Used by the CLI (`cli_number` as an argparse `type=`), by the dataclass settings of the library (`check_fields` in
their `__post_init__`) and by the workflow's config check (`non_finite_keys`). `x <= 0` is False for NaN, so
every range check here tests finiteness first; messages name the flag or field, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import math
import numbers


def _allowed(low, high, low_open: bool, high_open: bool, integer: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return kind + (" " + " and ".join(parts) if parts else "")


def number_problem(
    value,
    *,
    low=None,
    high=None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> str | None:
    """None when `value` is a finite number (an int when `integer`) within the bounds (or None when `optional`);
    else what is allowed, e.g. "must be a finite number > 0"."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and integer:
        ok = isinstance(value, numbers.Integral)
    if ok:
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return None
    return "must be " + _allowed(low, high, low_open, high_open, integer) + (" (or None)" if optional else "")


def check_number(value, name: str, **bounds):
    """`value` itself when number_problem finds none; else ValueError "<name> is <value>: must be ..."."""
    problem = number_problem(value, **bounds)
    if problem:
        raise ValueError(f"{name} is {value!r}: {problem}")
    return value


def cli_number(kind: type = float, **bounds):
    """An argparse `type=` callable: parses `kind` and applies check_number; argparse names the flag."""

    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not {'an integer' if kind is int else 'a number'}") from None
        problem = number_problem(value, **({"integer": kind is int} | bounds))
        if problem:
            raise argparse.ArgumentTypeError(f"{raw!r} {problem}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid <name> value" wording
    return parse


# shorthands for the common rules
COUNT = dict(low=1, integer=True)  # steps, batch sizes, k, images per prompt
INDEX = dict(low=0, integer=True)  # seeds, shards, intervals where 0 means "never"
POSITIVE = dict(low=0, low_open=True)  # learning rates, temperatures
FRACTION = dict(low=0, high=1)  # dropouts, weights, fractions


def check_fields(obj, rules: dict[str, dict]) -> None:
    """Check the dataclass `obj`'s fields by `rules` (field -> check_number bounds), naming Class.field."""
    for field, bounds in rules.items():
        check_number(getattr(obj, field), f"{type(obj).__name__}.{field}", **bounds)


def non_finite_keys(obj, path: str = "") -> list[str]:
    """Dotted keys of every NaN or infinite float in a nested config (YAML's .nan / .inf parse as floats and
    pass a schema's minimum and maximum)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{path} = {obj!r}"]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in non_finite_keys(v, f"{path}.{key}" if path else str(key))]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in non_finite_keys(v, f"{path}[{i}]")]
    return []


def check_config_finite(config: dict, where: str = "the config") -> None:
    bad = non_finite_keys(config)
    if bad:
        raise ValueError(f"{where}: {', '.join(bad)}: NaN and infinity are not settings; give a finite number")
