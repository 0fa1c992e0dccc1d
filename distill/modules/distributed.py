"""Collectives for state that every rank must hold identically."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor


def gather_rows(pl_module: L.LightningModule, *tensors: Tensor) -> list[Tensor]:
    """All-gathers per-rank tensors (same length within a rank) and concatenates them.

    Ranks may hold different numbers of rows (a last, smaller batch): rows are padded to
    the largest count for the collective and the padding is dropped afterwards.
    """
    if pl_module.trainer.world_size <= 1:
        return list(tensors)
    count = torch.tensor([len(tensors[0])], device=pl_module.device)
    counts = pl_module.all_gather(count).flatten().tolist()
    longest = max(counts)
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        stacked = pl_module.all_gather(padded)  # [world, longest, ...]
        gathered.append(torch.cat([stacked[r, :n] for r, n in enumerate(counts)]))
    return gathered
