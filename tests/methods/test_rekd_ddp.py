"""ReKD under 2-process CPU DDP: every rank ends with the same queues and prototypes."""

from pathlib import Path

import torch
from tests_support import launch_ddp

WORKER = Path(__file__).with_name("ddp_rekd_worker.py")


def test_queues_and_prototypes_agree_across_ranks(tmp_path):
    launch_ddp(WORKER, [tmp_path], world=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["world"] == 2
    state0, state1 = rank0["state"], rank1["state"]
    assert bool(state0["prototypes.initialized"]) and int(state0["teacher.queue.filled"]) == 16
    assert state0.keys() == state1.keys() and len(state0) > 10
    for name, value in state0.items():
        assert torch.equal(value, state1[name]), name
    # Step 4 wrote 2 x 4 keys from slot 8 on: rank 0's, then rank 1's, in both queues.
    slots = torch.arange(8, 16)
    for queue in ("student", "teacher"):
        expected = torch.cat([rank0["local"][f"{queue}_k"], rank1["local"][f"{queue}_k"]])
        assert torch.equal(state0[f"{queue}.queue.keys"][slots], expected), queue
    labels = torch.cat([rank0["local"]["targets"], rank1["local"]["targets"]])
    assert torch.equal(state0["teacher.queue.labels"][slots], labels)
    assert not torch.equal(rank0["local"]["teacher_k"], rank1["local"]["teacher_k"])
