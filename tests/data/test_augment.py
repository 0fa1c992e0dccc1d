import math

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from distill.data.augment import (
    CODE_BITS,
    IDENTITY_FACTORS,
    NUM_UNIFORMS,
    ViewSpec,
    draw_codes,
    group_params,
    sample_params,
    spec_table,
)

SPEC = ViewSpec(size=16, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.8)


def params_of(codes, spec=SPEC, height=40, width=30):
    rows = len(codes)
    table = spec_table([spec]).expand(rows, -1)
    return sample_params(codes, table, torch.full((rows,), height), torch.full((rows,), width))


def test_codes_are_int32_below_two_to_the_24():
    codes = draw_codes(1000)
    assert codes.dtype == torch.int32 and codes.shape == (1000, NUM_UNIFORMS)
    assert codes.min() >= 0 and codes.max() < 2**CODE_BITS


def test_a_row_depends_only_on_its_own_codes():
    torch.manual_seed(0)
    codes = draw_codes(64)
    alone = [params_of(codes[i : i + 1]) for i in range(64)]
    together = params_of(codes)
    for i, one in enumerate(alone):
        for field, value in zip(together, one, strict=True):
            assert torch.equal(field[i : i + 1], value)


def test_boxes_fit_the_image_with_ratio_and_scale_in_range():
    torch.manual_seed(1)
    box = params_of(draw_codes(5000)).box
    top, left, h, w = box.unbind(1)
    assert (
        (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 30).all()
    )
    area = h * w / (40 * 30)
    # Rounding w and h to pixels moves the area fraction and ratio a little past the ranges.
    assert area.min() >= 0.2 - 0.03 and area.max() <= 1.0
    assert (w / h).min() >= 3 / 4 - 0.1 and (w / h).max() <= 4 / 3 + 0.1


def test_no_fitting_try_falls_back_to_torchvision_central_crop():
    # A 1000 x 10 image: at least half its area in a 3/4-4/3 ratio never fits its height.
    spec = ViewSpec(size=8, scale=(0.5, 1.0))
    torch.manual_seed(2)
    box = params_of(draw_codes(20), spec, height=10, width=1000).box
    reference = v2.RandomResizedCrop(8, scale=(0.5, 1.0)).make_params(
        [Image.new("RGB", (1000, 10))]
    )
    expected = [reference[key] for key in ("top", "left", "height", "width")]
    assert (box == torch.tensor(expected, dtype=box.dtype)).all()


def test_padded_crop_is_the_crop_size_and_starts_within_the_padding():
    spec = ViewSpec(size=32, padding=4)
    torch.manual_seed(3)
    box = params_of(draw_codes(4000), spec, height=32, width=32).box
    top, left, h, w = box.unbind(1)
    assert (h == 32).all() and (w == 32).all()
    # torchvision's RandomCrop(32, padding=4): 9 equally likely starts per axis.
    assert set(top.tolist()) == set(range(-4, 5)) == set(left.tolist())
    assert torch.bincount((top + 4).long()).min() > 4000 / 9 * 0.8


def test_unjittered_rows_get_identity_factors_and_jittered_rows_factors_in_range():
    torch.manual_seed(4)
    params = params_of(draw_codes(4000))
    identity = (params.factors == torch.tensor(IDENTITY_FACTORS)).all(1)
    jittered = params.factors[~identity]
    assert jittered[:, :3].min() >= 0.6 and jittered[:, :3].max() <= 1.4
    assert jittered[:, 3].abs().max() <= 0.1
    assert sorted(params.order[0].tolist()) == [0, 1, 2, 3]


def test_group_rows_are_view_major():
    torch.manual_seed(5)
    specs = [ViewSpec(size=16), ViewSpec(size=16, hflip_prob=0.0), ViewSpec(size=8)]
    codes, sizes = torch.stack([draw_codes(3) for _ in range(4)]), torch.tensor([[20, 24]] * 4)
    params = group_params(codes, sizes, spec_table(specs), 0, 2)
    assert len(params.box) == 8
    view1 = params_of(codes[:, 1], specs[1], 20, 24)
    assert torch.equal(params.box[4:], view1.box) and not params.flip[4:].any()


@pytest.mark.parametrize("hue", [0.6, -0.1])
def test_hue_jitter_outside_half_a_turn_is_refused(hue):
    with pytest.raises(ValueError, match="hue"):
        ViewSpec(size=8, jitter=(0.0, 0.0, 0.0, hue))


def test_log_ratio_bounds_are_stored_for_the_sampler():
    row = spec_table([SPEC])[0]
    assert math.isclose(float(row[4]), math.log(3 / 4)) and math.isclose(
        float(row[5]), math.log(4 / 3)
    )
