"""Loading a trained network (a teacher, usually) from a checkpoint or a state dict."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from distill.checkpoint_io import load_torch_file
from distill.errors import ConfigError


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


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state)`` with one message listing every key that does not fit.

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

        raise ConfigError(
            f"weights in {source} do not fit the {type(module).__name__}: "
            f"missing keys [{show(missing)}]; unexpected keys [{show(unexpected)}]; "
            f"shape mismatches [{show(mismatched)}]. Check the backbone name and num_classes."
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
    """The checkpoint file ``path`` stands for: ``path`` itself, or a run directory's newest
    ``last.ckpt``; logs which file it is and what it holds.

    A run directory is what a config's ``trainer.default_root_dir`` names (e.g.
    ``runs/cifar10-5k/supervised_resnet20``). Its ``last.ckpt`` files are under
    ``lightning_logs/version_*/checkpoints/``, and the one taken is that of the highest
    version number: Lightning numbers versions in the order runs start and every resume
    starts a new one, so the highest holds the latest state. File times are not used
    because copying or unpacking a run can change them; versions without a ``last.ckpt``
    (a ``validate``) are skipped.

    Logs (rank zero) the file, its epoch, global step and the best value of its checkpoint
    callback's monitor when it has one, and warns when a ``last.ckpt`` is of a run that
    has not finished: interrupted, or fewer epochs than the ``max_epochs`` in the
    ``config.yaml`` (or ``hparams.yaml``) of its version.

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
        path = _newest_last_checkpoint(path)
    _describe_checkpoint(path)
    return path


def _newest_last_checkpoint(run_dir: str) -> str:
    logs = Path(run_dir, "lightning_logs")
    versions = {
        int(folder.name.removeprefix("version_")): folder
        for folder in logs.glob("version_*")
        if folder.name.removeprefix("version_").isdigit()
    }
    found = sorted(
        (number, folder / "checkpoints" / "last.ckpt")
        for number, folder in versions.items()
        if (folder / "checkpoints" / "last.ckpt").is_file()
    )
    if not found:
        seen = ", ".join(versions[n].name for n in sorted(versions)) or "no version_* folder"
        raise ConfigError(
            f"run directory {run_dir!r} has no last.ckpt: searched "
            f"{logs / 'version_*' / 'checkpoints' / 'last.ckpt'} (found {seen}). Train the "
            "run first (its trainer.default_root_dir), or give a checkpoint file."
        )
    return str(found[-1][1])


def _describe_checkpoint(path: str) -> None:
    try:  # memory-mapped: only the small entries read here are loaded
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return  # not a readable zip checkpoint: read_state_dict reports it
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
        return  # a plain state dict
    epoch, step = checkpoint["epoch"], checkpoint.get("global_step", 0)
    states = [s for s in checkpoint.get("callbacks", {}).values() if isinstance(s, dict)]
    best = next((s for s in states if s.get("best_model_score") is not None), None)
    interrupted = next((s["interrupted"] for s in states if s.get("interrupted")), None)
    metric = ""
    if best is not None:
        name = os.path.basename(best.get("best_model_path") or "") or "?"
        metric = f", best {best.get('monitor')} {float(best['best_model_score']):.4f} ({name})"
    rank_zero_info(f"Loading weights from {path}: epoch={epoch}, global step {step}{metric}")
    if os.path.basename(path) != "last.ckpt":
        return  # another checkpoint (e.g. the best epoch) was chosen on purpose
    version_dir = Path(path).parent.parent
    max_epochs, max_steps = _planned_length(version_dir)
    # ``epoch`` counts from 0 and is saved at an epoch's end before the count moves on.
    done = epoch if interrupted else epoch + 1
    ended_by_steps = max_steps is not None and 0 < max_steps <= step
    short = max_epochs is not None and done < max_epochs and not ended_by_steps
    if interrupted or short:
        how = f"interrupted by {interrupted.get('signal')}, " if interrupted else ""
        count = f"{done} of {max_epochs} epochs" if (max_epochs or 0) > 0 else f"{done} epochs"
        rank_zero_warn(
            f"{path} is of an unfinished run: {how}{count} done, global step {step}. "
            f"Resume the run with --ckpt_path {path}, or load another checkpoint."
        )


def _planned_length(version_dir: Path) -> tuple[int | None, int | None]:
    """``(max_epochs, max_steps)`` of the run that wrote ``version_dir``, when recorded."""
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
    return None, None
