"""Loading a trained network (a teacher, usually) from a checkpoint or a state dict."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from distill.checkpoint_io import load_torch_file
from distill.errors import ConfigError
from distill.runs import last_checkpoints, version_folders


def _extract_state_dict(obj: object) -> dict[str, torch.Tensor]:
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ConfigError("expected a Lightning checkpoint or a state dict")
    # A torch.compile'd module saves its weights under "_orig_mod." (at any depth).
    return {key.replace("_orig_mod.", ""): value for key, value in state.items()}


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a Lightning checkpoint, or the file's own state dict, with the
    ``_orig_mod.`` prefixes of ``torch.compile``d modules stripped.

    Raises:
        ConfigError: The file is missing, unreadable or holds neither.
    """
    if not os.path.exists(path):
        raise ConfigError(f"weights file {path!r} does not exist")
    try:
        obj = load_torch_file(path)  # one message for a folder, a truncated or corrupt file
    except ConfigError as error:
        raise ConfigError(f"cannot read weights: {error}") from error
    try:
        return _extract_state_dict(obj)
    except Exception as error:
        raise ConfigError(f"cannot read weights from {path!r}: {error}") from error


def sub_state_dict(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with the prefix stripped."""
    return {key[len(prefix) :]: v for key, v in state.items() if key.startswith(prefix)}


#: What to check when a projection head does not fit (its keys, or a whole head's).
HEAD_HINT = (
    "Only the head does not fit: give it the file's widths (a projection head: "
    "teacher_proj_hidden_dim and teacher_proj_dim, or the method's proj_hidden_dim and "
    "proj_dim; a classifier: num_classes)."
)


def load_state_strict(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, head: bool = False
) -> None:
    """``module.load_state_dict(state)`` with one message listing every key that does not fit.

    Args:
        head: ``module`` is a projection head: the message says to check its widths (as it
            does when only ``head.*`` keys of a network do not fit), not the backbone name.

    Raises:
        ConfigError: Missing, unexpected or mismatched keys (``source`` names the file).
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    if missing or unexpected or mismatched:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10})" if len(keys) > 10 else "")

        wrong = [*missing, *unexpected, *(entry.split(" ")[0] for entry in mismatched)]
        in_head = head or all(key.startswith("head.") for key in wrong)
        raise ConfigError(
            f"weights in {source} do not fit the {type(module).__name__}: "
            f"missing keys [{show(missing)}]; unexpected keys [{show(unexpected)}]; "
            f"shape mismatches [{show(mismatched)}]. "
            + (HEAD_HINT if in_head else "Check the backbone name and num_classes.")
        )
    module.load_state_dict(state)


def load_weights(module: nn.Module, path: str, prefix: str = "student.") -> nn.Module:
    """Loads ``module``'s weights from a file, strictly.

    The file may be a Lightning checkpoint of a ``Supervised`` run (its ``student.*``
    entries are used) or a plain state dict of the module (as saved by
    ``torch.save(module.state_dict(), path)``).

    Args:
        module: The network to fill, e.g. ``Classifier(create_backbone("resnet56"), 100)``.
        path: Checkpoint or state-dict file.
        prefix: Key prefix to take and strip when present (``"student."``, ``"teacher."``).

    Raises:
        ConfigError: The file is missing or unreadable, or its keys or shapes differ from the
            module's (the message lists the missing, unexpected and mismatched keys).
    """
    state = read_state_dict(path)
    if any(key.startswith(prefix) for key in state):
        state = sub_state_dict(state, prefix)
    load_state_strict(module, state, repr(path))
    return module


