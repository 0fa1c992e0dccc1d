"""One rank of the big-batch check: one optimiser step per method (test_big_batch_ddp.py).

Usage: python ddp_big_batch_worker.py OUT_DIR GLOBAL_BATCH TEACHER_CKPT METHOD... Trains
one step of each METHOD, one fit after the other in the same processes, on digits in
dataset order, each global batch cut into one contiguous block per rank (rank 0's rows
first: their concatenation is the batch one process reads), with views that draw nothing
at random, and saves the model's state before and after the step to
METHOD_rank{r}_of{world}.pt. The networks are micro ViTs (``vit_micro``: width 16, 2
blocks; registered here, and by the test for its in-process run), with MLP heads without
batch norm (checked here): no layer normalises a sample with others, so a sample's outputs do
not depend on how the batch is split; 64-true precision keeps the rounding of splitting
it at float64's level. DDP's own buffer broadcast is off, so state equal across ranks can
only come from the method itself. SGD without momentum: one step moves the weights by
exactly -lr times the averaged gradient (Adam's normalisation would blow float noise in
near-zero gradients up to full-size steps).
"""

import os
import sys

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ddp_crd_worker import ContiguousDigits  # noqa: E402
from tests_support import FixedViews  # noqa: E402

from distill import methods  # noqa: E402
from distill.backbones import register_backbone  # noqa: E402
from distill.backbones.vit import ViTBackbone  # noqa: E402
from distill.data import SupervisedViews  # noqa: E402

VIT = {"image_size": 32, "patch_size": 8}
VIT_NAME = "vit_micro"
QUEUE = 32  # MoCo's and ReKD's queue: longer than a global batch, so slots stay apart


class MicroViT(ViTBackbone):
    """A ViT of width 16 with 2 blocks of 2 heads (vit_tiny's layers, a thousandth the size),
    with a named stage for the feature-map methods (SP, AT, VID): ``grid``, its last
    patch tokens on their grid, ``[B, 16, 4, 4]`` at 32 px."""

    stage_names = ("grid",)

    def forward_stages(self, images, preact=False):
        maps = []
        hook = self.vit.encoder.ln.register_forward_hook(lambda *args: maps.append(args[2]))
        try:
            embedding = self(images)
        finally:
            hook.remove()
        patches = maps[0][:, 1:].transpose(1, 2)  # [B, D, patches], the class token left out
        side = images.shape[-1] // self.vit.patch_size
        return embedding, {"grid": patches.reshape(len(images), -1, side, side)}


def vit_micro(image_size: int = 32, patch_size: int = 8) -> ViTBackbone:
    return MicroViT(image_size, patch_size, 16, 2, 2)


def sgd(params):
    return torch.optim.SGD(params, lr=0.5)


def teacher_student(method_class, teacher: str, **kwargs):
    return method_class(
        student_backbone=VIT_NAME, teacher_backbone=VIT_NAME, teacher_checkpoint=teacher,
        student_backbone_kwargs=VIT, teacher_backbone_kwargs=VIT, num_classes=10,
        optimizer=sgd, lr_schedule="constant", **kwargs,
    )  # fmt: skip


