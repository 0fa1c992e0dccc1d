"""Watching DINO's teacher for collapse without a host sync every step."""

from __future__ import annotations

import torch
from torch import Tensor


class CollapseWatch:
    """Counts, on the device, the consecutive steps at which the teacher looked collapsed.

    A step looks collapsed when the mean entropy of the teacher's distributions (collapse to
    uniform) or the KL of their mean from uniform (collapse to one dimension) is within
    ``tolerance · log K`` of ``log K`` (``distill.losses.dino.collapse_monitors``). ``observe``
    only launches device work, so it can run every step; ``check`` reads the counts (one
    sync) and returns the warning, once, when a run of collapsed steps since the last check
    reached ``patience``.

    Args:
        max_entropy: ``log K``.
        patience: Consecutive collapsed steps before the warning.
        tolerance: The fraction of ``log K`` within which a monitor counts as collapsed.
    """

    def __init__(self, max_entropy: float, patience: int, tolerance: float) -> None:
        self.max_entropy = max_entropy
        self.limit = (1 - tolerance) * max_entropy
        self.patience = patience
        self.warned = False
        self._run: Tensor | None = None  # consecutive collapsed steps up to now
        self._longest: Tensor | None = None  # the longest run since the last check
        self._last: Tensor | None = None  # (entropy, KL) at the last collapsed step

    def observe(self, entropy: Tensor, kl_uniform: Tensor) -> None:
        """Counts one step with these monitors (scalars)."""
        values = torch.stack([entropy, kl_uniform]).detach().float()
        collapsed = (values >= self.limit).any()
        if self._run is None:
            self._run = torch.zeros((), dtype=torch.long, device=values.device)
            self._longest, self._last = torch.zeros_like(self._run), torch.zeros_like(values)
        self._run = (self._run + 1) * collapsed
        self._longest = torch.maximum(self._longest, self._run)
        self._last = torch.where(collapsed, values, self._last)

    def check(self) -> str | None:
        """The collapse warning, the first time a run reached ``patience`` (syncs)."""
        if self.warned or self._run is None:
            return None
        steps = int(self._longest)
        entropy, kl_uniform = self._last.tolist()
        self._longest = self._run
        if steps < self.patience:
            return None
        self.warned = True
        uniform = entropy >= self.limit
        advice = (
            "the teacher is too flat: lower teacher_temp (sharpen) and check that the teacher "
            "moves (momentum_start < 1) and the lr is not too high"
            if uniform
            else "centering is too weak: keep center_momentum < 1 and teacher_temp not too small"
        )
        return (
            f"DINO teacher collapse to {'uniform' if uniform else 'one dimension'} for "
            f"{steps} steps: entropy {entropy:.3f}, KL(mean || uniform) {kl_uniform:.3f}, "
            f"log K {self.max_entropy:.3f}; {advice}."
        )
