"""A memory bank of L2-normalised embeddings addressed by dataset index (CRD)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.precision import at_least_float32


class MomentumMemoryBank(nn.Module):
    """``num_rows`` embeddings of width ``dim``, one per training sample, kept as a buffer.

    Rows start uniform in ``[-1/sqrt(dim/3), 1/sqrt(dim/3)]`` (as in CRD's reference code,
    so their expected norm is 1) and move towards new embeddings with
    ``row <- normalise(m * row + (1 - m) * z)``.

    Args:
        num_rows: Number of rows (the training set size).
        dim: Embedding width.
        momentum: ``m``; CRD uses 0.5.
    """

    def __init__(self, num_rows: int, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        self.momentum = momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("rows", torch.rand(num_rows, dim).mul_(2 * bound).add_(-bound))

    def __len__(self) -> int:
        return self.rows.shape[0]

    def forward(self, indices: Tensor) -> Tensor:
        """Rows at ``indices`` (any shape ``S``): ``[*S, dim]``."""
        return self.rows[indices]

    @torch.no_grad()
    def update(self, indices: Tensor, embeddings: Tensor) -> None:
        """Moves rows ``indices`` ``[B]`` towards ``embeddings`` ``[B, dim]`` and renormalises.

        A repeated index (the same sample twice in a gathered batch, e.g. a DistributedSampler
        padding a rank's share) takes its last occurrence only: every occurrence writes the
        row computed from the last one, so the result does not depend on which of the equal
        writes lands last (unspecified on CUDA, where devices could otherwise disagree).
        """
        last = embeddings[last_occurrence(indices)]
        mixed = self.momentum * self.rows[indices] + (1 - self.momentum) * at_least_float32(last)
        self.rows[indices] = F.normalize(mixed, dim=1).to(self.rows.dtype)


def last_occurrence(indices: Tensor) -> Tensor:
    """``[B]`` long: for each position, the last position holding the same value of ``indices``.

    A ``[B, B]`` comparison rather than ``torch.unique``, whose output size the host would
    have to wait for.
    """
    positions = torch.arange(len(indices), device=indices.device)
    if not len(indices):
        return positions
    same = indices.unsqueeze(0) == indices.unsqueeze(1)
    return torch.where(same, positions, -1).amax(dim=1)
