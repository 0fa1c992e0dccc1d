"""Heads that sit on a backbone's pooled features."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Classifier(nn.Module):
    """A backbone with a linear classification head.

    ``forward`` gives logits; ``forward_features`` gives the penultimate embedding and the
    logits, which the distillation methods need both of.

    Args:
        backbone: Feature extractor with an integer ``num_features`` attribute.
        num_classes: Number of output classes.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the embedding ``[B, D]`` and the logits ``[B, num_classes]``."""
        features = self.backbone(images)
        return features, self.head(features)

    def forward(self, images: Tensor) -> Tensor:
        """Returns the logits ``[B, num_classes]``."""
        return self.forward_features(images)[1]


@torch.no_grad()
def backbone_features(module: nn.Module, images: Tensor) -> Tensor:
    """Features of ``module.backbone`` (or of ``module`` itself if it has none), no gradient."""
    return getattr(module, "backbone", module)(images)
