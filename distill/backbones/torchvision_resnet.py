"""torchvision's ResNet-18/50 (random init, never downloaded) as feature extractors, with
an optional CIFAR stem: a 3x3 stride-1 first convolution and no max-pool, for 32 px inputs.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from distill.backbones import register_backbone


class ResNetFeatures(ResNet):
    """torchvision's ``ResNet`` (its ``forward``, state dict and initialisation) with the last
    feature map reachable: ``forward_feature_map``, the output of ``layer4``."""

    def forward_feature_map(self, x: Tensor) -> Tensor:
        """``layer4``'s output ``[B, num_features, h, w]``, before pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _feature_extractor(model: ResNet, cifar_stem: bool) -> nn.Module:
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    model.num_features = model.fc.in_features
    model.fc = nn.Identity()
    model.classifier_key = "fc"  # where torchvision's state dict holds the classifier taken off
    return model


@register_backbone("resnet18")
def resnet18(cifar_stem: bool = False, zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-18 without its classifier (512 features)."""
    model = ResNetFeatures(BasicBlock, [2, 2, 2, 2], zero_init_residual=zero_init_residual)
    return _feature_extractor(model, cifar_stem)


@register_backbone("resnet50")
def resnet50(cifar_stem: bool = False, zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-50 without its classifier (2048 features)."""
    model = ResNetFeatures(Bottleneck, [3, 4, 6, 3], zero_init_residual=zero_init_residual)
    return _feature_extractor(model, cifar_stem)
