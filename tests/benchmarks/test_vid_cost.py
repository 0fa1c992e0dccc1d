"""benchmarks/vid_cost.py counts VID's regressors' FLOPs as their 1×1 convolutions make them."""

from __future__ import annotations

import re


def test_regressor_flops_are_three_1x1_convolutions_a_stage_forward_and_backward(vid_cost, capsys):
    vid_cost.main(["--batch-size", "8", "--repeats", "1"])
    out = capsys.readouterr().out
    printed = float(re.search(r"\| VID regressors, forward \+ backward \| ([\d.]+) \|", out)[1])
    # resnet8x4's stages: 64 channels at 32x32, 128 at 16x16, 256 at 8x8, the teacher's
    # widths the same; VIDLoss(C, C, C) is three C->C 1x1 convolutions, 2 FLOPs a
    # multiply-add, and a backward with the input's gradient costs twice the forward.
    forward = sum(2 * 8 * hw * 3 * c * c for c, hw in ((64, 32 * 32), (128, 16 * 16), (256, 8 * 8)))
    assert abs(printed - 3 * forward / 1e9) <= 0.05  # the table prints one decimal
    assert "| teacher forward + student step |" in out
