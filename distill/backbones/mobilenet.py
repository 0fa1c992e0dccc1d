"""torchvision's MobileNetV2 (random init, never downloaded) as a feature extractor, with an
optional CIFAR stem: a stride-1 first convolution, so 32 px inputs end at 2x2 instead of 1x1.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

from distill.backbones import register_backbone
from distill.backbones.common import global_pool


class MobileNetV2Features(nn.Module):
    """MobileNetV2's convolutional ``features``, global average pooling, flattening.

    Args:
        width_mult: Channel width multiplier of torchvision's MobileNetV2.
        cifar_stem: First convolution with stride 1 instead of 2.
    """

    def __init__(self, width_mult: float = 1.0, cifar_stem: bool = False) -> None:
        super().__init__()
        model = tv_mobilenet_v2(weights=None, width_mult=width_mult)
        if cifar_stem:
            model.features[0][0].stride = (1, 1)
        self.features = model.features
        self.num_features = model.last_channel

    def forward_feature_map(self, images: Tensor) -> Tensor:
        """The output of ``features`` ``[B, num_features, h, w]``, before pooling."""
        return self.features(images)

    def forward(self, images: Tensor) -> Tensor:
        """Pooled features ``[B, num_features]``."""
        return global_pool(self.features(images))


@register_backbone("mobilenetv2")
def mobilenetv2(width_mult: float = 1.0, cifar_stem: bool = False) -> nn.Module:
    """torchvision MobileNetV2 without its classifier (1280 features at width 1)."""
    return MobileNetV2Features(width_mult, cifar_stem)
