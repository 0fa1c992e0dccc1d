"""Collectives for state that every rank must hold identically."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor


def gather_rows(
    pl_module: L.LightningModule, *tensors: Tensor, sync_grads: bool = False, views: int = 1
) -> list[Tensor]:
    """All-gathers per-rank tensors (same length within a rank) and concatenates them.

    Rows come in rank order (rank 0's first): the batch one process would see if it read
    the ranks' batches one after the other. Tensors that stack ``views`` views of the batch
    (``[views · B, ...]``, view by view) are gathered view by view, so the result stacks the
    views of the global batch, as one process would (not each rank's views in turn). Ranks
    may hold different numbers of rows (a last, smaller batch): rows are padded to the
    largest count for the collective and the padding is dropped afterwards.

    With ``sync_grads`` the gather is differentiable (``torch.distributed.nn``'s
    ``all_gather``, through Lightning's): a loss that every rank computes on the gathered
    rows sends each rank the sum, over the ranks' copies of the loss, of its gradient with
    respect to that rank's own rows, i.e. ``world`` times the loss's gradient; DDP's mean
    of the parameter gradients over the ranks then divides by ``world`` again, so the
    update is that of one process computing the loss on the whole batch: no world-size
    factor is to be added or removed (the factor that lightly #1977 and solo-learn #229
    are about).
    """
    # Also called outside a fit (a step run by hand): one process then.
    if pl_module._trainer is None or pl_module.trainer.world_size <= 1:
        return list(tensors)
    if views > 1:
        blocks = gather_rows(
            pl_module, *(v for t in tensors for v in t.chunk(views)), sync_grads=sync_grads
        )
        return [torch.cat(blocks[i : i + views]) for i in range(0, len(blocks), views)]
    count = torch.tensor([len(tensors[0])], device=pl_module.device)
    counts = pl_module.all_gather(count).flatten().tolist()
    longest = max(counts)
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        stacked = pl_module.all_gather(padded, sync_grads=sync_grads)  # [world, longest, ...]
        gathered.append(torch.cat([stacked[r, :n] for r, n in enumerate(counts)]))
    return gathered
