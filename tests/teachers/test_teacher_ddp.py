"""``TeacherWeights`` under 2-process CPU DDP: every rank loads the file rank 0 resolved."""

from pathlib import Path

import torch
from tests_support import launch_ddp

WORKER = Path(__file__).with_name("ddp_teacher_worker.py")


def test_every_rank_loads_the_teacher_rank_zero_resolved(tmp_path):
    launch_ddp(WORKER, [tmp_path], world=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    files = [torch.load(tmp_path / f"teacher_rank{r}.ckpt")["state_dict"] for r in (0, 1)]
    name = "backbone.conv1.weight"
    assert not torch.equal(files[0][f"student.{name}"], files[1][f"student.{name}"])
    assert rank0.keys() == rank1.keys() and len(rank0) > 10
    for name, value in rank0.items():
        assert torch.equal(value, files[0][f"student.{name}"]), name
        assert torch.equal(rank1[name], value), name
