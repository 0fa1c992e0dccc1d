"""Checks of DataModule and view-recipe arguments, made by their constructors.

A bad value is one ``ConfigError`` naming its configuration key and what would be valid
(``data.init_args.batch_size=0; valid: an integer >= 1``), raised while the CLI builds the
objects, before a run folder, a log or a checkpoint is written, instead of a traceback from
a DataLoader or a transform later on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

from distill.errors import ConfigError

#: Where the CLI's configuration holds the DataModule's and the view recipe's arguments.
DATA = "data.init_args"
VIEWS = f"{DATA}.views.init_args"


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _items(value: object) -> tuple:
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()


def _within(value: object, low: float, high: float, low_open: bool) -> bool:
    return _is_number(value) and (low < value if low_open else low <= value) and value <= high


def _range(low: float, high: float, low_open: bool) -> str:
    """``low`` to ``high`` in words: "in [0, 1]", "in (0, 1]", "> 0", ">= 0" or ""."""
    if math.isinf(high):
        return "" if math.isinf(low) else f"{'>' if low_open else '>='} {low:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}]"


def require_int(key: str, value: object, minimum: int) -> None:
    """Raises unless ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{key}={value!r}; valid: an integer >= {minimum}")


def require_number(
    key: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
) -> None:
    """Raises unless ``value`` is a finite number in ``[low, high]`` (``(low, high]`` if
    ``low_open``)."""
    if not _within(value, low, high, low_open):
        raise ConfigError(f"{key}={value!r}; valid: a number {_range(low, high, low_open)}".strip())


def require_numbers(
    key: str,
    value: object,
    count: int,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
) -> None:
    """Raises unless ``value`` holds ``count`` numbers, each as ``require_number`` asks."""
    items = _items(value)
    if len(items) != count or not all(_within(v, low, high, low_open) for v in items):
        within = _range(low, high, low_open)
        raise ConfigError(f"{key}={value!r}; valid: {count} numbers{' ' * bool(within)}{within}")


def require_probability(key: str, value: object) -> None:
    """Raises unless ``value`` is a probability, a number in [0, 1]."""
    require_number(key, value, 0.0, 1.0)


def require_scale(key: str, value: object) -> None:
    """Raises unless ``value`` is an area fraction range ``(min, max)``, ``0 < min <= max <= 1``."""
    pair = _items(value)
    if not (len(pair) == 2 and all(_is_number(v) for v in pair) and 0 < pair[0] <= pair[1] <= 1):
        raise ConfigError(
            f"{key}={value!r}; valid: two area fractions [min, max] with 0 < min <= max <= 1"
        )
