"""CIFAR ResNets of the distillation literature (He et al. 2016, CIFAR variant), laid out as in
RepDistiller: a 3x3 stem, three stages of basic blocks (strides 1, 2, 2), global pooling.
``resnet{6n+2}`` uses widths 16/16/32/64; the ``x4`` variants 32/64/128/256.

Stages (``forward_stages``): ``stem`` (after its ReLU) and ``stage1`` to ``stage3``, each stage's
output after its last ReLU, or, with ``preact``, the residual sum before it (RepDistiller's
``feat`` and ``preact`` lists).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.backbones import register_backbone
from distill.backbones.common import global_pool, init_conv_bn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (a 1x1 projection when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward_preact(self, x: Tensor) -> Tensor:
        """The residual sum, before the block's last ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + self.shortcut(x)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.forward_preact(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs.

    Args:
        depth: ``6n + 2`` (8, 14, 20, 32, 44, 56, 110).
        widths: Stem width then the three stage widths.
        zero_init_residual: Start each block's last BN at zero (identity blocks).
    """

    #: The keys of ``forward_stages``'s stages, in the order the network computes them.
    stage_names = ("stem", "stage1", "stage2", "stage3")

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], zero_init_residual: bool = False
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for i, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=True)):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
            setattr(self, f"layer{i + 1}", stages[-1])
        self.num_features = widths[-1]
        init_conv_bn(self)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward_feature_map(self, x: Tensor) -> Tensor:
        """The last stage's output ``[B, num_features, H/4, W/4]``, before pooling."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: Tensor) -> Tensor:
        """The pooled embedding ``[B, num_features]``."""
        return global_pool(self.forward_feature_map(x))

    def forward_stages(self, x: Tensor, preact: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """The pooled embedding and every stage's output, from one pass.

        Args:
            preact: Each stage's residual sum before its last ReLU instead (the stem is the
                same either way, as in RepDistiller).

        Returns:
            ``[B, num_features]`` and ``{stem: [B, C0, H, W], stage1: [B, C1, H, W],
            stage2: [B, C2, H/2, W/2], stage3: [B, num_features, H/4, W/4]}``.
        """
        x = F.relu(self.bn1(self.conv1(x)))
        stages = {"stem": x}
        layers = (self.layer1, self.layer2, self.layer3)
        for name, layer in zip(self.stage_names[1:], layers, strict=True):
            *body, last = layer
            for block in body:
                x = block(x)
            before = last.forward_preact(x)
            x = F.relu(before)
            stages[name] = before if preact else x
        return global_pool(x), stages


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def factory(zero_init_residual: bool = False) -> CifarResNet:
        return CifarResNet(depth, widths, zero_init_residual)

    factory.__doc__ = f"CIFAR {name}: depth {depth}, widths {widths}."
    register_backbone(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
_register("resnet8x4", 8, (32, 64, 128, 256))
_register("resnet32x4", 32, (32, 64, 128, 256))
