"""Watching logged loss terms for NaN and infinity without a host sync every step."""

from __future__ import annotations

import torch
from torch import Tensor

from distill.errors import NonFiniteLossError


class FiniteWatch:
    """Remembers, on the terms' device, the first step at which each term was not finite.

    ``observe`` only launches device work (no ``.item()``, no ``bool()``), so it can run every
    step; ``bad_terms`` and ``pending`` synchronise and are meant for every few steps or
    before a checkpoint is written.
    """

    def __init__(self) -> None:
        self.first_bad: dict[str, Tensor] = {}
        self._pending: Tensor | None = None

    def observe(self, name: str, value: Tensor, step: int) -> None:
        """Records whether ``value`` (any shape) holds a NaN or infinity at ``step``."""
        bad = ~torch.isfinite(value.detach()).all()
        first = self.first_bad.get(name)
        if first is None:
            first = self.first_bad[name] = torch.full((), -1, dtype=torch.long, device=bad.device)
        first.masked_fill_(bad & (first < 0), step)
        self._pending = bad if self._pending is None else self._pending | bad

    def pending(self) -> Tensor:
        """``[]`` bool on the device: a term was not finite since the last call (then reset)."""
        pending, self._pending = self._pending, None
        return pending if pending is not None else torch.zeros((), dtype=torch.bool)

    def bad_terms(self) -> list[tuple[str, int]]:
        """``(name, first step)`` of every term that was not finite, earliest first (syncs)."""
        steps = {name: int(first) for name, first in self.first_bad.items()}
        return sorted(((n, s) for n, s in steps.items() if s >= 0), key=lambda item: item[1])


def nonfinite_error(
    bad_terms: list[tuple[str, int]], epoch: int, lr: float | None, precision: str
) -> NonFiniteLossError:
    """The error for ``FiniteWatch.bad_terms`` (empty: the bad term was on another rank)."""
    where = ", ".join(f"{name} at global step {step}" for name, step in bad_terms)
    first = min((step for _, step in bad_terms), default=None)
    after = f" after step {first}" if first is not None else ""
    return NonFiniteLossError(
        f"training loss is not finite: {where or 'on another rank'} (epoch {epoch}). The run "
        f"stops without writing a checkpoint{after}, so the last.ckpt written before (if "
        "any) is the last good state. "
        f"Likely causes: a learning rate too high (lr now {lr}), an overflow at "
        f"trainer.precision={precision}, or a bad input batch. To skip such batches instead, "
        "set model.init_args.nonfinite_loss: skip"
    )
