"""One rank of the CPU DDP check of where a teacher's weights come from (test_teacher_ddp.py).

Usage: python ddp_teacher_worker.py OUT_DIR. Each rank writes a teacher checkpoint of its own
(a different seed per rank) and names it as ``teacher_checkpoint``: a stand-in for a run
directory that gained a new run between the ranks' reads. One KD step follows, then the rank
saves the teacher it trained with to rank{r}.pt.
"""

import os
import sys

import lightning as L
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import ColourDataModule  # noqa: E402

from distill.methods import KD, Supervised  # noqa: E402


def main(out_dir: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.manual_seed(rank)
    teacher = os.path.join(out_dir, f"teacher_rank{rank}.ckpt")
    torch.save({"state_dict": Supervised(backbone="resnet8", num_classes=5).state_dict()}, teacher)
    L.seed_everything(0)
    model = KD(
        student_backbone="resnet8", teacher_backbone="resnet8", teacher_checkpoint=teacher,
        num_classes=5, optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy="ddp", max_steps=1, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=ColourDataModule(batch_size=4))
    torch.save(model.teacher.state_dict(), os.path.join(out_dir, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(*sys.argv[1:])
