"""One rank of the CPU DDP check of compiled backbones (run by test_compile_ddp.py).

Usage: python ddp_compile_worker.py OUT_DIR GLOBAL_BATCH. Trains two steps of a Supervised
student whose backbone is compiled (``compile: true``, inductor) on digits in dataset order
without augmentation (a 32 px crop without padding or flip: the image itself), so the DDP
ranks together see the same global batch as a single process, and saves the
student to rank{r}_of{world}.pt. The backbone is a one-block ViT: with no batch norm, a
sample's output does not depend on how the batch is split, up to rounding, which 64-true
precision keeps at float64's level; and one block compiles in seconds, where vit_tiny's
twelve take a minute.
"""

import os
import sys

import lightning as L
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import InOrderDigits  # noqa: E402

from distill.backbones.vit import ViTBackbone  # noqa: E402
from distill.data import SupervisedViews  # noqa: E402
from distill.methods import Supervised  # noqa: E402
from distill.modules import Classifier  # noqa: E402


def main(out_dir: str, global_batch: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    L.seed_everything(0)
    model = Supervised(
        backbone="vit_tiny", num_classes=10, compile=True, lr_schedule="constant",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
    )  # fmt: skip
    backbone = ViTBackbone(image_size=32, patch_size=8, hidden_dim=16, depth=1, num_heads=2)
    backbone.backbone_name = "vit_tiny"  # as create_backbone marks the backbones it builds
    model.student = Classifier(backbone, 10)
    start = {k: v.clone() for k, v in model.student.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
        precision="64-true", max_steps=2, limit_val_batches=0, logger=False,
        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    views = SupervisedViews(crop_size=32, padding=0, hflip_prob=0.0)
    data = InOrderDigits(batch_size=int(global_batch) // world, views=views)
    trainer.fit(model, datamodule=data)
    state = {
        "start": start,
        "student": model.student.state_dict(),
        "compiled": model.student.backbone.compiled,
        "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"],
        "world": trainer.world_size,
    }
    torch.save(state, os.path.join(out_dir, f"rank{trainer.global_rank}_of{world}.pt"))


if __name__ == "__main__":
    main(*sys.argv[1:])
