"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR, pre-activation blocks as in
RepDistiller: ``wrn_{depth}_{k}`` has depth ``6n + 4`` and widths 16, 16k, 32k, 64k.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.backbones import register_backbone
from distill.backbones.common import global_pool, init_conv_bn


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv twice, 1x1 projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if in_planes != planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        # As in the reference, a projected block feeds the activated input to the shortcut.
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = F.relu(self.bn2(self.conv1(activated)))
        out = F.dropout(out, self.dropout, self.training)
        return residual + self.conv2(out)


class WideResNet(nn.Module):
    """Wide ResNet for 32x32 inputs.

    Args:
        depth: ``6n + 4`` (16, 28, 40).
        widen_factor: Width multiplier ``k``.
        dropout: Dropout between the two convolutions of each block.
    """

    def __init__(self, depth: int, widen_factor: int, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        in_planes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=True)):
            layers = []
            for b in range(blocks):
                layers.append(WideBlock(in_planes, planes, stride if b == 0 else 1, dropout))
                in_planes = planes
            setattr(self, f"block{i + 1}", nn.Sequential(*layers))
        self.bn = nn.BatchNorm2d(in_planes)
        self.num_features = in_planes
        init_conv_bn(self)

    def forward_feature_map(self, x: Tensor) -> Tensor:
        """The last block's output after the final BN-ReLU ``[B, num_features, H/4, W/4]``."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn(x))

    def forward(self, x: Tensor) -> Tensor:
        """The pooled embedding ``[B, num_features]``."""
        return global_pool(self.forward_feature_map(x))


@register_backbone("wrn_16_2")
def wrn_16_2(dropout: float = 0.0) -> WideResNet:
    """WRN-16-2."""
    return WideResNet(16, 2, dropout)


@register_backbone("wrn_40_1")
def wrn_40_1(dropout: float = 0.0) -> WideResNet:
    """WRN-40-1."""
    return WideResNet(40, 1, dropout)


@register_backbone("wrn_40_2")
def wrn_40_2(dropout: float = 0.0) -> WideResNet:
    """WRN-40-2."""
    return WideResNet(40, 2, dropout)
