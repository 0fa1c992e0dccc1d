"""A run's folders as the CLI sees them: what a run that failed before it trained leaves
behind (nothing).

Lightning gives every fit, validate and test (and every resume) a new
``<default_root_dir>/lightning_logs/version_N`` folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import lightning as L


class TrainingStarted(L.Callback):
    """Notes whether a training batch of this fit started (``removed_unless_started``)."""

    def __init__(self) -> None:
        self.started = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.started = True


@contextlib.contextmanager
def removed_unless_started(trainer: L.Trainer) -> Iterator[None]:
    """Removes what a fit, validate or test that fails before its first training batch (a
    data error, weights that do not fit, a full disk, a signal during the sanity check) left:
    the log folder it created (``version_N`` with ``config.yaml`` and an event file), unless
    it holds a checkpoint, and the folders above it that it created and left empty, so that
    retries do not add versions. Nothing that existed before the run is removed, nor anything
    of a fit that started training (``TrainingStarted``: the logs of a run that went
    non-finite show why); rank 0 only.
    """
    roots = {
        logger: Path(logger.root_dir)
        for logger in trainer.loggers
        if isinstance(getattr(logger, "root_dir", None), str) and "://" not in logger.root_dir
    }
    existed = {root: set(os.listdir(root)) if root.is_dir() else set() for root in roots.values()}
    created = {
        root: [folder for folder in (root, *root.parents) if not folder.exists()]
        for root in roots.values()
    }
    try:
        yield
    except BaseException:
        started = any(c.started for c in trainer.callbacks if isinstance(c, TrainingStarted))
        if trainer.is_global_zero and not started:
            for logger, root in roots.items():
                _remove_new_log_folder(Path(logger.log_dir), root, existed[root], created[root])
        raise


def _remove_new_log_folder(
    log_dir: Path, root: Path, existed: set[str], created: list[Path]
) -> None:
    """Removes ``log_dir`` (a folder of ``root`` not among ``existed``) unless it holds a
    checkpoint, then the ``created`` folders left empty, deepest first."""
    if log_dir.parent != root or log_dir.name in existed or not log_dir.is_dir():
        return
    if any(log_dir.rglob("*.ckpt")):
        return
    shutil.rmtree(log_dir, ignore_errors=True)
    for folder in created:
        try:
            folder.rmdir()  # only an empty one
        except OSError:
            return
