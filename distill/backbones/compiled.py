"""``torch.compile`` for the backbones in a network, leaving the network's modules, state dict
and hooks as they are: ``compile_backbones(method)``."""

from __future__ import annotations

import types
from typing import Literal, get_args

import torch
from torch import nn

#: The ``mode`` values of ``torch.compile`` (its inductor backend's presets).
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)


def compile_backbones(
    network: nn.Module, mode: str | None = None, backend: str = "inductor"
) -> list[nn.Module]:
    """Compiles the ``forward`` of each backbone in ``network`` (or ``network`` itself).

    The backbones are the modules ``create_backbone`` made (those with a ``backbone_name``),
    where nearly all of a method's arithmetic runs; heads, losses and state updates stay
    eager. Rather than wrapping a backbone in ``torch.compile``'s ``OptimizedModule``, which
    would prefix its state-dict keys with ``_orig_mod.``, or compiling its ``__call__``
    (``nn.Module.compile``), which would trace the forward hooks into the graph (a method's
    per-step feature hooks, new at every step, would recompile it every step until torch
    gives up and runs it eagerly), each backbone's own ``forward`` becomes
    the compiled class function bound to it. So the state dict, the parameters (the same
    objects, for optimisers and EMA copies) and the hooks are untouched, a ``copy.deepcopy``
    of the backbone binds the compiled function to the copy, and checkpoints load into eager
    and compiled models alike. Calls other than ``forward`` (``forward_feature_map``,
    ``forward_stages``) stay eager. Compiling twice does nothing more.

    Args:
        network: The module whose backbones are compiled.
        mode: ``torch.compile``'s mode (one of ``COMPILE_MODES``; ``None``: its default).
        backend: ``torch.compile``'s backend (``inductor``: generated C++ kernels on CPUs,
            Triton on GPUs, needs a C++ compiler; ``aot_eager``: traced but eager kernels).

    Returns:
        The backbones compiled by this call.
    """
    compiled = []
    functions: dict[type, object] = {}  # one per class, for all its instances
    for module in network.modules():
        if hasattr(module, "backbone_name") and not getattr(module, "compiled", False):
            cls = type(module)
            if cls not in functions:
                functions[cls] = torch.compile(cls.forward, mode=mode, backend=backend)
            module.forward = types.MethodType(functions[cls], module)
            module.compiled = True
            compiled.append(module)
    return compiled
