"""The plain functions behind ``Method``: parameter groups, the lr schedule and the checks
of its numbers, gradient clipping under a gradient scaler (and DINO's per-parameter
clipping) and the random states a checkpoint carries."""

from __future__ import annotations

import contextlib
import importlib
import math
import random
from collections.abc import Callable, Iterable, Iterator

import lightning as L
import numpy as np
import torch
from lightly.utils.scheduler import cosine_warmup_schedule
from torch import nn

from distill.backbones.compiled import COMPILE_MODES
from distill.errors import ConfigError


def split_decay_groups(modules: Iterable[nn.Module], exclude_norm_bias: bool) -> list[dict]:
    """Parameter groups for the optimiser; norms and biases (1-d params) get no weight decay.

    Frozen parameters (``requires_grad=False``) are left out.
    """
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if not exclude_norm_bias:
        return [{"params": params}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    schedule: str,
    warmup_epochs: float = 0.0,
    milestones: Iterable[int] = (),
    lr_decay: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    ``cosine``: linear warm-up over ``warmup_epochs`` then cosine from 1 to ``min_lr_ratio``
    at ``total_steps``; ``multistep``: times ``lr_decay`` at each epoch in ``milestones``
    (after the warm-up); ``constant``: 1 after the warm-up.
    """
    warmup_steps = min(round(warmup_epochs * steps_per_epoch), total_steps)
    if schedule == "cosine":
        step = min(step, total_steps)
        return cosine_warmup_schedule(
            step, total_steps, 1.0, min_lr_ratio, warmup_steps, warmup_start_value=0.0
        )
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "multistep":
        epoch = step // max(steps_per_epoch, 1)
        return lr_decay ** sum(epoch >= m for m in milestones)
    return 1.0


@torch.no_grad()
def clip_gradients_per_parameter(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """DINO's ``clip_gradients``: each gradient tensor on its own is scaled to norm ``≤ max_norm``.

    ``g ← g · min(1, max_norm / (‖g‖₂ + 1e-6))`` per parameter, where total-norm clipping
    would scale all gradients by one factor from their joint norm.
    """
    for param in parameters:
        if param.grad is not None:
            torch.nn.utils.clip_grad_norm_(param, max_norm)


@contextlib.contextmanager
def keep_features(
    module: nn.Module, features: dict, rows: int, submodules: Iterable[str]
) -> Iterator[None]:
    """``Method.keep_step_features``: within the block, ``features[name]`` receives the first
    ``rows`` rows (detached) of the first output of ``module.<name>.backbone``."""
    kept: set[str] = set()
    handles = []
    for name in submodules:
        features.pop(name, None)

        def keep(backbone, inputs, output, name=name) -> None:
            if name not in kept:
                kept.add(name)
                kept_rows = output[:rows].detach()
                if kept_rows.is_inference():  # a frozen teacher's: an ordinary tensor for probes
                    with torch.inference_mode(False):
                        kept_rows = kept_rows.clone()
                features[name] = kept_rows

        handles.append(getattr(module, name).backbone.register_forward_hook(keep))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def optimizer_unscales_itself(trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> bool:
    """Whether a ``GradScaler`` scales the gradients and Lightning leaves their unscaling to
    the optimiser's step (one with ``_step_supports_amp_scaling``, e.g. ``AdamW(fused=True)``),
    so that in ``on_before_optimizer_step`` they are still scaled."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False)


def unscale_gradients(trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> None:
    """Unscales the gradients that ``optimizer_unscales_itself`` leaves scaled; call once per
    step, before clipping or dropping them.

    ``GradScaler.step`` supports it: after ``unscale_`` it passes the optimiser no scale, only
    the inf/NaN flag ``unscale_`` found, and still skips the step on an overflow.
    """
    if optimizer_unscales_itself(trainer, optimizer):
        trainer.precision_plugin.scaler.unscale_(optimizer)


def clip_gradients(optimizer: torch.optim.Optimizer, max_value: float, algorithm: str) -> None:
    """Lightning's ``norm`` (total norm) or ``value`` clipping of the optimiser's gradients."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, max_value)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_value)


#: Optimiser arguments checked at construction: torch's message fragment (which names the
#: argument) -> (the init_args key, its valid range).
OPTIMIZER_ARGUMENTS = {
    "nesterov": ("nesterov", "true only with momentum > 0 and dampening 0"),  # before momentum
    "learning rate": ("lr", "a finite number >= 0"),
    "momentum": ("momentum", "a number in [0, 1)"),
    "weight_decay": ("weight_decay", "a finite number >= 0"),
    "epsilon": ("eps", "a number >= 0"),
    "beta parameter": ("betas", "two numbers in [0, 1)"),
}
OPTIMIZER_KEY = "model.init_args.optimizer.init_args"


def check_optimizer(optimizer: Callable[[list], torch.optim.Optimizer]) -> None:
    """Builds ``optimizer`` on one dummy parameter: a bad number is a ``ConfigError`` now,
    naming its key, instead of a traceback when the fit sets up."""
    probe = nn.Parameter(torch.zeros(1))
    try:
        built = optimizer([probe])
    except ValueError as error:
        text = str(error).lower()
        for fragment, (key, valid) in OPTIMIZER_ARGUMENTS.items():
            if fragment in text:
                raise ConfigError(f"{OPTIMIZER_KEY}.{key}: {error}; valid: {valid}") from None
        raise ConfigError(f"model.init_args.optimizer: {error}") from None
    except Exception:  # noqa: BLE001  (e.g. fused kernels for another device: the fit decides)
        return
    # torch accepts a NaN lr, and other optimisers may check nothing.
    for key, at_least, below in (("lr", 0, math.inf), ("weight_decay", 0, math.inf),
                                 ("momentum", 0, 1)):  # fmt: skip
        value = built.defaults.get(key)
        if isinstance(value, int | float) and not at_least <= value < below:
            valid = dict(OPTIMIZER_ARGUMENTS.values())[key]
            raise ConfigError(f"{OPTIMIZER_KEY}.{key}={value}; valid: {valid}")


def check_arguments(optimizer: Callable[[list], torch.optim.Optimizer], **args) -> None:
    """``ConfigError`` naming the key and the valid range of a bad ``Method`` argument."""
    for key, choices in (
        ("lr_schedule", ("cosine", "multistep", "constant")),
        ("nonfinite_loss", ("error", "skip", "off")),
    ):
        if args[key] not in choices:
            raise ConfigError(f"model.init_args.{key}={args[key]!r}; valid: {', '.join(choices)}")
    milestones = args["milestones"]
    for key, valid, ok in (
        ("warmup_epochs", "a finite number >= 0 (epochs)", 0 <= args["warmup_epochs"] < math.inf),
        ("milestones", "increasing epochs >= 0, e.g. [150, 180, 210]",
         all(a < b for a, b in zip([-1, *milestones], milestones, strict=False))),
        ("lr_decay", "a number in [0, 1]", 0 <= args["lr_decay"] <= 1),
        ("min_lr_ratio", "a number in [0, 1] (of the base lr)", 0 <= args["min_lr_ratio"] <= 1),
        ("nonfinite_check_interval", "an integer >= 1 (optimiser steps)",
         args["nonfinite_check_interval"] >= 1),
        ("nonfinite_skip_share", "a number in [0, 1]", 0 <= args["nonfinite_skip_share"] <= 1),
        ("nonfinite_skip_window", "an integer >= 1 (optimiser steps)",
         args["nonfinite_skip_window"] >= 1),
    ):  # fmt: skip
        if not ok:
            raise ConfigError(f"model.init_args.{key}={args[key]}; valid: {valid}")
    check_optimizer(optimizer)


def check_compile(compile: object, backend: object) -> None:
    """``ConfigError`` naming the key of a ``compile`` or ``compile_backend`` torch.compile
    would refuse only when the Trainer sets the model up (or at the first step)."""
    if not (isinstance(compile, bool) or compile in COMPILE_MODES):
        raise ConfigError(
            f"model.init_args.compile={compile!r}; valid: false, true or a mode: "
            + ", ".join(COMPILE_MODES)
        )
    if backend not in torch.compiler.list_backends(exclude_tags=()):
        raise ConfigError(
            f"model.init_args.compile_backend={backend!r}; valid: "
            f"{', '.join(torch.compiler.list_backends())}, or a debugging one (aot_eager, "
            "eager; all: torch.compiler.list_backends(exclude_tags=()))"
        )
    if compile not in (False, True, "default") and backend != "inductor":
        raise ConfigError(
            f"model.init_args.compile={compile!r} is a mode of the inductor backend, not of "
            f"compile_backend={backend!r}; valid with {backend}: false or true"
        )


def optimizer_record(optimizer: torch.optim.Optimizer, resumed: dict | None = None) -> dict:
    """The optimiser's class and constructor arguments, saved with every checkpoint.

    ``{"class_path": "torch.optim.SGD", "defaults": {"lr": 0.1, "momentum": 0.9, ...}}``:
    the shortest import path of the class and ``optimizer.defaults`` in plain values (a
    tensor lr as a number, tuples as lists), so a resume can compare the configured one
    before it builds anything (``distill.resume.check_resumed_optimizer``).

    Args:
        optimizer: The fit's optimiser.
        resumed: The record of the checkpoint the fit resumed from (``{}`` for one written
            before records were): its arguments are the ones that apply, since the optimiser's
            state was restored from it, whatever the optimiser was constructed with.
    """
    if resumed is not None:
        defaults = dict(resumed.get("defaults") or {})
    else:
        defaults = {key: plain_value(value) for key, value in optimizer.defaults.items()}
    return {"class_path": import_path(type(optimizer)), "defaults": defaults}


def import_path(cls: type) -> str:
    """``torch.optim.SGD`` rather than ``torch.optim.sgd.SGD``: the shortest module path that
    exports the class."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = ".".join(parts[:end])
        try:
            if getattr(importlib.import_module(module), cls.__name__, None) is cls:
                return f"{module}.{cls.__name__}"
        except ImportError:
            continue
    return f"{cls.__module__}.{cls.__qualname__}"


def plain_value(value: object) -> object:
    """``value`` as a number, string, bool, None or list of them (a weights-only load reads
    these); anything else as its ``repr``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, list | tuple):
        return [plain_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def rng_states() -> dict:
    """Python, NumPy, torch (and CUDA) random states in types ``torch.load`` reads safely."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restores what ``rng_states`` captured."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
