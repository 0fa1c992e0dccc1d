"""Initialisation and pooling shared by the convolutional backbones."""

import torch.nn.functional as F
from torch import Tensor, nn


def init_conv_bn(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) convolutions with zero bias; batch norms at identity."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def global_pool(feature_map: Tensor) -> Tensor:
    """The pooled embedding ``[B, C]`` of a last feature map ``[B, C, h, w]`` (its mean)."""
    return F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
