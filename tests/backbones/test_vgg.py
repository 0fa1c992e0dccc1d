import pytest
import torch

from distill.backbones import create_backbone


@pytest.mark.parametrize("name, millions", [("vgg8", 3.97), ("vgg13", 9.46)])
def test_published_parameter_counts(name, millions):
    backbone = create_backbone(name)
    total = sum(p.numel() for p in backbone.parameters()) + 512 * 100 + 100
    assert total / 1e6 == pytest.approx(millions, abs=0.005)


def test_vgg13_has_two_convolutions_per_stage():
    convs = [m for m in create_backbone("vgg13").modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 10


def test_larger_inputs_are_pooled_to_the_same_width():
    backbone = create_backbone("vgg8").eval()
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 512)
