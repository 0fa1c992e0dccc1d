"""One rank of the CPU DDP check of DINO's teacher and center (run by test_dino_ddp.py).

Usage: python ddp_dino_worker.py OUT_DIR GLOBAL_BATCH. Trains two steps on digits in
dataset order with fixed (not random) crops, so the DDP ranks together see the same global
batch as a single process, and saves the teacher and the center to rank{r}_of{world}.pt.
The backbone is a small ViT (its local crops use the interpolated position embedding): with
no batch norm, a sample's output does not depend on how the batch is split, up to rounding,
which 64-true precision keeps at float64's level (the loss and the center stay float32, by
design). SGD, not AdamW: Adam's normalisation would blow float noise in near-zero gradients
up to full-size steps.
"""

import os
import sys

import lightning as L
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import FixedViews, InOrderDigits  # noqa: E402

from distill.methods import DINO  # noqa: E402


class LargestTeacherOutput(L.Callback):
    """The largest |teacher output| of any step: the scale of the center's float32 sums."""

    largest = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = max(float(t.abs().max()) for t in pl_module._teacher_out)
        self.largest = max(self.largest, step)


def main(out_dir: str, global_batch: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    L.seed_everything(0)
    model = DINO(
        backbone="vit_tiny", backbone_kwargs={"image_size": 32, "patch_size": 8},
        output_dim=32, hidden_dim=16, bottleneck_dim=8, freeze_last_layer=0,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5), lr_schedule="constant",
    )  # fmt: skip
    largest = LargestTeacherOutput()
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
        precision="64-true", callbacks=[largest],
        max_steps=2, limit_val_batches=0, logger=False, use_distributed_sampler=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    data = InOrderDigits(batch_size=int(global_batch) // world, views=FixedViews(2, 4))
    trainer.fit(model, datamodule=data)
    state = {
        "teacher": model.teacher.state_dict(),
        "student": model.student.state_dict(),
        "center": model.dino_loss.center,
        "lr": trainer.optimizers[0].param_groups[0]["lr"],
        "world": trainer.world_size,
        "largest_teacher_output": largest.largest,
    }
    torch.save(state, os.path.join(out_dir, f"rank{trainer.global_rank}_of{world}.pt"))


if __name__ == "__main__":
    main(*sys.argv[1:])
