import pytest
import torch

from distill.backbones import available_backbones, create_backbone, register_backbone
from distill.errors import ConfigError

CIFAR_NAMES = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13",
]  # fmt: skip


def test_literature_backbones_are_registered():
    names = set(available_backbones())
    assert set(CIFAR_NAMES) | {"resnet18", "resnet50", "vit_tiny", "vit_small"} <= names
    assert available_backbones() == sorted(names)


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_output_width_is_num_features(name):
    backbone = create_backbone(name)
    out = backbone(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, backbone.num_features)


def test_unknown_name_lists_available():
    with pytest.raises(ConfigError, match="Unknown backbone 'resnet21'.*resnet20.*wrn_40_2"):
        create_backbone("resnet21")


def test_unknown_argument_is_named_with_accepted_ones():
    with pytest.raises(ConfigError, match="'resnet18' does not take widht.*cifar_stem"):
        create_backbone("resnet18", widht=2)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="twice"):
        register_backbone("resnet20")(lambda: None)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "vgg8"])
def test_gradient_reaches_the_first_convolution(name):
    backbone = create_backbone(name)
    backbone(torch.randn(2, 3, 32, 32)).sum().backward()
    first = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
