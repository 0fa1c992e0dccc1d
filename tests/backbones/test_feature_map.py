"""``distill.backbones.feature_map``: a convolutional backbone's last map, before its pooling."""

import pytest
import torch
import torchvision

from distill.backbones import create_backbone, feature_map, has_feature_map
from distill.errors import ConfigError

# (name, kwargs, the map's side on 32 px inputs)
CONVOLUTIONAL = [
    ("resnet8", {}, 8),
    ("resnet8x4", {}, 8),
    ("vgg8", {}, 4),
    ("wrn_16_2", {}, 8),
    ("mobilenetv2", {"width_mult": 0.25, "cifar_stem": True}, 2),
    ("resnet18", {"cifar_stem": True}, 4),
]


def trained_statistics(backbone):
    """Eval mode with non-trivial batch-norm statistics, so a wrong layer shows in the values."""
    torch.manual_seed(0)
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return backbone.eval()


@pytest.mark.parametrize(
    ("name", "kwargs", "side"), CONVOLUTIONAL, ids=[c[0] for c in CONVOLUTIONAL]
)
def test_the_embedding_is_the_spatial_mean_of_the_feature_map(name, kwargs, side):
    backbone = trained_statistics(create_backbone(name, **kwargs)).double()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        features = feature_map(backbone, images)
        embedding = backbone(images)
    assert features.shape == (3, backbone.num_features, side, side)
    # The same layers, then the mean the pooling takes: equal up to the order of the sum, in
    # float64 at most 64 roundings of 2**-53 of the sum of the (non-negative) entries.
    bound = 64 * torch.finfo(torch.float64).eps * features.mean(dim=(2, 3))
    assert ((features.mean(dim=(2, 3)) - embedding).abs() <= bound).all()
    # The map is the last one: after the final ReLU (nothing below 0 to pool).
    assert features.min() >= 0


def test_torchvision_resnet_is_torchvisions_network_with_its_keys():
    original = torchvision.models.resnet18(weights=None)
    original.fc = torch.nn.Identity()
    trained_statistics(original)
    backbone = create_backbone("resnet18").eval()
    backbone.load_state_dict(original.state_dict())  # strict: the same keys and shapes
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), original(images), rtol=0, atol=0)


def test_a_vit_has_no_feature_map_and_says_which_backbones_do():
    vit = create_backbone("vit_tiny", image_size=32, patch_size=8)
    assert not has_feature_map(vit)
    with pytest.raises(ConfigError, match=r"backbone 'vit_tiny' has no last feature map.*resnet18"):
        feature_map(vit, torch.randn(1, 3, 32, 32))
