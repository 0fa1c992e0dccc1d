"""VGG with batch norm for CIFAR (Simonyan & Zisserman 2015), as in RepDistiller: five conv
stages with max-pooling between them and a global average pool; feature dim 512.

Stages (``forward_stages``), as RepDistiller's ``feat`` and ``preact`` lists: ``stem`` (the first
conv stage) and ``stage1`` to ``stage4``, each after its ReLU and before the max-pool that
follows it, or, with ``preact``, before that ReLU (the stem is after its ReLU either way).
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

    #: The keys of ``forward_stages``'s stages, in the order the network computes them.
    stage_names = ("stem", "stage1", "stage2", "stage3", "stage4")

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
            if _pools_after(i, x):
                x = F.max_pool2d(x, 2)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """The pooled embedding ``[B, num_features]``."""
        return global_pool(self.forward_feature_map(x))

    def forward_stages(self, x: Tensor, preact: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """The pooled embedding and every stage's output, from one pass.

        Args:
            preact: Each stage before its ReLU (the stem is after its ReLU either way, as in
                RepDistiller).

        Returns:
            ``[B, num_features]`` and ``{stem: [B, 64, H, W], stage1: [B, 128, H/2, W/2],
            stage2: [B, 256, H/4, W/4], stage3: [B, 512, H/8, W/8], stage4: [B, 512, h, w]}``
            (``h = H/8`` on 32 px inputs, ``H/16`` on 64 px).
        """
        stages = {}
        for i, (name, block) in enumerate(zip(self.stage_names, self.blocks, strict=True)):
            before = block(x)
            x = F.relu(before)
            stages[name] = before if preact and i > 0 else x
            if _pools_after(i, x):
                x = F.max_pool2d(x, 2)
        return global_pool(x), stages


def _pools_after(stage: int, x: Tensor) -> bool:
    """Whether the resolution halves after ``stage``: after stages 0-2, and after 3 on 64 px
    inputs (an ``x`` of 8 px or more there)."""
    return stage < 3 or (stage == 3 and x.shape[-1] >= 8)


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
