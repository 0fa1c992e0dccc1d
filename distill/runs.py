"""A run's folders as the CLI sees them: the newest ``last.ckpt`` under a run's root, what a
run that failed before it trained leaves behind (nothing), and the ``config.yaml`` of a folder
a run comes back to (kept).

Lightning gives every fit, validate and test (and every resume) a new
``<default_root_dir>/lightning_logs/version_N`` folder, except where the version is fixed:
under SLURM its default logger names the folder after the job id, which a requeued job keeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import yaml
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.cli import SaveConfigCallback

from distill.errors import ConfigError


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


def fixed_log_folder(trainer_config: dict) -> Path | None:
    """A run's log folder when its name does not count up: under SLURM, Lightning's default
    logger names it ``version_<SLURM_JOB_ID>`` (which a requeued job keeps); a TensorBoard or
    CSV logger configured with a ``version`` names it after that. ``None`` otherwise."""
    logs = logs_folder(trainer_config, None)
    if logs is None:
        return None
    logger = trainer_config.get("logger")
    if logger in (None, True):
        version = SLURMEnvironment.job_id()  # as Lightning's default logger
    else:
        version = (logger.get("init_args") or {}).get("version")
    if version is None:
        return None
    return logs / (version if isinstance(version, str) else f"version_{version}")


def reuse_problem(config_file: Path, config: str, ckpt_path: str | None) -> str | None:
    """Why a fit with ``config`` (YAML, as LightningCLI saves it) and ``ckpt_path`` cannot go
    on in the log folder whose ``config.yaml`` is ``config_file``, or ``None`` when it can: the
    same config (``ckpt_path`` aside), and the fit resumes from a checkpoint of that folder or
    the folder holds none (nothing to overwrite)."""
    folder = config_file.parent
    saved = _flat(yaml.safe_load(config_file.read_text()) or {})
    now = _flat(yaml.safe_load(config) or {})
    changes = [
        f"{key}: {saved.get(key, '(absent)')!r} -> {now.get(key, '(absent)')!r}"
        for key in [*now, *(key for key in saved if key not in now)]
        if key != "ckpt_path" and saved.get(key) != now.get(key)
    ]
    if changes:
        return (
            f"{folder} is the log folder of a run with another config ({config_file}): "
            f"{'; '.join(changes)}. A folder keeps one run's config; run with that config to "
            "continue it, or write this run elsewhere (another trainer.default_root_dir)"
        )
    resumes_here = ckpt_path is not None and folder.resolve() in Path(ckpt_path).resolve().parents
    if resumes_here or not any(folder.rglob("*.ckpt")):
        return None
    return (
        f"{folder} holds the checkpoints of a run with this config, and this fit would start "
        f"afresh over them; resume it with --ckpt_path {folder / 'checkpoints' / 'last.ckpt'}, "
        "or write this run elsewhere (another trainer.default_root_dir)"
    )


class KeptConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer, for a fit that comes back to its own log folder.

    Lightning refuses any run whose log folder already has a ``config.yaml``, which a folder
    of a fixed name has when a run comes back to it (``fixed_log_folder``: a SLURM job that
    was requeued). Here the fit goes on when ``reuse_problem`` finds none, and the file is
    kept as it is; otherwise a ``ConfigError`` says why. (``distill.cli`` checks the folders
    it can name from the config before anything is built; this is for the others.)
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved or self.overwrite or not self.save_to_log_dir:
            return super().setup(trainer, pl_module, stage)
        path = Path(trainer.log_dir, self.config_filename)
        problem = None  # no config.yaml yet: Lightning's own setup writes it
        if trainer.is_global_zero and path.is_file():
            dump = self.parser.dump(self.config, skip_none=False)
            problem = reuse_problem(path, dump, self.config.get("ckpt_path")) or ""
        problem = trainer.strategy.broadcast(problem)
        if problem is None:
            return super().setup(trainer, pl_module, stage)
        if problem:
            raise ConfigError(problem)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    """``{"trainer.max_epochs": 2, ...}``: a config's entries by dotted key."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
