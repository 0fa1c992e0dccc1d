import pytest
import torch
from tests_support import EPS32
from torchvision.models import mobilenet_v2

from distill.backbones import available_backbones, create_backbone


@pytest.mark.numerics
def test_mobilenetv2_is_torchvisions_features_with_pooled_output():
    backbone = create_backbone("mobilenetv2").eval()
    assert "mobilenetv2" in available_backbones()
    assert backbone.num_features == 1280
    reference = sum(p.numel() for p in mobilenet_v2(weights=None).features.parameters())
    assert sum(p.numel() for p in backbone.parameters()) == reference == 2_223_872
    images = torch.randn(2, 3, 64, 64)
    features = backbone.features(images)
    expected = features.mean(dim=(2, 3))
    # Pooling and mean: each sums the 2 x 2 grid and divides, in its own order (5 roundings).
    error = 2 * 5 * EPS32 * features.abs().max().item()
    torch.testing.assert_close(backbone(images), expected, rtol=0, atol=error)


def test_cifar_stem_halves_the_total_stride():
    images = torch.randn(1, 3, 64, 64)
    assert create_backbone("mobilenetv2").features(images).shape[-1] == 2
    assert create_backbone("mobilenetv2", cifar_stem=True).features(images).shape[-1] == 4


def test_width_multiplier_changes_the_feature_width():
    backbone = create_backbone("mobilenetv2", width_mult=1.4)
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, backbone.num_features) == (2, 1792)