def resolve_checkpoint(path: str) -> str:
    """The checkpoint file ``path`` stands for: ``path`` itself, or the ``last.ckpt`` of a run
    directory's newest finished run; logs which file it is and what it holds.

    A run directory is what a config's ``trainer.default_root_dir`` names (e.g.
    ``runs/cifar10-5k/supervised_resnet20``). Each fit, and each resume of one, is a run with
    its own ``lightning_logs/version_N/checkpoints/last.ckpt``; Lightning numbers versions in
    the order runs start, so a higher ``N`` is a newer run (file times are not used because
    copying or unpacking a run changes them). Versions without a ``last.ckpt`` (a
    ``validate``) are no runs to choose from.

    A run is finished when its ``last.ckpt`` is not of an interrupted run and it reached the
    ``max_epochs`` or ``max_steps`` of its version's ``config.yaml`` (or ``hparams.yaml``);
    when neither file records them, only an interruption makes a run unfinished. The run
    taken is the newest finished one, so a run interrupted, still training or stopped early
    beside a finished one is passed over. The candidates (each version: epochs done of
    planned, global step, finished or not) and the one taken are logged, and a warning
    names them when the choice may not be the run meant:

    - no run is finished: the newest readable run is taken;
    - the run taken trained for less than half the optimiser steps of another candidate
      (e.g. a 1-epoch smoke run added to a teacher's directory after the real one).

    To take another run, give its ``last.ckpt`` (or any checkpoint file) instead of the
    directory. A checkpoint file is used as given; a ``last.ckpt`` given so is still checked,
    and warned about when its run is unfinished.

    Raises:
        ConfigError: ``path`` does not exist, or is a directory with no ``last.ckpt`` where
            one is looked for.
    """
    if not os.path.exists(path):
        raise ConfigError(
            f"{path!r} does not exist: give a run directory (a trainer.default_root_dir "
            "holding lightning_logs/version_*/checkpoints/last.ckpt) or a checkpoint file."
        )
    if os.path.isdir(path):
        path = str(_choose_run(path))
    elif os.path.basename(path) == "last.ckpt":
        run = _read_run(Path(path))
        if run is not None and not run.finished:
            rank_zero_warn(
                f"{path} is of an unfinished run: {run.progress()}. Resume the run with "
                f"--ckpt_path {path}, or load another checkpoint."
            )
    _log_contents(path)
    return path


#: A run taken from a directory is "much shorter" than another below this share of its steps.
MUCH_SHORTER = 0.5


@dataclass(frozen=True)
class _Run:
    """What a version's ``last.ckpt`` and config say about the run that wrote them."""

    path: Path
    epochs: int  # completed epochs (an interrupted one does not count)
    step: int
    planned_epochs: int | None  # None: not recorded, or no limit
    planned_steps: int | None
    interrupted: str | None  # the signal
    finished: bool

    @property
    def version(self) -> str:
        return self.path.parent.parent.name

    def progress(self) -> str:
        """E.g. ``interrupted by SIGTERM, 12 of 40 epochs, global step 120``."""
        epochs = f" of {self.planned_epochs}" if self.planned_epochs is not None else ""
        steps = f" of {self.planned_steps}" if self.planned_steps is not None else ""
        state = f"interrupted by {self.interrupted}, " if self.interrupted else ""
        return f"{state}{self.epochs}{epochs} epochs, global step {self.step}{steps}"

    def summary(self) -> str:
        """E.g. ``version_1 (1 of 1 epochs, global step 44, finished)``."""
        return f"{self.version} ({self.progress()}, {'' if self.finished else 'un'}finished)"


