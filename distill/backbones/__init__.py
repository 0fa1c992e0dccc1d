"""Feature extractors by name: ``create_backbone("resnet20")`` returns a module with
``num_features`` whose ``forward`` gives the pooled penultimate embedding ``[B, D]``, and
``backbone_name``, its registry name; ``feature_map`` gives a convolutional backbone's last
feature map, before that pooling; ``forward_stages`` gives its intermediate maps by stage name
with the embedding, in one pass (``distill.backbones.stages``). torchvision's and timm's
classification networks are built by prefixed names, ``torchvision:resnet50`` and
``timm:vit_small_patch16_224`` (``distill.backbones.external``).

Heads are separate modules (``distill.modules``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.backbones.external import create_external, is_external
from distill.checkpoint_io import load_torch_file
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

    ``torchvision:<model>`` and ``timm:<model>`` build that library's model without its
    classifier (random weights), ``kwargs`` going to the library's constructor.

    Raises:
        ConfigError: Unknown name (the message lists the valid ones) or an argument the
            factory does not take (the message lists the ones it does).
    """
    if is_external(name):
        backbone = create_external(name, **kwargs)
        backbone.backbone_name = name
        return backbone
    if name not in _REGISTRY:
        raise ConfigError(
            f"Unknown backbone {name!r}. Available backbones: {', '.join(available_backbones())}"
            ", or torchvision:<model>, timm:<model>"
        )
    factory = _REGISTRY[name]
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"Backbone {name!r} does not take {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'no arguments'}"
        )
    backbone = factory(**kwargs)
    backbone.backbone_name = name
    return backbone


def to_channels_last(network: nn.Module) -> list[nn.Module]:
    """Puts the convolutional backbones in ``network`` (or ``network`` itself) in channels-last.

    In the channels-last (NHWC) memory format oneDNN on CPUs and cuDNN on GPUs (whose tensor
    cores need it) pick faster convolution kernels (``benchmarks/channels_last.py``). Each
    backbone made by ``create_backbone`` gets its 4-d weights converted in place (the same
    parameter objects, so optimisers and EMA copies keep following them) and a forward
    pre-hook that converts 4-d inputs, so its activations are channels-last throughout;
    outputs and gradients are those of the contiguous network up to float rounding. A
    backbone whose class sets ``prefers_channels_last = False`` is left as it is: the ViTs,
    whose one convolution cuts patches that are then reshaped to tokens, which would copy a
    channels-last output back. Converting twice does nothing more.

    Returns:
        The backbones converted by this call.
    """
    converted = []
    for module in network.modules():
        wanted = hasattr(module, "backbone_name") and getattr(module, "prefers_channels_last", True)
        if wanted and not getattr(module, "channels_last", False):
            module.to(memory_format=torch.channels_last)
            module.register_forward_pre_hook(_channels_last_inputs)
            module.channels_last = True
            converted.append(module)
    return converted


def has_feature_map(backbone: nn.Module) -> bool:
    """Whether ``feature_map`` can take ``backbone``'s last feature map."""
    return callable(getattr(backbone, "forward_feature_map", None))


def feature_map(backbone: nn.Module, images: Tensor) -> Tensor:
    """The last feature map ``[B, num_features, h, w]`` of a convolutional backbone, the one
    its ``forward`` pools into the embedding (``backbone(images)`` equals its spatial mean).

    The backbones with one (``forward_feature_map``): the CIFAR ResNets, VGGs, WRNs,
    MobileNetV2 and torchvision's ResNets; not the ViTs, whose output is a class token.

    Raises:
        ConfigError: ``backbone`` has no feature map.
    """
    if not has_feature_map(backbone):
        name = getattr(backbone, "backbone_name", type(backbone).__name__)
        raise ConfigError(
            f"backbone {name!r} has no last feature map to distil (its output is not a "
            "pooled convolutional map); the convolutional backbones have one: the CIFAR "
            "ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4), vgg8/11/13, the WRNs, "
            "mobilenetv2, resnet18 and resnet50"
        )
    return backbone.forward_feature_map(images)