def build(method: str, teacher: str):
    """The model and its views; every state a step changes starts from known content."""
    supervised = SupervisedViews(crop_size=32, padding=0, hflip_prob=0.0)
    if method == "supervised":
        model = methods.Supervised(
            backbone=VIT_NAME, backbone_kwargs=VIT, optimizer=sgd, lr_schedule="constant"
        )
        return model, supervised
    if method == "kd":
        return teacher_student(methods.KD, teacher), supervised
    if method == "rkd":
        return teacher_student(methods.RKD, teacher), supervised
    if method in ("sp", "at", "vid"):  # on the ViT's patch grid
        method_class = {"sp": methods.SP, "at": methods.AT, "vid": methods.VID}[method]
        return teacher_student(method_class, teacher, stages=[["grid", "grid"]]), supervised
    if method == "pkt":
        return teacher_student(methods.PKT, teacher), supervised
    if method == "dist":
        return teacher_student(methods.DIST, teacher), supervised
    if method == "dkd":
        return teacher_student(methods.DKD, teacher), supervised
    if method == "crd":
        model = teacher_student(
            methods.CRD, teacher, num_negatives=32, embed_dim=8, sampler="uniform"
        )
        return model, supervised
    if method == "dino":
        model = methods.DINO(
            backbone=VIT_NAME, backbone_kwargs=VIT, output_dim=32, hidden_dim=16,
            bottleneck_dim=8, freeze_last_layer=0, momentum_start=0.99, momentum_end=0.99,
            optimizer=sgd, lr_schedule="constant",
        )  # fmt: skip
        return model, FixedViews(2, 4)
    if method in ("moco", "moco_symmetric"):
        model = methods.MoCo(
            backbone=VIT_NAME, backbone_kwargs=VIT, proj_hidden_dim=16, proj_dim=8,
            queue_size=QUEUE, symmetric=method == "moco_symmetric", optimizer=sgd,
            lr_schedule="constant",
        )  # fmt: skip
        return model, FixedViews(2, 2)
    if method in ("rekd", "rekd_symmetric"):
        model = methods.ReKD(
            student_backbone=VIT_NAME, teacher_backbone=VIT_NAME,
            student_backbone_kwargs=VIT, teacher_backbone_kwargs=VIT, proj_hidden_dim=16,
            proj_dim=8, queue_size=QUEUE, num_prototypes=4, threshold=0.0,
            symmetric=method == "rekd_symmetric", optimizer=sgd, lr_schedule="constant",
        )  # fmt: skip
        # Full queues and a prototype bank from the start: the step mines positives from
        # them, and moves the prototypes, as any step after the first few does.
        generator = torch.Generator().manual_seed(1)
        for queue in (model.student.queue, model.teacher.queue):
            keys = F.normalize(torch.randn(QUEUE, 8, generator=generator), dim=1)
            queue.enqueue(keys, torch.randint(10, (QUEUE,), generator=generator))
        model.prototypes.init_from(model.teacher.queue.keys)
        return model, FixedViews(2, 2)
    if method in ("seed", "disco"):  # self-supervised, from a frozen teacher's features
        model = (methods.SEED if method == "seed" else methods.DisCo)(
            student_backbone=VIT_NAME, teacher_backbone=VIT_NAME, student_backbone_kwargs=VIT,
            teacher_backbone_kwargs=VIT, teacher_checkpoint=teacher,
            teacher_embedding="backbone", proj_hidden_dim=16, queue_size=QUEUE, optimizer=sgd,
            lr_schedule="constant",
        )  # fmt: skip
        return model, FixedViews(2, 2)
    raise ValueError(f"unknown method {method!r}")


class StateAtStart(L.Callback):
    """The model's state when training starts: set up (CRD's banks drawn), in float64."""

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def main(out_dir: str, global_batch: str, teacher: str, *methods: str) -> None:
    register_backbone(VIT_NAME)(vit_micro)
    # Lightning's teardown at the end of a fit drops WORLD_SIZE from the environment.
    environment = dict(os.environ)
    for method in methods:
        os.environ.update(environment)
        one_step(out_dir, method, int(global_batch), teacher)


def one_step(out_dir: str, method: str, global_batch: int, teacher: str) -> None:
    """Fits ``method`` for one step and saves its state before and after."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    L.seed_everything(0)
    model, views = build(method, teacher)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.InstanceNorm2d)
    assert not any(isinstance(m, norms) for m in model.modules()), "a layer couples samples"
    start = StateAtStart()
    trainer = L.Trainer(
        accelerator="cpu", devices=world, precision="64-true",
        strategy=DDPStrategy(broadcast_buffers=False) if world > 1 else "auto",
        max_steps=1, limit_val_batches=0, logger=False, use_distributed_sampler=False,
        callbacks=[start], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    data = ContiguousDigits(batch_size=global_batch // world, views=views)
    L.seed_everything(0)  # DDP re-seeds every rank before setup (CRD draws its banks there)
    trainer.fit(model, datamodule=data)
    state = {
        "before": start.state,
        "after": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "world": trainer.world_size,
    }
    torch.save(state, os.path.join(out_dir, f"{method}_rank{trainer.global_rank}_of{world}.pt"))


if __name__ == "__main__":
    main(*sys.argv[1:])
