"""One rank of the CPU DDP check of shuffle-BN across ranks (run by test_shuffle_bn.py).

Usage: python ddp_shuffle_bn_worker.py OUT_DIR. Each of the two ranks holds half of the same
12 images; the key encoder's batch is shuffled across the ranks with rank 0's permutation
(torch seeded with 7 there) and the keys of this rank's images are saved to rank{r}.pt. In
float64, as the test's one-process encoder, since the two split the batch differently.
"""

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.backbones import create_backbone  # noqa: E402
from distill.modules import MomentumEncoder  # noqa: E402
from distill.modules.shuffle_bn import resolve_shuffle_bn  # noqa: E402


def main(out_dir: str) -> None:
    rank, world = int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = MomentumEncoder(create_backbone("resnet8"), proj_hidden_dim=32, proj_dim=16,
                            queue_size=8).double()  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(12, 3, 32, 32, generator=generator, dtype=torch.float64)
    mine = images.tensor_split(world)[rank]
    torch.manual_seed(7 if rank == 0 else 100 + rank)  # only rank 0's draw may matter
    keys = model.keys(mine)
    queries = model.queries(mine)
    torch.save(
        {"keys": keys, "queries": queries.detach(), "mode": resolve_shuffle_bn("auto")},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
