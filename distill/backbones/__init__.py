"""Feature extractors by name: ``create_backbone("resnet20")`` returns a module with
``num_features`` whose ``forward`` gives the pooled penultimate embedding ``[B, D]``.

Heads are separate modules (``distill.modules``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

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


# Importing the modules registers their backbones.
from distill.backbones import (  # noqa: E402, F401
    cifar_resnet,
    mobilenet,
    torchvision_resnet,
    vgg,
    vit,
    wrn,
)

__all__ = ["available_backbones", "create_backbone", "register_backbone"]
