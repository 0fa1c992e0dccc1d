"""Feature extraction over an evaluation loader, gathered across DDP ranks."""

from __future__ import annotations

import contextlib

import lightning as L
import torch
from torch import Tensor, nn

from distill.modules.heads import backbone_features


def resolve_submodule(pl_module: L.LightningModule, name: str) -> nn.Module:
    """The submodule called ``name`` (``student``, ``teacher``, ...) with a clear error."""
    module = getattr(pl_module, name, None)
    if not isinstance(module, nn.Module):
        available = sorted(n for n, _ in pl_module.named_children())
        raise ValueError(
            f"{type(pl_module).__name__} has no submodule {name!r} to evaluate; "
            f"available: {', '.join(available)}"
        )
    return module


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Puts every submodule in eval mode and restores each one's own mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


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


@torch.no_grad()
def extract_features(
    trainer: L.Trainer, pl_module: L.LightningModule, module: nn.Module, split: str
) -> tuple[Tensor, Tensor]:
    """Backbone features and labels of the DataModule's un-augmented ``split``.

    Under DDP each rank extracts its shard, then the shards are gathered and samples that
    the sampler padded in twice are dropped by index, so every rank returns the full,
    identical set in dataset order.

    Returns:
        ``features`` ``[N, D]`` float32 and ``labels`` ``[N]`` on the module's device.
    """
    datamodule = trainer.datamodule
    loader = datamodule.eval_dataloader(split, trainer.global_rank, trainer.world_size)
    features, labels, indices = [], [], []
    with eval_mode(module), trainer.precision_plugin.forward_context():
        for images, targets, index in loader:
            images = images.to(pl_module.device, non_blocking=True)
            features.append(backbone_features(module, images).float())
            labels.append(targets.to(pl_module.device))
            indices.append(index.to(pl_module.device))
    features, labels, indices = torch.cat(features), torch.cat(labels), torch.cat(indices)
    features, labels, indices = gather_rows(pl_module, features, labels, indices)
    order = torch.argsort(indices, stable=True)
    indices, features, labels = indices[order], features[order], labels[order]
    keep = torch.ones_like(indices, dtype=torch.bool)
    keep[1:] = indices[1:] != indices[:-1]
    return features[keep], labels[keep]
