"""One rank of the CPU DDP check of ReKD's queues and prototypes (run by test_rekd_ddp.py).

Usage: python ddp_rekd_worker.py OUT_DIR. Trains four steps of ReKD on the colour images
(4 per rank, queues of 16 keys: full after step 2, when the prototype bank is initialised,
then updated at steps 3 and 4) and saves the state to rank{r}.pt. DDP's own buffer
broadcast is turned off, so equal state on the ranks can only come from ReKD gathering
every rank's keys and embeddings and broadcasting rank 0's prototypes. Each rank seeds its
k-means differently, as a stand-in for floating-point differences between devices that
would make their k-means diverge.
"""

import os
import sys

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import ColourDataModule  # noqa: E402

from distill.data import TwoViews  # noqa: E402
from distill.methods import ReKD  # noqa: E402


class LastLocalBatch(L.Callback):
    """Keeps this rank's own keys and labels of the last step (before they are gathered)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        student_k, teacher_k, _, targets = pl_module._pending
        self.local = {"student_k": student_k, "teacher_k": teacher_k, "targets": targets}


def main(out_dir: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    L.seed_everything(0)
    model = ReKD(
        student_backbone="resnet8", teacher_backbone="resnet8", proj_hidden_dim=16, proj_dim=8,
        queue_size=16, num_prototypes=3, threshold=0.0,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )  # fmt: skip
    model.prototypes.seed = 1 + int(os.environ.get("LOCAL_RANK", "0"))
    last = LastLocalBatch()
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy=DDPStrategy(broadcast_buffers=False),
        max_steps=4, limit_val_batches=0, logger=False, callbacks=[last],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=ColourDataModule(batch_size=4, views=TwoViews(blur_prob=0)))
    names = ("student.queue", "teacher.queue", "prototypes", "student.key_", "teacher.key_")
    state = {k: v for k, v in model.state_dict().items() if k.startswith(names)}
    state = {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}
    torch.save(
        {"state": state, "local": last.local, "world": trainer.world_size},
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
