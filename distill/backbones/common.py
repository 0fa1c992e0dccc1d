"""Initialisation shared by the CIFAR networks."""

from torch import nn


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
