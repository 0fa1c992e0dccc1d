"""What both commands check first: the checkpoint exists, and its weights fit the model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from distill.errors import ConfigError


def checkpoint_file(ckpt_path: str | None) -> Path:
    """``ckpt_path`` as a path, checked to be a file.

    Raises:
        ConfigError: No path given, or no file there.
    """
    if not ckpt_path:
        raise ConfigError("--ckpt_path is required: the checkpoint to read")
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    return path


@contextlib.contextmanager
def weights_must_fit(ckpt_path: str) -> Iterator[None]:
    """Turns the error of a strict ``load_state_dict`` within the block into a ``ConfigError``.

    Lightning restores a checkpoint strictly and lets torch's ``RuntimeError`` through; its
    message lists the missing, unexpected and mismatched keys, which is what to print.
    """
    try:
        yield
    except RuntimeError as error:
        if "Error(s) in loading state_dict" not in str(error):
            raise
        raise ConfigError(
            f"the weights in {ckpt_path} do not fit the configured model (same method, "
            f"backbone and sizes as the run that wrote it?): {error}"
        ) from error
