"""Checks of constructor and command arguments, shared by data, methods, eval and commands.

A bad value is one ``ConfigError`` naming its configuration key and what would be valid
(``model.init_args.temperature=0; valid: a number > 0``), raised while the CLI builds the
objects or before a command starts its work, instead of a traceback (or a silently wrong
result) later on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Integral, Real

from distill.errors import ConfigError

#: Where the CLI's configuration holds the method's arguments.
MODEL = "model.init_args"


def callback_key(callback: object, name: str) -> str:
    """The configuration key of a callback's argument: ``trainer.callbacks.KNNEval.init_args.k``."""
    return f"trainer.callbacks.{type(callback).__name__}.init_args.{name}"


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite real number (not a bool)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def items(value: object) -> tuple:
    """The elements of a list or tuple (not of a string); ``()`` for anything else."""
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()


def _within(value: object, low: float, high: float, low_open: bool, high_open: bool) -> bool:
    if not is_number(value):
        return False
    above = low < value if low_open else low <= value
    below = value < high if high_open else value <= high
    return above and below


def _range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """``low`` to ``high`` in words: "in [0, 1)", "in (0, 1]", "> 0", ">= 0" or ""."""
    if math.isinf(high):
        return "" if math.isinf(low) else f"{'>' if low_open else '>='} {low:g}"
    if math.isinf(low):
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def require_int(key: str, value: object, minimum: int) -> None:
    """Raises unless ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{key}={value!r}; valid: an integer >= {minimum}")


def require_positive_int(key: str, value: object) -> None:
    """Raises unless ``value`` is an integer >= 1 (a size, a count, a number of steps)."""
    require_int(key, value, 1)


def require_number(
    key: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raises unless ``value`` is a finite number in ``[low, high]`` (an end is excluded
    with ``low_open`` or ``high_open``)."""
    if not _within(value, low, high, low_open, high_open):
        within = _range(low, high, low_open, high_open)
        raise ConfigError(f"{key}={value!r}; valid: a number {within}".strip())


def require_numbers(
    key: str,
    value: object,
    count: int,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
) -> None:
    """Raises unless ``value`` holds ``count`` numbers, each as ``require_number`` asks."""
    elements = items(value)
    if len(elements) != count or not all(_within(v, low, high, low_open, False) for v in elements):
        within = _range(low, high, low_open, False)
        raise ConfigError(f"{key}={value!r}; valid: {count} numbers{' ' * bool(within)}{within}")


def require_positive(key: str, value: object) -> None:
    """Raises unless ``value`` is a finite number > 0 (a temperature, a learning rate)."""
    require_number(key, value, 0.0, low_open=True)


def require_non_negative(key: str, value: object) -> None:
    """Raises unless ``value`` is a finite number >= 0 (a loss weight, a weight decay)."""
    require_number(key, value, 0.0)


def require_probability(key: str, value: object) -> None:
    """Raises unless ``value`` is a number in [0, 1] (a probability, a momentum, a share)."""
    require_number(key, value, 0.0, 1.0)


def require_ints(key: str, value: object, minimum: int) -> None:
    """Raises unless ``value`` is a non-empty list of integers, each at least ``minimum``."""
    elements = items(value)
    valid = all(
        isinstance(v, Integral) and not isinstance(v, bool) and v >= minimum for v in elements
    )
    if not elements or not valid:
        raise ConfigError(f"{key}={value!r}; valid: one or more integers >= {minimum}")


def require_each(check: Callable[[str, object], None], prefix: str, **values: object) -> None:
    """``check(f"{prefix}.{name}", value)`` for every keyword:
    ``require_each(require_positive, MODEL, temperature=t, nce_temperature=nce_t)``."""
    for name, value in values.items():
        check(f"{prefix}.{name}", value)


def require_choice(key: str, value: object, choices: Sequence[str]) -> None:
    """Raises unless ``value`` is one of ``choices`` (for Python callers: the CLI's parser
    already refuses other values of a ``Literal`` argument)."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r}; valid: {', '.join(choices)}")
