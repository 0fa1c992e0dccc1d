"""One rank of the CPU DDP check of CRD's memory banks (run by test_crd_ddp.py).

Usage: python ddp_crd_worker.py OUT_DIR TEACHER_CKPT GLOBAL_BATCH. Trains one step on
digits in dataset order, so the DDP ranks together see the same global batch as a single
process, and saves the banks to rank{r}_of{world}.pt. The backbones are small ViTs: with
no batch norm, a sample's embedding does not depend on how the batch is split.
"""

import os
import sys

import lightning as L
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import InOrderDigits  # noqa: E402

from distill.data import SupervisedViews  # noqa: E402
from distill.methods import CRD  # noqa: E402

VIT = {"image_size": 32, "patch_size": 8}


def main(out_dir: str, teacher: str, global_batch: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    L.seed_everything(0)
    model = CRD(
        student_backbone="vit_tiny", teacher_backbone="vit_tiny", teacher_checkpoint=teacher,
        student_backbone_kwargs=VIT, teacher_backbone_kwargs=VIT,
        num_classes=10, num_negatives=32, embed_dim=8, sampler="uniform",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
        max_steps=1, limit_val_batches=0, logger=False, use_distributed_sampler=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    # Views without random padding or flips: a sample looks the same in every process.
    views = SupervisedViews(crop_size=32, padding=0, hflip_prob=0.0)
    data = InOrderDigits(batch_size=int(global_batch) // world, views=views)
    # DDP re-seeds every rank before setup, where the banks are drawn; do the same here.
    L.seed_everything(0)
    trainer.fit(model, datamodule=data)
    banks = {
        "student": model.crd.student_memory.rows,
        "teacher": model.crd.teacher_memory.rows,
        "world": trainer.world_size,
    }
    torch.save(banks, os.path.join(out_dir, f"rank{trainer.global_rank}_of{world}.pt"))


if __name__ == "__main__":
    main(*sys.argv[1:])
