"""Compiled backbones under 2-process CPU DDP: the student equal on both ranks and to one
process."""

from pathlib import Path

import pytest
import torch
from tests_support import NETWORK64_TOL, launch_ddp, load_worker

WORKER = Path(__file__).with_name("ddp_compile_worker.py")
pytestmark = [pytest.mark.numerics, pytest.mark.compiles]


def test_compiled_student_agrees_across_ranks_and_with_one_process(tmp_path):
    launch_ddp(WORKER, [tmp_path, 8], world=2)
    load_worker(WORKER).main(str(tmp_path), "8")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}_of2.pt") for r in (0, 1))
    single = torch.load(tmp_path / "rank0_of1.pt")
    assert rank0["world"] == 2 and single["world"] == 1
    # Each rank trained through its compiled backbone (a fresh process: its graphs are new).
    assert rank0["compiled"] and rank1["compiled"] and single["compiled"]
    assert rank0["graphs"] >= 1 and rank1["graphs"] >= 1
    moved = 0
    for name, value in rank0["student"].items():
        # DDP's averaged gradients: the same step on both ranks, bit for bit.
        assert torch.equal(value, rank1["student"][name]), name
        # Two halves of 4 images average to the gradient of the 8: one process's step, up
        # to the float64 rounding of a network computed two ways (NETWORK64_TOL).
        expected = single["student"][name]
        torch.testing.assert_close(value, expected, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)
        moved += not torch.equal(value, rank0["start"][name])
    assert moved == len(rank0["student"])  # every parameter took its steps
