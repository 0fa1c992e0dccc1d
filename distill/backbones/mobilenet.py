"""torchvision's MobileNetV2 (random init, never downloaded) as a feature extractor, with an
optional CIFAR stem: a stride-1 first convolution, so 32 px inputs end at 2x2 instead of 1x1.

Stages (``forward_stages``), where RepDistiller's MobileNetV2 takes its ``feat`` list: ``stem``
(the first convolution, after its ReLU6) and ``stage1`` to ``stage4``, the outputs of the
24-, 32-, 96- and 320-channel block groups (at width 1). Those blocks end in a linear
projection, so ``preact`` changes nothing, as in RepDistiller.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

from distill.backbones import register_backbone
from distill.backbones.common import global_pool

#: The stages by their index in torchvision's ``features``: the stem, then the last block of
#: the groups that torchvision's ``inverted_residual_setting`` widens to 24, 32, 96 and 320.
_STAGE_ENDS = {0: "stem", 3: "stage1", 6: "stage2", 13: "stage3", 17: "stage4"}


class MobileNetV2Features(nn.Module):
    """MobileNetV2's convolutional ``features``, global average pooling, flattening.

    Args:
        width_mult: Channel width multiplier of torchvision's MobileNetV2.
        cifar_stem: First convolution with stride 1 instead of 2.
    """

    #: The keys of ``forward_stages``'s stages, in the order the network computes them.
    stage_names = tuple(_STAGE_ENDS.values())

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

    def forward_stages(
        self, images: Tensor, preact: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The pooled embedding and every stage's output, from one pass.

        Args:
            preact: Accepted for the common interface; the stages end without activation.

        Returns:
            ``[B, num_features]`` and ``{stem, stage1, ..., stage4}``, at width 1 ``[B, 32,
            H/s, W/s]``, ``[B, 24, H/2s, ...]``, ``[B, 32, H/4s, ...]``, ``[B, 96, H/8s, ...]``,
            ``[B, 320, H/16s, ...]`` (``s`` 2, or 1 with the CIFAR stem).
        """
        stages, x = {}, images
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _STAGE_ENDS:
                stages[_STAGE_ENDS[i]] = x
        return global_pool(x), stages


@register_backbone("mobilenetv2")
def mobilenetv2(width_mult: float = 1.0, cifar_stem: bool = False) -> nn.Module:
    """torchvision MobileNetV2 without its classifier (1280 features at width 1)."""
    return MobileNetV2Features(width_mult, cifar_stem)
