"""What the commands and ``--ckpt_path`` check first: a checkpoint that can be read and is what
the command needs, outputs that overwrite nothing, and weights that fit the model.

Every refusal is one ``ConfigError`` naming the path and what to do instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from distill.checkpoint_io import load_torch_file
from distill.errors import ConfigError
from distill.modules.weights import read_state_dict, sub_state_dict

#: ``ckpt_path`` values that Lightning resolves itself (the latest, the best, SLURM's).
LIGHTNING_CKPT_PATHS = ("last", "best", "hpc")

#: Subcommands whose ``ckpt_path`` Lightning restores: it must be a Lightning checkpoint.
LIGHTNING_RESTORES = ("fit", "validate", "test", "predict")

#: Where a run's checkpoints are below a folder given as ``--ckpt_path`` (newest version first).
LAST_CHECKPOINTS = (
    "last.ckpt",
    "checkpoints/last.ckpt",
    "version_*/checkpoints/last.ckpt",
    "lightning_logs/version_*/checkpoints/last.ckpt",
)

#: What other weight files are for, for the messages refusing them as ``--ckpt_path``.
OTHER_USES = (
    "A backbone written by distill export loads with distill.backbones.load_pretrained(path); "
    "a trained network's weights become a teacher through model.init_args.teacher_checkpoint."
)


def lightning_resolves(ckpt_path: str) -> bool:
    """Whether ``ckpt_path`` is a value Lightning gives a meaning to, not a local file:
    ``last``, ``best``, ``hpc``, ``registry[:name]`` or a URL (``s3://...``)."""
    text = str(ckpt_path)
    lowered = text.lower()
    return (
        text in LIGHTNING_CKPT_PATHS
        or lowered == "registry"
        or lowered.startswith("registry:")
        or "://" in text
    )


def checkpoint_file(ckpt_path: str | None) -> Path:
    """``ckpt_path`` as a path, checked to be a file.

    Raises:
        ConfigError: No path given, nothing there (the message says whether its folder is gone
            too), or a folder (the message suggests the newest ``last.ckpt`` inside).
    """
    if not ckpt_path:
        raise ConfigError("--ckpt_path is required: the checkpoint to read")
    path = Path(ckpt_path)
    if path.is_dir():
        raise ConfigError(_folder_message(path))
    if not path.is_file():
        folder = path.parent
        gone = "" if folder.is_dir() else f" (its folder {folder} is gone too: moved or deleted?)"
        raise ConfigError(f"--ckpt_path {ckpt_path}: no such checkpoint file{gone}")
    return path


def _folder_message(folder: Path) -> str:
    found = [path for pattern in LAST_CHECKPOINTS for path in folder.glob(pattern)]
    found = found or sorted([*folder.glob("*.ckpt"), *folder.glob("checkpoints/*.ckpt")])
    found = [path for path in found if path.is_file()]
    if not found:
        return (
            f"--ckpt_path {folder} is a folder, not a checkpoint file, and holds no checkpoint "
            f"(looked for {', '.join(LAST_CHECKPOINTS)} and *.ckpt); give a .ckpt file"
        )
    # The highest version is the latest state: every run and resume starts a new one.
    suggestion = max(found, key=lambda path: (_version_number(path), path.name == "last.ckpt"))
    return (
        f"--ckpt_path {folder} is a folder, not a checkpoint file; did you mean "
        f"--ckpt_path {suggestion}?"
    )


def _version_number(path: Path) -> int:
    """N of the ``version_N`` folder ``path`` is in, or -1."""
    for part in reversed(path.parts):
        number = part.removeprefix("version_")
        if part.startswith("version_") and number.isdigit():
            return int(number)
    return -1


def read_checkpoint(ckpt_path: str) -> Any:
    """The file ``--ckpt_path`` names, loaded with its tensors memory-mapped.

    Raises:
        ConfigError: What ``checkpoint_file`` and ``load_torch_file`` refuse: missing, a
            folder, truncated or corrupt.
    """
    path = checkpoint_file(ckpt_path)
    try:
        return load_torch_file(path, mmap=True)
    except ConfigError as error:
        raise ConfigError(f"--ckpt_path {error}") from error


def check_restorable(saved: Any, ckpt_path: str, subcommand: str) -> None:
    """Checks that Lightning can restore ``saved`` for ``subcommand``.

    ``fit``, ``validate`` and ``test`` hand ``--ckpt_path`` to Lightning, which needs a
    Lightning checkpoint (and ``fit`` one with the optimiser and loop state); ``eval`` and
    ``export`` read the weights themselves (``backbone_state``) and pass here.

    Raises:
        ConfigError: A file that is not what ``subcommand`` needs (the message says what it
            holds and what reads it).
    """
    if subcommand not in LIGHTNING_RESTORES:
        return
    if not isinstance(saved, dict) or not {"pytorch-lightning_version", "state_dict"} <= set(saved):
        raise ConfigError(
            f"--ckpt_path {ckpt_path} holds {describe_contents(saved)}, not a Lightning "
            f"checkpoint: distill {subcommand} restores one written by distill fit "
            f"(lightning_logs/version_*/checkpoints/*.ckpt). {OTHER_USES}"
        )
    if subcommand == "fit" and "optimizer_states" not in saved:
        raise ConfigError(
            f"--ckpt_path {ckpt_path} holds weights only (saved with save_weights_only: no "
            "optimiser or loop state), so a fit cannot resume from it; evaluate it with "
            "distill validate or distill eval, or export its backbone with distill export"
        )


def describe_contents(saved: Any) -> str:
    """What a loaded file holds, in a few words: ``a plain state dict (62 tensors; keys like
    conv1.weight, bn1.weight, ...)``."""
    if not isinstance(saved, dict):
        return f"a {type(saved).__name__}"
    state = saved.get("state_dict")
    nested = isinstance(state, dict)
    state = state if nested else saved
    tensors = [str(key) for key, value in state.items() if isinstance(value, torch.Tensor)]
    if not tensors:
        return f"a dict with keys {_show([str(key) for key in saved], 5)}"
    kind = "weights under 'state_dict' without training state" if nested else "a plain state dict"
    return f"{kind} ({len(tensors)} tensors; keys like {_show(tensors, 3)})"


def _show(keys: Sequence[str], count: int = 10) -> str:
    more = f", ... (+{len(keys) - count})" if len(keys) > count else ""
    return ", ".join(keys[:count]) + more


def submodule_backbone(model: L.LightningModule, submodule: str) -> nn.Module:
    """The backbone of ``model``'s ``submodule`` (already checked to exist).

    Raises:
        ConfigError: The submodule has no ``backbone``.
    """
    backbone = getattr(getattr(model, submodule), "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"{type(model).__name__}.{submodule} has no backbone")
    return backbone


def backbone_state(ckpt_path: str, submodule: str) -> dict[str, torch.Tensor]:
    """The checkpoint's ``{submodule}.backbone.*`` weights with that prefix stripped (and
    ``torch.compile``'s ``_orig_mod.``): the backbone's own keys.

    Raises:
        ConfigError: The file cannot be read, or holds no such weights (the message says what
            it holds instead).
    """
    prefix = f"{submodule}.backbone."
    path = checkpoint_file(ckpt_path)
    state = read_state_dict(str(path))
    weights = sub_state_dict(state, prefix)
    if not weights and submodule == "teacher":
        saved = load_torch_file(path, mmap=True)
        record = saved.get("teacher") if isinstance(saved, dict) else None
        if isinstance(record, dict) and record.get("in_checkpoint") is False:
            raise ConfigError(
                f"--ckpt_path {ckpt_path} holds no teacher: it was written with "
                "model.init_args.teacher.in_checkpoint: false, so the frozen teacher's "
                f"weights are its own ({record.get('source')}); use them directly, or export "
                "the student"
            )
    if not weights:
        raise ConfigError(
            f"--ckpt_path {ckpt_path} holds no {prefix}* weights: it holds "
            f"{describe_contents(state)}. distill eval and export read a checkpoint of a "
            f"distill run (lightning_logs/version_*/checkpoints/*.ckpt). {OTHER_USES}"
        )
    return weights


def check_outputs(outputs: Sequence[Path], ckpt_path: str, overwrite: bool) -> None:
    """Refuses outputs that would overwrite what the user has.

    Never the checkpoint being read (any path to the same file) nor any other checkpoint,
    not even with ``overwrite``; an existing file of another kind (an earlier export or
    results file) only with ``overwrite``.

    Raises:
        ConfigError: An output that would overwrite something, naming it and what to do.
    """
    for output in outputs:
        if output.is_dir():
            raise ConfigError(f"--output {output} is a folder; give a file name")
        if not output.exists():
            continue
        if os.path.samefile(output, ckpt_path):
            raise ConfigError(
                f"--output {output} is the checkpoint being read (--ckpt_path {ckpt_path}); "
                "choose another --output"
            )
        if _is_checkpoint(output):
            raise ConfigError(
                f"{output} is a checkpoint; distill never writes over one, not even with "
                "--overwrite: choose another --output"
            )
        if not overwrite:
            raise ConfigError(
                f"{output} already exists; pass --overwrite true to replace it, or choose "
                "another --output"
            )


def _is_checkpoint(path: Path) -> bool:
    if path.suffix == ".ckpt":
        return True
    try:
        saved = load_torch_file(path, mmap=True)
    except ConfigError:
        return False  # not a torch file at all
    return isinstance(saved, dict) and "pytorch-lightning_version" in saved


@contextlib.contextmanager
def weights_must_fit(trainer: L.Trainer, model: nn.Module) -> Iterator[None]:
    """Turns the error of Lightning's strict restore of ``trainer.ckpt_path`` into a
    ``ConfigError`` listing the keys that do not fit ``model``.

    Lightning lets torch's ``RuntimeError`` through, whose message lists every key over
    many lines; here the missing, unexpected and mismatched keys are listed (the first ten
    of each) in one.
    """
    try:
        yield
    except RuntimeError as error:
        if "Error(s) in loading state_dict" not in str(error):
            raise
        ckpt_path = trainer.ckpt_path
        try:
            saved = load_torch_file(ckpt_path, mmap=True)["state_dict"]
            detail = state_mismatch(model.state_dict(), saved)
        except (ConfigError, KeyError, TypeError):
            detail = str(error).strip().splitlines()[0]  # a remote or odd file: torch's words
        raise ConfigError(
            f"the weights in {ckpt_path} do not fit the configured model (same method, "
            f"backbone and sizes as the run that wrote it?): {detail}"
        ) from error


def state_mismatch(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
    """``missing keys [...]; unexpected keys [...]; shape mismatches [...]`` of ``saved``
    against ``own`` (empty parts left out, ten keys of each at most)."""
    missing = [key for key in own if key not in saved]  # in the model's order
    unexpected = [key for key in saved if key not in own]
    mismatched = [
        f"{key} {tuple(saved[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in saved and saved[key].shape != own[key].shape
    ]
    parts = [
        f"{name} [{_show(keys)}]"
        for name, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    return "; ".join(parts) or "the keys and shapes match, but loading failed"
