"""DINO under 2-process CPU DDP: teacher and center equal on both ranks and to one process."""

from pathlib import Path

import pytest
import torch
from tests_support import EPS32, NETWORK64_TOL, launch_ddp, load_worker

WORKER = Path(__file__).with_name("ddp_dino_worker.py")
pytestmark = pytest.mark.numerics


def test_teacher_and_center_agree_across_ranks_and_with_one_process(tmp_path):
    launch_ddp(WORKER, [tmp_path, 16], world=2)
    load_worker(WORKER).main(str(tmp_path), "16")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}_of2.pt") for r in (0, 1))
    single = torch.load(tmp_path / "rank0_of1.pt")
    assert rank0["world"] == 2 and single["world"] == 1
    # The same global batch of 16: the lr scaled by 16/256 in both runs.
    assert rank0["lr"] == single["lr"] == 0.5 * 16 / 256
    assert torch.equal(rank0["center"], rank1["center"])
    # The center is the mean over the global batch (all-reduced), not over a rank's half. Its
    # batch means are float32 sums of the 2 × 16 outputs (whatever the split, within n + 1
    # roundings of max|t|), weighted 0.1·0.9 (step 1) and 0.1 (step 2) in the float64 buffer.
    n, largest = 2 * 16, max(r["largest_teacher_output"] for r in (rank0, single))
    error = 2 * (n + 1) * EPS32 * largest * (0.1 * 0.9 + 0.1) + NETWORK64_TOL
    torch.testing.assert_close(rank0["center"], single["center"], rtol=0, atol=error)
    assert rank0["center"].abs().sum() > 0
    # The teacher moves at step 1 only (momentum 1 at the last step), from the float64
    # student; step 1's float32 loss gradients are those of the same samples in both runs.
    for name, value in rank0["teacher"].items():
        assert torch.equal(value, rank1["teacher"][name]), name
        expected = single["teacher"][name]
        torch.testing.assert_close(value, expected, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)
    # The teacher moved away from its start, towards the student, in every run.
    name = "head.layers.0.weight"
    assert not torch.equal(rank0["teacher"][name], rank0["student"][name])
