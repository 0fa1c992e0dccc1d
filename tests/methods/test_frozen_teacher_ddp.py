"""SEED and DisCo under 2-process CPU DDP: every rank ends with the same queue, whose last rows
are both ranks' rows of the last step, and the same untouched frozen teacher."""

from pathlib import Path

import pytest
import torch
from tests_support import launch_ddp

from distill.methods import MoCo

WORKER = Path(__file__).with_name("ddp_frozen_teacher_worker.py")


@pytest.mark.parametrize(("method", "rows"), [("seed", 8), ("disco", 4)])
def test_queues_agree_across_ranks(tmp_path, method, rows):
    torch.manual_seed(3)
    moco = MoCo(backbone="resnet14", proj_hidden_dim=32, proj_dim=16, queue_size=20)
    teacher = moco.state_dict()
    torch.save({"state_dict": teacher}, tmp_path / "teacher.ckpt")
    launch_ddp(WORKER, [method, tmp_path, tmp_path / "teacher.ckpt"], world=2)
    rank0, rank1 = (torch.load(tmp_path / f"{method}_rank{r}.pt") for r in (0, 1))
    assert rank0["world"] == 2
    for name, value in rank0["queue"].items():
        assert torch.equal(value, rank1["queue"][name]), name
    # Per step each rank has 4 images: SEED queues the teacher's embeddings of both views
    # (8 rows), DisCo the student's keys (4). Step 3 wrote, view by view, rank 0's rows, then
    # rank 1's: the order of one process's batch of both ranks' images.
    assert rank0["local"].shape[0] == rows
    assert int(rank0["queue"]["pointer"]) == 3 * 2 * rows % 20
    slots = (2 * 2 * rows + torch.arange(2 * rows)) % 20
    views = zip(rank0["local"].chunk(rows // 4), rank1["local"].chunk(rows // 4), strict=True)
    expected = torch.cat([part for view in views for part in view])
    assert torch.equal(rank0["queue"]["keys"][slots], expected)
    assert not torch.equal(rank0["local"], rank1["local"])  # the ranks saw other images
    for name, value in rank0["teacher"].items():  # untouched: the checkpoint's query encoder
        assert torch.equal(value, rank1["teacher"][name]), name
        assert torch.equal(value, teacher[f"student.{name}"]), name