def _choose_run(run_dir: str) -> Path:
    """The run ``resolve_checkpoint`` takes from ``run_dir``, logged and warned about."""
    logs = Path(run_dir, "lightning_logs")
    files = last_checkpoints(logs)
    if not files:
        seen = ", ".join(f.name for f in version_folders(logs).values()) or "no version_* folder"
        raise ConfigError(
            f"run directory {run_dir!r} has no last.ckpt: searched "
            f"{logs / 'version_*' / 'checkpoints' / 'last.ckpt'} (found {seen}). Train the "
            "run first (its trainer.default_root_dir), or give a checkpoint file."
        )
    read = [(file, _read_run(file)) for file in files]
    runs = [run for _, run in read if run is not None]
    if not runs:  # nothing to compare: reading the newest reports what is wrong with it
        return files[-1]
    candidates = "; ".join(
        run.summary() if run else f"{file.parent.parent.name} (unreadable last.ckpt)"
        for file, run in read
    )
    finished = [run for run in runs if run.finished]
    taken = (finished or runs)[-1]
    longest = max(runs, key=lambda run: run.step)
    if not finished:
        rank_zero_warn(
            f"run directory {run_dir} has no finished run; taking the newest, {taken.version} "
            f"({taken.progress()}). Runs: {candidates}. Finish it with --ckpt_path "
            f"{taken.path}, or give the checkpoint file of the run you mean instead of the "
            "directory."
        )
    elif taken.step < MUCH_SHORTER * longest.step:
        rank_zero_warn(
            f"run directory {run_dir}: taking its newest finished run, {taken.version} "
            f"({taken.progress()}), although {longest.version} trained far longer "
            f"({longest.progress()}); if you meant that one, give its file instead of the "
            f"directory: {longest.path}. Runs: {candidates}."
        )
    else:
        rank_zero_info(
            f"run directory {run_dir}: taking its newest finished run, {taken.version}. "
            f"Runs: {candidates}."
        )
    return taken.path


def _read_run(path: Path) -> _Run | None:
    """The run whose ``last.ckpt`` is ``path``; ``None`` when unreadable or no checkpoint."""
    try:  # memory-mapped: only the small entries read here are loaded
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
        return None
    epoch, step = int(checkpoint["epoch"]), int(checkpoint.get("global_step", 0))
    states = [s for s in checkpoint.get("callbacks", {}).values() if isinstance(s, dict)]
    interrupted = next((s["interrupted"] for s in states if s.get("interrupted")), None)
    # ``epoch`` counts from 0 and is saved at an epoch's end before the count moves on.
    epochs = epoch if interrupted else epoch + 1
    signal = None if interrupted is None else str(interrupted.get("signal") or "a signal")
    plan = _planned_length(path.parent.parent)
    if plan is None:  # not recorded: only an interruption tells
        return _Run(path, epochs, step, None, None, signal, interrupted is None)
    max_epochs, max_steps = plan
    max_steps = max_steps if (max_steps or -1) > 0 else None
    if max_epochs is None:  # Lightning's defaults: 1000 epochs, no limit beside max_steps
        max_epochs = -1 if max_steps else 1000
    planned_epochs = max_epochs if max_epochs >= 0 else None
    reached = (max_steps is not None and step >= max_steps) or 0 <= max_epochs <= epochs
    finished = reached and interrupted is None
    return _Run(path, epochs, step, planned_epochs, max_steps, signal, finished)


def _log_contents(path: str) -> None:
    try:  # memory-mapped: only the small entries read here are loaded
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return  # not a readable zip checkpoint: read_state_dict reports it
    if not isinstance(checkpoint, dict) or not {"epoch", "global_step"} <= checkpoint.keys():
        return  # a plain state dict, or another library's file (the load report follows)
    epoch, step = checkpoint["epoch"], checkpoint["global_step"]
    states = [s for s in checkpoint.get("callbacks", {}).values() if isinstance(s, dict)]
    best = next((s for s in states if s.get("best_model_score") is not None), None)
    metric = ""
    if best is not None:
        name = os.path.basename(best.get("best_model_path") or "") or "?"
        metric = f", best {best.get('monitor')} {float(best['best_model_score']):.4f} ({name})"
    rank_zero_info(f"Loading weights from {path}: epoch={epoch}, global step {step}{metric}")


def _planned_length(version_dir: Path) -> tuple[int | None, int | None] | None:
    """``(max_epochs, max_steps)`` of the run that wrote ``version_dir``; ``None`` when not
    recorded (a run's ``config.yaml`` records both, perhaps as null)."""
    for name in ("config.yaml", "hparams.yaml"):
        try:
            config = yaml.safe_load((version_dir / name).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(config, dict):
            continue
        trainer = config.get("trainer") or config
        if isinstance(trainer, dict) and "max_epochs" in trainer:
            return trainer.get("max_epochs"), trainer.get("max_steps")
    return None