def _channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(
        arg.contiguous(memory_format=torch.channels_last)
        if isinstance(arg, torch.Tensor) and arg.dim() == 4
        else arg
        for arg in args
    )


def load_pretrained(path: str) -> nn.Module:
    """Rebuilds a backbone written by ``distill export`` and loads its weights strictly.

    ``path`` is the state-dict file; its JSON sidecar (the same path with ``.json``) names
    the backbone and its keyword arguments, and records ``num_features`` and the mean, std
    and image size of the data it was trained on (normalise inputs with those).

    Returns:
        The backbone, in eval mode.

    Raises:
        ConfigError: A missing, unreadable or malformed file (the message names it and the
            fault), or weights that do not fit the backbone.
    """
    sidecar = Path(path).with_suffix(".json")
    for file in (Path(path), sidecar):
        if not file.is_file():
            kind = "is a folder, not a file" if file.is_dir() else "does not exist"
            if file == sidecar:
                _read_export_weights(path)  # the likelier mistake, named as such
            raise ConfigError(f"{file} {kind} (distill export writes both files)")
    info = _read_sidecar(sidecar)
    backbone = create_backbone(info["backbone"], **info["kwargs"])
    state = _read_export_weights(path)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(
            f"the weights in {path} do not fit backbone {info['backbone']!r} with "
            f"{info['kwargs']}: {error}"
        ) from error
    return backbone.eval()


def _read_export_weights(path: str) -> object:
    """The state dict in ``path``, which must be an export's, not a training checkpoint's.

    Raises:
        ConfigError: Unreadable, or a training checkpoint (``last.ckpt``) rather than an
            export: the message says how to write one.
    """
    try:
        state = load_torch_file(path)
    except ConfigError as error:
        raise ConfigError(f"cannot read weights: {error}") from error
    if isinstance(state, dict) and "state_dict" in state:
        raise ConfigError(
            f"{path} is a Lightning training checkpoint, not a backbone export: write the "
            "backbone and its sidecar first with `distill export --config <the run's config> "
            f"--ckpt_path {path}`, then load_pretrained the .pt file it writes"
        )
    if not isinstance(state, dict):
        raise ConfigError(
            f"{path} holds a {type(state).__name__}, not a backbone's state dict; write one "
            "with distill export"
        )
    return state


def _read_sidecar(sidecar: Path) -> dict:
    """The sidecar's content, checked to name a backbone (a string) and its kwargs (a dict).

    Raises:
        ConfigError: Unreadable, not JSON, or without those entries.
    """
    fix = "write the pair again with distill export"
    try:
        info = json.loads(sidecar.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {sidecar}: {error.strerror or error}") from error
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise ConfigError(f"{sidecar} is not valid JSON ({error}); {fix}") from error
    if not isinstance(info, dict) or not isinstance(info.get("backbone"), str):
        raise ConfigError(f'{sidecar} names no backbone (a "backbone": "name" entry); {fix}')
    info.setdefault("kwargs", {})
    if not isinstance(info["kwargs"], dict):
        raise ConfigError(f'{sidecar}: "kwargs" is {info["kwargs"]!r}, not an object; {fix}')
    return info


# Importing the modules registers their backbones.
from distill.backbones import (  # noqa: E402, F401
    cifar_resnet,
    mobilenet,
    torchvision_resnet,
    vgg,
    vit,
    wrn,
)
from distill.backbones.stages import (  # noqa: E402
    POOL,
    forward_stages,
    layer_calls,
    stage_names,
    stage_shapes,
)

__all__ = [
    "POOL",
    "available_backbones",
    "create_backbone",
    "feature_map",
    "forward_stages",
    "has_feature_map",
    "layer_calls",
    "load_pretrained",
    "register_backbone",
    "stage_names",
    "stage_shapes",
    "to_channels_last",
]
