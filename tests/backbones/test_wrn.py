import pytest

from distill.backbones import create_backbone


@pytest.mark.parametrize(
    "name, millions, width",
    [("wrn_16_2", 0.70, 128), ("wrn_40_1", 0.57, 64), ("wrn_40_2", 2.26, 128)],
)
def test_published_parameter_counts_and_width(name, millions, width):
    backbone = create_backbone(name)
    total = sum(p.numel() for p in backbone.parameters()) + width * 100 + 100
    assert backbone.num_features == width
    assert total / 1e6 == pytest.approx(millions, abs=0.005)


def test_depth_must_be_6n_plus_4():
    from distill.backbones.wrn import WideResNet

    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(18, 2)
