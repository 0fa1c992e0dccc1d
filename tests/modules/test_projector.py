import math

import pytest
import torch
from torch import nn

from distill.modules.projector import FeatureMapProjector, embedding_projector

EPS64 = torch.finfo(torch.float64).eps


def test_linear_and_identity_projectors():
    assert embedding_projector(16, 32, "linear")(torch.randn(4, 16)).shape == (4, 32)
    features = torch.randn(4, 16)
    assert torch.equal(embedding_projector(16, 16, "identity")(features), features)
    with pytest.raises(ValueError, match="equal widths, got 16 → 32"):
        embedding_projector(16, 32, "identity")


def test_mlp_is_simregs_four_layer_head():
    mlp = embedding_projector(16, 24, "mlp")
    linears = [(m.in_features, m.out_features) for m in mlp if isinstance(m, nn.Linear)]
    assert linears == [(16, 32), (32, 16), (16, 32), (32, 24)]
    # Batch norm and ReLU after the first layer of the projection and of the prediction only.
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"] * 2
    assert mlp(torch.randn(4, 16)).shape == (4, 24)


def bilinear_weights(out_size, in_size):
    """Per output index: [(input index, weight)] of align_corners=False bilinear sampling:
    source ``(i + ½)·in/out − ½``, clamped at 0, between its floor and the next index."""
    rows = []
    for i in range(out_size):
        source = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        low = min(math.floor(source), in_size - 1)
        high = min(low + 1, in_size - 1)
        frac = source - low
        rows.append([(low, 1 - frac), (high, frac)])
    return rows


def reference_projection(feature_map, weight, scale, shift, grid):
    """Float64 by hand: a 1x1 conv (``weight`` [C_t, C_s]), then ``scale·x + shift`` per channel
    (eval batch norm), then each token of ``grid`` as the bilinear mix of its source tokens.
    Also the same sums over absolute values (for the error bound)."""
    batch, channels, height, width = feature_map.shape
    out = torch.zeros(batch, len(weight), *grid, dtype=torch.float64)
    size = torch.zeros_like(out)
    rows, cols = bilinear_weights(grid[0], height), bilinear_weights(grid[1], width)
    for b in range(batch):
        for c in range(len(weight)):
            for i, row in enumerate(rows):
                for j, col in enumerate(cols):
                    for y, wy in row:
                        for x, wx in col:
                            token = feature_map[b, :, y, x].double()
                            conv = float(weight[c].double() @ token)
                            out[b, c, i, j] += wy * wx * (scale[c] * conv + shift[c])
                            conv_abs = float(weight[c].double().abs() @ token.abs())
                            size[b, c, i, j] += wy * wx * (abs(scale[c]) * conv_abs + abs(shift[c]))
    return out, size


@pytest.mark.parametrize(
    ("student_grid", "teacher_grid"), [((8, 8), (4, 4)), ((3, 5), (4, 4)), ((4, 4), (4, 4))]
)
def test_feature_map_is_projected_per_token_then_resized_to_the_teachers_grid(
    student_grid, teacher_grid
):
    torch.manual_seed(0)
    projector = FeatureMapProjector(6, 5).double()
    batch_norm = projector.project[1]
    batch_norm.running_mean.uniform_(-1, 1)
    batch_norm.running_var.uniform_(0.5, 2)
    nn.init.uniform_(batch_norm.weight, 0.5, 1.5)
    nn.init.uniform_(batch_norm.bias, -0.5, 0.5)
    projector.eval()
    feature_map = torch.randn(2, 6, *student_grid, dtype=torch.float64)
    with torch.no_grad():
        got = projector(feature_map, teacher_grid)
    weight = projector.project[0].weight[:, :, 0, 0].detach()
    scale = batch_norm.weight.detach() / (batch_norm.running_var + batch_norm.eps).sqrt()
    shift = batch_norm.bias.detach() - batch_norm.running_mean * scale
    expected, size = reference_projection(
        feature_map, weight, scale.tolist(), shift.tolist(), teacher_grid
    )
    assert got.shape == (2, 5, *teacher_grid)
    # Float64: the 6-term dot product, the normalisation and the 4-term mix are ~20 roundings
    # of the sum of the absolute terms.
    assert ((got - expected).abs() <= 20 * EPS64 * size).all()


def test_an_integer_downscale_by_two_averages_each_2x2_block():
    projector = FeatureMapProjector(3, 3, identity=True)
    feature_map = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64).reshape(2, 3, 8, 8)
    expected = feature_map.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2))
    # Weights ½·½ of entries below 400: a few roundings of 2**-53 · 400, far below 1e-12.
    torch.testing.assert_close(projector(feature_map, (4, 4)), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="equal widths, got 3 → 4"):
        FeatureMapProjector(3, 4, identity=True)
