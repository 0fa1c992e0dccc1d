"""The plain functions behind ``Method``: parameter groups, the lr schedule, DINO's
per-parameter gradient clipping and the random states a checkpoint carries."""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import torch
from lightly.utils.scheduler import cosine_warmup_schedule
from torch import nn


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
