"""One rank of a fit interrupted mid-epoch or resumed on another number of ranks (run by
test_topology_resume.py).

Usage: python topology_worker.py METHOD OUT_DIR PHASE BATCH_SIZE STOP_AFTER [CKPT_PATH].
One epoch on 40 colour images; ``STOP_AFTER`` > 0 raises Lightning's stop flag after that
many batches, and ``MethodCheckpoint`` writes the interrupted ``OUT_DIR/PHASE/last.ckpt``;
``CKPT_PATH`` resumes from a checkpoint. Saves to ``OUT_DIR/PHASE_rank{r}.pt`` the dataset
indices of every batch this rank trained, the module's state when training starts (after the
checkpoint was restored) and when the fit ends, and the schedule's position. CRD's teacher
is ``OUT_DIR/teacher.ckpt``.
"""

import os
import sys

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import ColourDataModule, RecordIndices, StopFlagAfter  # noqa: E402

from distill.callbacks import MethodCheckpoint  # noqa: E402
from distill.data import TwoViews  # noqa: E402
from distill.methods import CRD, DINO, MoCo, ReKD, Supervised  # noqa: E402

SGD = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731


def make(method: str, out_dir: str) -> L.LightningModule:
    if method == "supervised":
        return Supervised(backbone="resnet8", num_classes=5, optimizer=SGD)
    if method == "moco":
        return MoCo(backbone="resnet8", proj_hidden_dim=16, proj_dim=8, queue_size=48,
                    optimizer=SGD)  # fmt: skip
    if method == "dino":
        return DINO(backbone="resnet8", output_dim=16, hidden_dim=16, bottleneck_dim=8,
                    freeze_last_layer=0, optimizer=SGD)  # fmt: skip
    if method == "crd":
        return CRD(student_backbone="resnet8", teacher_backbone="resnet14", num_classes=5,
                   teacher_checkpoint=os.path.join(out_dir, "teacher.ckpt"), num_negatives=8,
                   embed_dim=8, optimizer=SGD)  # fmt: skip
    # A queue full after 16 samples: the prototypes are initialised in the resumed part.
    return ReKD(student_backbone="resnet8", teacher_backbone="resnet8", proj_hidden_dim=16,
                proj_dim=8, queue_size=16, num_prototypes=3, threshold=0.0,
                optimizer=SGD)  # fmt: skip


class Record(RecordIndices):
    """The indices trained, plus the state and schedule where training starts and ends."""

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.start_step = trainer.global_step
        self.start_lr = trainer.optimizers[0].param_groups[0]["lr"]

    def state(self, trainer, pl_module) -> dict:
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        return {
            "indices": self.indices,
            "start": self.start,
            "start_step": self.start_step,
            "start_lr": self.start_lr,
            "end": pl_module.state_dict(),
            "end_step": trainer.global_step,
            "end_lr": trainer.optimizers[0].param_groups[0]["lr"],
            "base_lr": scheduler.base_lrs[0],
            "scheduled_lr": scheduler.base_lrs[0] * scheduler.lr_lambdas[0](trainer.global_step),
            "total_steps": int(trainer.estimated_stepping_batches),
            "world": trainer.world_size,
        }


def main(method, out_dir, phase, batch_size, stop_after, ckpt_path=None) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    L.seed_everything(0)
    record = Record()
    callbacks = [MethodCheckpoint(dirpath=os.path.join(out_dir, phase), monitor=None), record]
    if int(stop_after):
        callbacks.append(StopFlagAfter(int(stop_after)))
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
        max_epochs=1, limit_val_batches=0, logger=False, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    views = None if method in ("supervised", "crd") else TwoViews(blur_prob=0.0)
    data = ColourDataModule(per_class=8, batch_size=int(batch_size), views=views)
    model = make(method, out_dir)
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    except SIGTERMException:
        assert int(stop_after)
    path = os.path.join(out_dir, f"{phase}_rank{trainer.global_rank}.pt")
    torch.save(record.state(trainer, model), path)


if __name__ == "__main__":
    main(*sys.argv[1:])
