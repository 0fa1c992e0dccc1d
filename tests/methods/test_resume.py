"""A fit resumed from ``last.ckpt`` ends exactly where an uninterrupted one does, with the
shipped configs' data loading (two persistent workers), at an epoch boundary and mid-epoch."""

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tests_support import ColourDataModule, quiet_trainer

from distill.callbacks import MethodCheckpoint
from distill.data import TwoViews
from distill.methods import AT, DIST, DKD, KD, PKT, RKD, SP, VID, FitNets, MoCo, Supervised

WORKERS = 2
SGD = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731


def make(method: str, teacher_checkpoint: str):
    compiled = method.endswith("-compiled")  # torch.compile'd backbones (inductor)
    method = method.removesuffix("-compiled")
    common = dict(num_classes=5, optimizer=SGD, compile=compiled)
    teacher = dict(teacher_backbone="resnet14", teacher_checkpoint=teacher_checkpoint)
    if method == "supervised":
        return Supervised(backbone="resnet8", label_smoothing=0.1, **common)
    if method == "kd":
        return KD(student_backbone="resnet8", **teacher, **common)
    if method == "rkd":
        return RKD(student_backbone="resnet8", **teacher, **common)
    if method == "dkd":  # its warm-up weighs epochs 0, 1, 2 by 1/20, 2/20, 3/20
        return DKD(student_backbone="resnet8", **teacher, **common)
    if method == "dist":
        return DIST(student_backbone="resnet8", **teacher, **common)
    if method == "pkt":
        return PKT(student_backbone="resnet8", **teacher, **common)
    stage_methods = {"fitnets": FitNets, "at": AT, "sp": SP, "vid": VID}
    if method in stage_methods:  # their connectors, regressors and variances resume too
        return stage_methods[method](student_backbone="resnet8", **teacher, **common)
    return MoCo(
        backbone="resnet8", proj_hidden_dim=16, proj_dim=8, queue_size=24, optimizer=SGD,
        compile=compiled,
    )  # fmt: skip


class InterruptAt(L.Callback):
    """Raises Lightning's SIGTERM flag after global step ``step``, as the signal handler does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True


def fit(method, teacher_checkpoint, root, interrupt_at=None, ckpt_path=None):
    L.seed_everything(0)
    views = TwoViews(blur_prob=0.0) if method.startswith("moco") else None
    data = ColourDataModule(batch_size=8, num_workers=WORKERS, persistent_workers=True, views=views)
    callbacks = [MethodCheckpoint(dirpath=str(root), monitor=None)]
    if interrupt_at:
        callbacks.append(InterruptAt(interrupt_at))
    trainer = quiet_trainer(
        root, max_epochs=3, limit_train_batches=4, limit_val_batches=1,
        enable_checkpointing=True, callbacks=callbacks,
    )  # fmt: skip
    model = make(method, teacher_checkpoint)
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    except SIGTERMException:
        assert interrupt_at is not None
    return model, trainer


@pytest.mark.parametrize(
    "method, interrupt_at",
    [("supervised", 4), ("supervised", 6), ("kd", 4), ("rkd", 6), ("moco", 6), ("dkd", 6),
     ("dkd", 4), ("dist", 6), ("pkt", 6), ("fitnets", 6), ("at", 4), ("sp", 6), ("vid", 6),
     pytest.param("supervised-compiled", 6, marks=pytest.mark.compiles),
     pytest.param("moco-compiled", 6, marks=pytest.mark.compiles)],
    ids=["supervised-epoch_end", "supervised-mid_epoch", "kd-epoch_end", "rkd-mid_epoch",
         "moco-mid_epoch", "dkd-mid_epoch", "dkd-epoch_end", "dist-mid_epoch", "pkt-mid_epoch",
         "fitnets-mid_epoch", "at-epoch_end", "sp-mid_epoch", "vid-mid_epoch",
         "supervised-compiled-mid_epoch", "moco-compiled-mid_epoch"],
)  # fmt: skip
def test_resume_with_persistent_workers_equals_uninterrupted_fit(
    tmp_path, teacher_checkpoint, method, interrupt_at
):
    straight, _ = fit(method, teacher_checkpoint, tmp_path / "straight")
    _, stopped = fit(method, teacher_checkpoint, tmp_path / "first", interrupt_at=interrupt_at)
    assert stopped.global_step == interrupt_at
    last = str(tmp_path / "first" / "last.ckpt")
    resumed, trainer = fit(method, teacher_checkpoint, tmp_path / "second", ckpt_path=last)
    assert trainer.global_step == 12
    assert getattr(resumed.student.backbone, "compiled", False) == method.endswith("-compiled")
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name, rtol=0, atol=0)
