"""Heads that sit on a backbone's pooled features, and the multi-crop wrapper (backbone + head
over a list of views)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from lightly.models.modules.heads import DINOProjectionHead
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from distill.backbones import feature_map, forward_stages, has_feature_map
from distill.backbones.common import global_pool


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

    @property
    def num_features(self) -> int:
        """Width of the embedding (the backbone's)."""
        return self.backbone.num_features

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return self.head.out_features

    @property
    def has_feature_map(self) -> bool:
        """Whether ``forward_dense`` works: the backbone has a last feature map."""
        return has_feature_map(self.backbone)

    def forward_dense(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns the backbone's last feature map ``[B, D, h, w]`` (``distill.backbones.
        feature_map``), the embedding ``[B, D]`` it pools into and the logits, in one pass."""
        features = feature_map(self.backbone, images)
        embedding = global_pool(features)
        return features, embedding, self.head(embedding)

    def forward_stages(
        self, images: Tensor, names: Sequence[str]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Returns the backbone's stages ``names`` (``{name: [B, C, h, w]}``, see
        ``distill.backbones.forward_stages``), the embedding ``[B, D]`` and the logits, in one
        pass."""
        embedding, stages = forward_stages(self.backbone, images, names)
        return stages, embedding, self.head(embedding)


class MultiCropWrapper(nn.Module):
    """Backbone + DINO head over a list of views; views of one size share a forward pass.

    Args:
        backbone: Feature extractor with ``num_features``.
        head: Maps ``[N, num_features]`` to ``[N, K]``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        """``V`` tensors ``[B, 3, H_v, W_v]`` to ``V`` outputs ``[B, K]``."""
        features, start = [], 0
        while start < len(views):  # consecutive views of equal size: one backbone batch
            end = start + 1
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            features.append(self.backbone(torch.cat(views[start:end])))
            start = end
        return list(self.head(torch.cat(features)).chunk(len(views)))


@torch.no_grad()
def backbone_features(module: nn.Module, images: Tensor) -> Tensor:
    """Features of ``module.backbone`` (or of ``module`` itself if it has none), no gradient."""
    return getattr(module, "backbone", module)(images)


def dino_head(
    input_dim: int,
    hidden_dim: int,
    bottleneck_dim: int,
    output_dim: int,
    batch_norm: bool = False,
    freeze_last_layer: int = -1,
    norm_last_layer: bool = True,
) -> DINOProjectionHead:
    """lightly's ``DINOProjectionHead`` with its last layer on ``parametrizations.weight_norm``.

    lightly builds the last layer with the deprecated ``torch.nn.utils.weight_norm`` (a
    FutureWarning on every run, and hooks that ``copy.deepcopy`` cannot copy). The same
    layer (direction ``v`` as lightly initialised it, norm ``g = 1``, ``g`` frozen with
    ``norm_last_layer``) replaces it at once, on the current API; its weights are the
    parametrisation's ``original0`` (``g``) and ``original1`` (``v``).
    """
    with warnings.catch_warnings():  # the layer that warns is replaced below
        warnings.filterwarnings("ignore", "`torch.nn.utils.weight_norm` is deprecated")
        head = DINOProjectionHead(
            input_dim, hidden_dim, bottleneck_dim, output_dim, batch_norm=batch_norm,
            freeze_last_layer=freeze_last_layer, norm_last_layer=norm_last_layer,
        )  # fmt: skip
    layer = nn.Linear(bottleneck_dim, output_dim, bias=False)
    with torch.no_grad():
        layer.weight.copy_(head.last_layer.weight_v)
    layer = parametrizations.weight_norm(layer)
    norm = layer.parametrizations.weight.original0
    with torch.no_grad():
        norm.fill_(1.0)
    norm.requires_grad_(not norm_last_layer)
    head.last_layer = layer
    return head
