"""KNNEval and LinearProbe under 2-process CPU DDP (gloo): gathered features, same state."""

from pathlib import Path

import torch
from tests_support import launch_ddp

WORKER = Path(__file__).with_name("ddp_eval_worker.py")


def test_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    launch_ddp(WORKER, [tmp_path], world=2)
    launch_ddp(WORKER, [tmp_path], world=1)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}_of2.pt") for r in (0, 1))
    single = torch.load(tmp_path / "rank0_of1.pt")
    assert rank0["world"] == 2 and single["world"] == 1
    # Gathered features: both ranks see the whole bank and val set, as one process does.
    assert rank0["knn"] == rank1["knn"] == single["knn"]
    assert set(rank0["knn"]) == {"val/knn_top1", "val/knn_k3_top1", "val/knn_top5"}
    for name, value in rank0["probe"].items():
        assert torch.equal(value, rank1["probe"][name]), name
