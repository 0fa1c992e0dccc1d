import torch

from distill.backbones import create_backbone


def stem_output_size(backbone, size):
    stem = torch.nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
    return stem(torch.randn(1, 3, size, size)).shape[-1]


def test_resnet18_without_classifier_has_torchvision_parameter_count():
    backbone = create_backbone("resnet18")
    assert sum(p.numel() for p in backbone.parameters()) == 11_176_512
    assert backbone.num_features == 512


def test_cifar_stem_keeps_full_resolution():
    assert stem_output_size(create_backbone("resnet18", cifar_stem=True), 32) == 32
    assert stem_output_size(create_backbone("resnet18"), 64) == 16


def test_feature_widths():
    assert create_backbone("resnet18", cifar_stem=True)(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    resnet50 = create_backbone("resnet50").eval()
    assert resnet50(torch.randn(1, 3, 64, 64)).shape == (1, 2048) and resnet50.num_features == 2048
