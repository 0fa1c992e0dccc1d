"""MoCo's two encoders and its queue: a query network, its EMA (the key network), the keys."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.modules.queue import KeyQueue
from distill.modules.shuffle_bn import (
    check_shuffle_bn,
    convert_split_batch_norm,
    grouped_forward,
    resolve_shuffle_bn,
    shuffled_forward,
)


def two_views(batch) -> tuple[list[Tensor], Tensor]:
    """``(views, targets)`` of a ``(views, targets, indices)`` batch with exactly two views.

    Raises:
        ConfigError: The batch has one tensor or a number of views other than two.
    """
    views, targets = batch[0], batch[1]
    if not isinstance(views, list | tuple) or len(views) != 2:
        got = f"{len(views)} views" if isinstance(views, list | tuple) else "a single tensor"
        raise ConfigError(
            f"MoCo, ReKD and DisCo need two views per image, got {got}; set "
            "data.init_args.views.class_path: distill.data.TwoViews"
        )
    return list(views), targets


class MomentumEncoder(nn.Module):
    """A query encoder ``f_q`` (backbone + 2-layer MLP head), its EMA ``f_k`` and a key queue.

    ``f_q`` gives L2-normalised queries and is trained; ``f_k`` is a deep copy without
    gradients that gives the keys and follows ``θ_k ← m·θ_k + (1 − m)·θ_q`` through
    ``update_key_encoder`` (lightly's ``update_momentum``; parameters only, the key
    encoder's batch-norm statistics come from its own forward passes, as in MoCo). The
    key encoder runs in training mode like the query encoder, with shuffle-BN
    (``distill.modules.shuffle_bn``) so that no key is normalised with its query's batch:
    ``split`` normalises ``bn_groups`` row groups apart, queries in batch order and keys
    in a shuffled order that mixes the groups; ``ranks`` shuffles keys across DDP ranks
    (MoCo's ``_batch_shuffle_ddp``); ``auto`` is ``ranks`` under DDP and ``split`` on one
    process; ``off`` is plain batch norm. ``backbone`` is the query backbone, the one
    evaluated by k-NN and linear probes.

    Args:
        backbone: Feature extractor with an integer ``num_features``.
        proj_hidden_dim: Hidden width of the MLP head (``None``: ``num_features``, MoCo-v2).
        proj_dim: Output width (128); ``None``: no head, the embedding is the backbone's
            features (for a frozen teacher whose checkpoint has no trained head).
        queue_size: Number of keys in the queue.
        track_labels: Keep labels next to the queued keys (diagnostics only).
        shuffle_bn: ``auto``, ``split``, ``ranks``, ``off`` or ``split_unshuffled`` (a control).
        bn_groups: Batch-norm groups of ``split`` (lightly's CIFAR-10 benchmark: 8).
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int | None = None,
        proj_dim: int | None = 128,
        queue_size: int = 65536,
        track_labels: bool = False,
        shuffle_bn: str = "auto",
        bn_groups: int = 8,
    ) -> None:
        super().__init__()
        check_shuffle_bn(shuffle_bn, bn_groups)
        self.shuffle_bn = shuffle_bn
        self.bn_groups = bn_groups
        hidden = proj_hidden_dim or backbone.num_features
        self.backbone = convert_split_batch_norm(backbone)
        if proj_dim is None:
            self.head, self.out_dim = nn.Identity(), backbone.num_features
        else:
            head = MoCoProjectionHead(backbone.num_features, hidden, proj_dim)
            self.head, self.out_dim = convert_split_batch_norm(head), proj_dim
        self.key_backbone = copy.deepcopy(backbone)
        self.key_head = copy.deepcopy(self.head)
        deactivate_requires_grad(self.key_backbone)
        deactivate_requires_grad(self.key_head)
        self.queue = KeyQueue(queue_size, self.out_dim, track_labels)

    def forward(self, images: Tensor) -> Tensor:
        """L2-normalised queries ``[B, proj_dim]`` (batch norm over the whole batch)."""
        return F.normalize(self.head(self.backbone(images)), dim=1)

    def queries(self, images: Tensor) -> Tensor:
        """L2-normalised queries ``[B, proj_dim]``, batch norm in the query groups."""
        mode = resolve_shuffle_bn(self.shuffle_bn)
        encoder = nn.Sequential(self.backbone, self.head)  # a view: no parameters of its own
        return F.normalize(grouped_forward(encoder, images, mode, self.bn_groups), dim=1)

    @torch.no_grad()
    def keys(self, images: Tensor) -> Tensor:
        """L2-normalised keys ``[B, proj_dim]`` of the key encoder, with shuffle-BN."""
        mode = resolve_shuffle_bn(self.shuffle_bn) if self.key_backbone.training else "off"
        encoder = nn.Sequential(self.key_backbone, self.key_head)
        return F.normalize(shuffled_forward(encoder, images, mode, self.bn_groups), dim=1)

    def queries_and_keys(self, views: list[Tensor], symmetric: bool) -> tuple[Tensor, Tensor]:
        """Queries and their positive keys, row ``i`` of one pairing with row ``i`` of the other.

        Asymmetric: queries of view 0, keys of view 1 (``[B, proj_dim]`` each). Symmetric:
        also queries of view 1 with keys of view 0, stacked below (``[2B, proj_dim]``).
        Each view goes through a network on its own, so batch norm sees batches of ``B``.
        """
        pairs = [(0, 1), (1, 0)] if symmetric else [(0, 1)]
        queries = torch.cat([self.queries(views[q]) for q, _ in pairs])
        keys = torch.cat([self.keys(views[k]) for _, k in pairs])
        return queries, keys

    @torch.no_grad()
    def update_key_encoder(self, momentum: float) -> None:
        """``θ_k ← momentum·θ_k + (1 − momentum)·θ_q`` for the backbone and the head."""
        update_momentum(self.backbone, self.key_backbone, momentum)
        update_momentum(self.head, self.key_head, momentum)
