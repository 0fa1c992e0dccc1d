"""Projectors of feature distillation: they map the student's features into the teacher's
space, train with the student and are not part of it (``distill export`` writes the student's
backbone alone)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn


def embedding_projector(
    in_dim: int, out_dim: int, kind: Literal["linear", "mlp", "identity"] = "linear"
) -> nn.Module:
    """A projector of ``[B, in_dim]`` embeddings to ``[B, out_dim]``.

    Args:
        in_dim: The student's embedding width.
        out_dim: The teacher's embedding width.
        kind: ``linear``: one linear layer (FitNets' regressor on an embedding).
            ``mlp``: SimReg's 4-layer MLP head (UCDvision/simreg, ``n_mlp_layers=4``): a
            projection ``in → 2·in → in`` then a prediction ``in → 2·in → out``, batch norm
            and ReLU after the first layer of each. ``identity``: none (``in_dim == out_dim``).

    Raises:
        ValueError: ``identity`` between different widths, or an unknown ``kind``.
    """
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        wide = 2 * in_dim
        return nn.Sequential(
            nn.Linear(in_dim, wide), nn.BatchNorm1d(wide), nn.ReLU(inplace=True),
            nn.Linear(wide, in_dim),
            nn.Linear(in_dim, wide), nn.BatchNorm1d(wide), nn.ReLU(inplace=True),
            nn.Linear(wide, out_dim),
        )  # fmt: skip
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"an identity projector needs equal widths, got {in_dim} → {out_dim}")
        return nn.Identity()
    raise ValueError(f"projector {kind!r}; valid: linear, mlp, identity")


class FeatureMapProjector(nn.Module):
    """The student's last feature map on the teacher's grid: a 1x1 convolution and batch norm
    to the teacher's channels, then a bilinear resize to its grid (``align_corners=False``,
    no antialiasing: each output token interpolates the nearest 2x2 student positions).

    Args:
        in_channels: The student's channels.
        out_channels: The teacher's channels (a ViT's token width).
        identity: No convolution (``in_channels == out_channels``): only the resize.
    """

    def __init__(self, in_channels: int, out_channels: int, identity: bool = False) -> None:
        super().__init__()
        if identity and in_channels != out_channels:
            raise ValueError(
                f"an identity projector needs equal widths, got {in_channels} → {out_channels}"
            )
        self.project: nn.Module = nn.Identity()
        if not identity:
            self.project = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, feature_map: Tensor, grid: tuple[int, int]) -> Tensor:
        """``[B, in_channels, h, w]`` to ``[B, out_channels, *grid]``."""
        projected = self.project(feature_map)
        if tuple(projected.shape[-2:]) == tuple(grid):
            return projected
        return F.interpolate(projected, size=grid, mode="bilinear", align_corners=False)
