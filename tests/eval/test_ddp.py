"""KNNEval and LinearProbe under 2-process CPU DDP (gloo): gathered features, same state."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_eval_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(out_dir: Path, world: int) -> None:
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
            "WORLD_SIZE": str(world),
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
        }
        if world == 1:
            for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK"):
                env.pop(key)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(out_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output


def test_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    launch(tmp_path, world=2)
    launch(tmp_path, world=1)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}_of2.pt") for r in (0, 1))
    single = torch.load(tmp_path / "rank0_of1.pt")
    assert rank0["world"] == 2 and single["world"] == 1
    # Gathered features: both ranks see the whole bank and val set, as one process does.
    assert rank0["knn"] == rank1["knn"] == single["knn"]
    assert set(rank0["knn"]) == {"val/knn_top1", "val/knn_k3_top1", "val/knn_top5"}
    for name, value in rank0["probe"].items():
        assert torch.equal(value, rank1["probe"][name]), name
