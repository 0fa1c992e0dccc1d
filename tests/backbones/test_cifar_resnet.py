import pytest

from distill.backbones import create_backbone


def params(name, num_classes=100):
    """Backbone parameters plus a linear head, as RepDistiller's CIFAR-100 tables count them."""
    backbone = create_backbone(name)
    head = backbone.num_features * num_classes + num_classes
    return sum(p.numel() for p in backbone.parameters()) + head


def conv(cin, cout, k=3):
    return cin * cout * k * k


def bn(c):
    return 2 * c


def test_resnet20_parameter_count_by_hand():
    # Stem, then 3 blocks per stage; stages 2 and 3 open with a projected block.
    stem = conv(3, 16) + bn(16)
    block = lambda cin, cout: conv(cin, cout) + bn(cout) + conv(cout, cout) + bn(cout)
    projection = lambda cin, cout: conv(cin, cout, 1) + bn(cout)
    stage1 = 3 * block(16, 16)
    stage2 = block(16, 32) + projection(16, 32) + 2 * block(32, 32)
    stage3 = block(32, 64) + projection(32, 64) + 2 * block(64, 64)
    head = 64 * 100 + 100
    assert stem + stage1 + stage2 + stage3 + head == 278_324 == params("resnet20")


@pytest.mark.parametrize(
    "name, millions",
    [("resnet56", 0.86), ("resnet110", 1.74), ("resnet8x4", 1.23), ("resnet32x4", 7.43)],
)
def test_published_parameter_counts(name, millions):
    assert params(name) / 1e6 == pytest.approx(millions, abs=0.005)


def test_x4_variants_are_four_times_wider():
    assert create_backbone("resnet8x4").num_features == 4 * create_backbone("resnet8").num_features


def test_zero_init_residual_starts_blocks_as_identity():
    backbone = create_backbone("resnet20", zero_init_residual=True)
    assert all(block.bn2.weight.abs().sum() == 0 for block in backbone.layer1)
