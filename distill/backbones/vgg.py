"""VGG with batch norm for CIFAR (Simonyan & Zisserman 2015), as in RepDistiller: five conv
stages with max-pooling between them and a global average pool; feature dim 512.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.backbones import register_backbone
from distill.backbones.common import global_pool, init_conv_bn

_STAGES = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(nn.Module):
    """VGG-BN for 32x32 inputs.

    Args:
        stages: Conv widths per stage (five stages).
    """

    def __init__(self, stages: list[list[int]]) -> None:
        super().__init__()
        blocks, in_channels = [], 3
        for widths in stages:
            layers: list[nn.Module] = []
            for width in widths:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width)]
                layers.append(nn.ReLU(inplace=True))
                in_channels = width
            # The stage's last ReLU is applied in forward, so its pre-activation is reachable.
            blocks.append(nn.Sequential(*layers[:-1]))
        self.blocks = nn.ModuleList(blocks)
        self.num_features = in_channels
        init_conv_bn(self)

    def forward_feature_map(self, x: Tensor) -> Tensor:
        """The last stage's output ``[B, num_features, h, w]`` (after its ReLU), before pooling."""
        for i, block in enumerate(self.blocks):
            x = F.relu(block(x))
            # Halve the resolution after stages 1-3 (and after 4 on 64 px inputs).
            if i < 3 or (i == 3 and x.shape[-1] >= 8):
                x = F.max_pool2d(x, 2)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """The pooled embedding ``[B, num_features]``."""
        return global_pool(self.forward_feature_map(x))


@register_backbone("vgg8")
def vgg8() -> VGG:
    """VGG-8 with batch norm (one conv per stage)."""
    return VGG(_STAGES["vgg8"])


@register_backbone("vgg11")
def vgg11() -> VGG:
    """VGG-11 with batch norm."""
    return VGG(_STAGES["vgg11"])


@register_backbone("vgg13")
def vgg13() -> VGG:
    """VGG-13 with batch norm."""
    return VGG(_STAGES["vgg13"])
