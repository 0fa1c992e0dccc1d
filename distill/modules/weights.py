"""Loading a trained network (a teacher, usually) from a checkpoint or a state dict."""

from __future__ import annotations

import os

import torch
from torch import nn

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
    if not os.path.isfile(path):
        raise ConfigError(f"weights file {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
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
