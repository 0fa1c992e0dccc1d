"""A memory bank of L2-normalised embeddings addressed by dataset index (CRD)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
        padding a rank's share) takes its last occurrence only: an index write with repeats
        leaves an unspecified one on CUDA, which would let devices disagree.
        """
        keep = last_occurrences(indices)
        indices, embeddings = indices[keep], embeddings[keep]
        mixed = self.momentum * self.rows[indices] + (1 - self.momentum) * embeddings.float()
        self.rows[indices] = F.normalize(mixed, dim=1).to(self.rows.dtype)


def last_occurrences(indices: Tensor) -> Tensor:
    """``[B]`` bool: ``True`` at the last occurrence of each value of ``indices`` ``[B]``."""
    _, group = torch.unique(indices, return_inverse=True)
    positions = torch.arange(len(indices), device=indices.device)
    last = torch.zeros(int(group.max()) + 1 if len(group) else 0, dtype=torch.long,
                       device=indices.device)  # fmt: skip
    last = last.scatter_reduce(0, group, positions, reduce="amax", include_self=False)
    keep = torch.zeros(len(indices), dtype=torch.bool, device=indices.device)
    keep[last] = True
    return keep
