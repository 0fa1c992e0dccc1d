"""One rank of the CPU DDP check of SEED's and DisCo's queues (run by test_frozen_teacher_ddp.py).

Usage: python ddp_frozen_teacher_worker.py METHOD OUT_DIR TEACHER_CHECKPOINT. Trains three
steps of SEED or DisCo (METHOD ``seed`` or ``disco``) on the colour images (4 per rank,
queues of 20 rows) with the frozen teacher of TEACHER_CHECKPOINT and saves the queue, this
rank's own rows of the last step (before they are gathered) and the teacher's state to
{METHOD}_rank{r}.pt. DDP's own buffer broadcast is turned off, so equal queues on
the ranks can only come from the method gathering every rank's rows.
"""

import os
import sys

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import ColourDataModule  # noqa: E402

from distill.data import TwoViews  # noqa: E402
from distill.methods import SEED, DisCo  # noqa: E402


class LastLocalRows(L.Callback):
    """Keeps this rank's own rows of the last step, before the module gathers them."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pending = getattr(pl_module, "_pending", None)
        self.rows = (pending if pending is not None else pl_module._pending_keys).clone()


def fit(method: str, out_dir: str, teacher_checkpoint: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    L.seed_everything(0)
    common = dict(
        student_backbone="resnet8", teacher_backbone="resnet14",
        teacher_checkpoint=teacher_checkpoint, teacher_proj_hidden_dim=32, teacher_proj_dim=16,
        proj_hidden_dim=16, queue_size=20,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )  # fmt: skip
    model = SEED(**common) if method == "seed" else DisCo(key_momentum=0.9, **common)
    last = LastLocalRows()
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy=DDPStrategy(broadcast_buffers=False),
        max_steps=3, limit_val_batches=0, logger=False, callbacks=[last],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=ColourDataModule(batch_size=4, views=TwoViews(blur_prob=0)))
    queue = model.queue if method == "seed" else model.student.queue
    torch.save(
        {
            "queue": {name: value.clone() for name, value in queue.state_dict().items()},
            "local": last.rows,
            "teacher": model.teacher.state_dict(),
            "world": trainer.world_size,
        },
        os.path.join(out_dir, f"{method}_rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    fit(*sys.argv[1:])
