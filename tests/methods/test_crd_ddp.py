"""CRD under 2-process CPU DDP (buffer broadcast off): banks and Z identical on both ranks and
equal to one process; each rank samples its own negatives, those one process would draw.
In float64 (the worker's 64-true precision): the runs split the batch differently, and only
float64 makes their agreement a matter of rounding that needs no per-network analysis."""

from pathlib import Path

import pytest
import torch
from tests_support import NETWORK64_TOL, launch_ddp

from distill.methods import Supervised

WORKER = Path(__file__).with_name("ddp_crd_worker.py")


# The samplers differ in the rows they draw, not in the arithmetic compared: one of them
# is enough for the numerical tests' repeats under other CPU kernels.
@pytest.mark.parametrize(
    "sampler", [pytest.param("uniform", marks=pytest.mark.numerics), "other_class"]
)
def test_state_agrees_across_ranks_and_with_one_process(tmp_path, sampler):
    torch.manual_seed(4)
    teacher = tmp_path / "teacher.ckpt"
    vit = Supervised(backbone="vit_tiny", backbone_kwargs={"image_size": 32, "patch_size": 8})
    torch.save({"state_dict": vit.state_dict()}, teacher)
    launch_ddp(WORKER, [tmp_path, teacher, 16, sampler], world=2)
    launch_ddp(WORKER, [tmp_path, teacher, 16, sampler], world=1)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}_of2.pt") for r in (0, 1))
    single = torch.load(tmp_path / "rank0_of1.pt")
    assert rank0["world"] == 2 and single["world"] == 1
    for bank in ("student", "teacher"):
        assert torch.equal(rank0[bank], rank1[bank]), bank  # every rank holds the same bank
        # Rows 0-15 of the global batch moved alike in one process and in two (gathered).
        torch.testing.assert_close(
            rank0[bank], single[bank], rtol=NETWORK64_TOL, atol=NETWORK64_TOL
        )
        assert rank0[bank].shape[0] == 1437
    # Z from the whole first global batch, the same on both ranks (all-reduced, not broadcast).
    assert torch.equal(rank0["normalizers"], rank1["normalizers"])
    z_single = single["normalizers"]
    torch.testing.assert_close(rank0["normalizers"], z_single, rtol=NETWORK64_TOL, atol=0)
    # Each rank's anchors got the rows one process draws for them: different negatives.
    assert torch.equal(torch.cat([rank0["rows"], rank1["rows"]]), single["rows"])
    assert not torch.equal(rank0["rows"][:, 1:], rank1["rows"][:, 1:])
