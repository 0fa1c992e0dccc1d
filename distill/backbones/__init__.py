"""Feature extractors by name: ``create_backbone("resnet20")`` returns a module with
``num_features`` whose ``forward`` gives the pooled penultimate embedding ``[B, D]``.

Heads are separate modules (``distill.modules``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from distill.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable:
    """Decorator registering a backbone factory under ``name``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def available_backbones() -> list[str]:
    """Sorted names of all registered backbones."""
    return sorted(_REGISTRY)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Builds the backbone ``name`` with the factory's keyword arguments.

    Raises:
        ConfigError: Unknown name (the message lists the valid ones) or an argument the
            factory does not take (the message lists the ones it does).
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"Unknown backbone {name!r}. Available backbones: {', '.join(available_backbones())}"
        )
    factory = _REGISTRY[name]
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"Backbone {name!r} does not take {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'no arguments'}"
        )
    return factory(**kwargs)


def load_pretrained(path: str) -> nn.Module:
    """Rebuilds a backbone written by ``distill export`` and loads its weights strictly.

    ``path`` is the state-dict file; its JSON sidecar (the same path with ``.json``) names
    the backbone and its keyword arguments, and records ``num_features`` and the mean, std
    and image size of the data it was trained on (normalise inputs with those).

    Returns:
        The backbone, in eval mode.

    Raises:
        ConfigError: A missing or unreadable file, or weights that do not fit the backbone.
    """
    sidecar = Path(path).with_suffix(".json")
    for file in (Path(path), sidecar):
        if not file.is_file():
            raise ConfigError(f"{file} does not exist (distill export writes both files)")
    info = json.loads(sidecar.read_text())
    backbone = create_backbone(info["backbone"], **info.get("kwargs", {}))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"cannot read weights from {path}: {error}") from error
    try:
        backbone.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(
            f"the weights in {path} do not fit backbone {info['backbone']!r} with "
            f"{info.get('kwargs', {})}: {error}"
        ) from error
    return backbone.eval()


# Importing the modules registers their backbones.
from distill.backbones import (  # noqa: E402, F401
    cifar_resnet,
    mobilenet,
    torchvision_resnet,
    vgg,
    vit,
    wrn,
)

__all__ = ["available_backbones", "create_backbone", "load_pretrained", "register_backbone"]
