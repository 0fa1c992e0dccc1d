"""A run's folders as the CLI sees them: the newest ``last.ckpt`` under a run's root, and
what a run that failed before it trained leaves behind (nothing).

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


def version_folders(logs: Path) -> dict[int, Path]:
    """The ``version_N`` folders under ``logs`` by ``N``, in increasing order (Lightning
    numbers them in the order runs start, so a higher ``N`` is a newer run)."""
    found = {
        int(folder.name.removeprefix("version_")): folder
        for folder in logs.glob("version_*")
        if folder.name.removeprefix("version_").isdigit()
    }
    return dict(sorted(found.items()))


def last_checkpoints(logs: Path) -> list[Path]:
    """The ``checkpoints/last.ckpt`` files of the ``version_N`` folders under ``logs``, oldest
    run first."""
    files = [folder / "checkpoints" / "last.ckpt" for folder in version_folders(logs).values()]
    return [file for file in files if file.is_file()]


def newest_last_checkpoint(logs: Path) -> Path | None:
    """The ``last.ckpt`` of the highest ``version_N`` under ``logs`` that has one (each run and
    resume starts a new version, so it is the latest state), or ``None``."""
    files = last_checkpoints(logs)
    return files[-1] if files else None


def logs_folder(trainer_config: dict, checkpoint_dirpath: str | None) -> Path | None:
    """Where a run configured so keeps its ``version_N`` folders: ``<default_root_dir>/
    lightning_logs``, or a ``TensorBoardLogger``'s or ``CSVLogger``'s ``save_dir/name``.

    ``None`` where every run writes its checkpoints to one folder (``checkpoint.dirpath``, or
    no logger: ``<default_root_dir>/checkpoints``), in which Lightning finds ``last`` itself,
    and for other loggers.
    """
    logger = trainer_config.get("logger")
    if checkpoint_dirpath or logger is False:
        return None
    root = trainer_config.get("default_root_dir") or os.getcwd()
    if logger is None or logger is True:
        return Path(root, "lightning_logs")
    if isinstance(logger, dict) and str(logger.get("class_path", "")).endswith(
        ("TensorBoardLogger", "CSVLogger")
    ):
        arguments = logger.get("init_args") or {}
        return Path(arguments.get("save_dir") or root, arguments.get("name") or "lightning_logs")
    return None
