"""One rank of the CPU DDP check of CRD's state (run by test_crd_ddp.py).

Usage: python ddp_crd_worker.py OUT_DIR TEACHER_CKPT GLOBAL_BATCH SAMPLER. Trains one step on
digits in dataset order, so the DDP ranks together see the same global batch as a single
process, and saves the banks, the normalisers Z and the bank rows this rank sampled to
rank{r}_of{world}.pt. The backbones are small ViTs: with no batch norm, a sample's
embedding does not depend on how the batch is split, up to rounding, which 64-true precision
keeps at float64's level. DDP's buffer broadcast is off, so equal state on the ranks can only
come from CRD itself.
"""

import os
import sys

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import InOrderDigits  # noqa: E402

from distill.data import SupervisedViews  # noqa: E402
from distill.methods import CRD  # noqa: E402

VIT = {"image_size": 32, "patch_size": 8}


class ContiguousDigits(InOrderDigits):
    """Digits in dataset order, each global batch cut into one contiguous block per rank, so
    the ranks' gathered batch is in the order a single process sees it. Items carry a seed
    (``IndexedDataset``), so loading draws nothing from torch's global generator, whose
    state at CRD's negative draw must not depend on how many samples a rank loaded."""

    def train_dataloader(self):
        self.setup("fit")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        size = self.batch_size
        order = [
            (0, start + rank * size + i)
            for start in range(0, len(self.train_set) - world * size + 1, world * size)
            for i in range(size)
        ]
        return self._loader(self.train_set, size, False, True, sampler=order)


class SampledRows(L.Callback):
    """Keeps the bank rows (positive and negatives) CRD samples for this rank's anchors."""

    def on_train_start(self, trainer, pl_module):
        sample = pl_module.crd.sample
        self.rows = []
        pl_module.crd.sample = lambda *args: self.rows.append(sample(*args)) or self.rows[-1]


def main(out_dir: str, teacher: str, global_batch: str, sampler: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    L.seed_everything(0)
    model = CRD(
        student_backbone="vit_tiny", teacher_backbone="vit_tiny", teacher_checkpoint=teacher,
        student_backbone_kwargs=VIT, teacher_backbone_kwargs=VIT,
        num_classes=10, num_negatives=32, embed_dim=8, sampler=sampler,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=world, precision="64-true",
        strategy=DDPStrategy(broadcast_buffers=False) if world > 1 else "auto",
        max_steps=1, limit_val_batches=0, logger=False, use_distributed_sampler=False,
        callbacks=[sampled := SampledRows()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    # Views without random padding or flips: a sample looks the same in every process.
    views = SupervisedViews(crop_size=32, padding=0, hflip_prob=0.0)
    data = ContiguousDigits(batch_size=int(global_batch) // world, views=views)
    # DDP re-seeds every rank before setup, where the banks are drawn; do the same here.
    L.seed_everything(0)
    trainer.fit(model, datamodule=data)
    banks = {
        "student": model.crd.student_memory.rows,
        "teacher": model.crd.teacher_memory.rows,
        "normalizers": model.crd.normalizers,
        "rows": sampled.rows[0],
        "world": trainer.world_size,
    }
    torch.save(banks, os.path.join(out_dir, f"rank{trainer.global_rank}_of{world}.pt"))


if __name__ == "__main__":
    main(*sys.argv[1:])
