"""Feature extraction over an evaluation loader, gathered across DDP ranks."""

from __future__ import annotations

import contextlib

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from distill.errors import ConfigError
from distill.modules.distributed import gather_rows
from distill.modules.heads import backbone_features


def resolve_submodule(pl_module: L.LightningModule, name: str) -> nn.Module:
    """The submodule called ``name``: ``student``, ``teacher``, ... or a dotted path into
    one, such as ``teacher.key_backbone`` (the key encoder of a MoCo teacher, the one that
    mines ReKD's relations).

    Raises:
        ConfigError: ``pl_module`` has no such submodule (the message lists those it has).
    """
    try:
        module = pl_module.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Module) or isinstance(module, Metric) or module is pl_module:
        children = pl_module.named_children()
        available = sorted(n for n, m in children if not isinstance(m, Metric))
        raise ConfigError(
            f"{type(pl_module).__name__} has no submodule {name!r}; "
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


class FeatureCache(L.Callback):
    """Extracts a submodule's backbone features of the un-augmented train and val splits once.

    At the end of the first validation it runs ``extract_features`` on both splits (its own
    loaders, so one val batch of the trainer's loop is enough) and keeps the result in
    ``train`` and ``val``, each ``(features [N, D], labels [N])``: what ``distill eval``
    fits its probes on.

    Args:
        submodule: Network whose backbone embeds the images (``student``, ``teacher``, ...).
    """

    def __init__(self, submodule: str = "student") -> None:
        self.submodule = submodule
        self.train: tuple[Tensor, Tensor] | None = None
        self.val: tuple[Tensor, Tensor] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.val is not None:
            return
        module = resolve_submodule(pl_module, self.submodule)
        self.train = extract_features(trainer, pl_module, module, "train")
        self.val = extract_features(trainer, pl_module, module, "val")
