"""Checks of DataModule and view-recipe arguments, made by their constructors.

A bad value is one ``ConfigError`` naming its configuration key and what would be valid
(``data.init_args.batch_size=0; valid: an integer >= 1``), raised while the CLI builds the
objects, before a run folder, a log or a checkpoint is written, instead of a traceback from
a DataLoader or a transform later on.
"""

from __future__ import annotations

from distill.arguments import (  # noqa: F401  (the data's checks are the shared ones)
    is_number,
    items,
    require_int,
    require_number,
    require_numbers,
    require_probability,
)
from distill.errors import ConfigError

#: Where the CLI's configuration holds the DataModule's and the view recipe's arguments.
DATA = "data.init_args"
VIEWS = f"{DATA}.views.init_args"


def require_scale(key: str, value: object) -> None:
    """Raises unless ``value`` is an area fraction range ``(min, max)``, ``0 < min <= max <= 1``."""
    pair = items(value)
    if not (len(pair) == 2 and all(is_number(v) for v in pair) and 0 < pair[0] <= pair[1] <= 1):
        raise ConfigError(
            f"{key}={value!r}; valid: two area fractions [min, max] with 0 < min <= max <= 1"
        )
