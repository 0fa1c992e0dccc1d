"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR, pre-activation blocks as in
RepDistiller: ``wrn_{depth}_{k}`` has depth ``6n + 4`` and widths 16, 16k, 32k, 64k.

Stages (``forward_stages``), as RepDistiller's ``feat`` and ``preact`` lists: ``stem`` (the
first convolution's output) and ``stage1`` to ``stage3``, each group's residual sum (no ReLU ends
a pre-activation block), or, with ``preact``, that sum after the batch norm that follows it (the
next group's first, or the final one), the input of the next ReLU. So the ReLU of ``stage3``'s
pre-activation is the last feature map, not ``stage3``.
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

    def forward(self, x: Tensor, normalised: Tensor | None = None) -> Tensor:
        """The block's output; ``normalised`` is ``bn1(x)`` if the caller computed it already
        (a stage's pre-activation), so that the batch norm runs, and counts statistics, once."""
        activated = F.relu(self.bn1(x) if normalised is None else normalised)
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

    #: The keys of ``forward_stages``'s stages, in the order the network computes them.
    stage_names = ("stem", "stage1", "stage2", "stage3")

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

    def forward_stages(self, x: Tensor, preact: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """The pooled embedding and every stage's output, from one pass.

        Args:
            preact: Each stage's sum after the batch norm that follows it (the stem is the
                same either way, as in RepDistiller).

        Returns:
            ``[B, num_features]`` and ``{stem: [B, 16, H, W], stage1: [B, 16k, H, W],
            stage2: [B, 32k, H/2, W/2], stage3: [B, 64k, H/4, W/4]}``.
        """
        x = self.conv1(x)
        stages = {"stem": x}
        groups = (self.block1, self.block2, self.block3)
        # The batch norm each group's sum goes through next: the next group's first, then the last.
        following = (self.block2[0].bn1, self.block3[0].bn1, self.bn)
        normalised = None
        for name, group, norm in zip(self.stage_names[1:], groups, following, strict=True):
            first, *rest = group
            x = first(x, normalised)
            for block in rest:
                x = block(x)
            normalised = norm(x)
            stages[name] = normalised if preact else x
        return global_pool(F.relu(normalised)), stages


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
