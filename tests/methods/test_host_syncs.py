"""No method makes the host wait for the device during its training steps.

A call that needs a tensor's value on the host (``.item()``, ``bool()``, ``float()``, an
``if`` on a tensor, ``.tolist()``, ``.cpu()``), an op whose output size depends on the data
(``nonzero``, ``unique``, ``bincount``, ``masked_select``, boolean-mask indexing) or a tensor
made from host data on the device (``torch.tensor(..., device=...)``, ``new_tensor``, which
copy and then wait) blocks the host until the device has caught up: on a GPU the step can no
longer be queued ahead. On the CPU these calls cost nothing, so this test counts them
instead of timing them, during a few training steps of each method.

What is counted: calls made from distill's code, directly or through the libraries it calls
(torch, Lightning, lightly, torchvision, torchmetrics; so a Python float given to
``self.log``, which Lightning turns into ``torch.tensor(value, device=...)``, counts).
Lightning's own loop may synchronise (the progress bar reads the loss): those calls have no
distill frame before the library frames and are not counted; neither is data loading, which
runs on the host (in DataLoader workers in real runs). ``Tensor.__index__`` is counted too:
it is how a tensor becomes a Python int (``range(t)``, ``x[:t]``); indexing with Python ints
never calls it. Host ``.to(device)`` copies are not counted (on the CPU the source and target
devices are the same, so they cannot be told apart from device-to-device moves).

Periodic checks are allowed by design and kept out of the counted steps by large intervals:
the finite-loss check (``nonfinite_check_interval``) and DINO's collapse check
(``collapse_check_interval``). ReKD's one-time k-means initialisation of its prototypes runs
in the warm-up steps.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from unittest import mock

import lightly
import lightning
import lightning_utilities
import pytest
import torch
import torchmetrics
import torchvision
from tests_support import ColourDataModule, quiet_trainer

from distill.data import MultiCropViews, TwoViews
from distill.methods import (
    AT,
    CRD,
    DINO,
    DIST,
    DKD,
    KD,
    PKT,
    RKD,
    SEED,
    SP,
    VID,
    DisCo,
    FeatureKD,
    FitNets,
    MoCo,
    ReKD,
    Supervised,
)

DISTILL = str(Path(__file__).resolve().parents[2] / "distill") + os.sep
LIBRARIES = tuple(
    str(Path(module.__file__).resolve().parent) + os.sep
    for module in (torch, lightning, lightning_utilities, lightly, torchvision, torchmetrics, os)
)
DATA_LOADING = str(Path(torch.utils.data.__file__).resolve().parent) + os.sep

# Methods that always need the value on the host, or whose output size depends on the data.
TENSOR_METHODS = (
    "item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__",
    "nonzero", "unique", "unique_consecutive", "bincount", "masked_select", "equal",
    "allclose", "is_nonzero",
)  # fmt: skip
TORCH_FUNCTIONS = (
    "nonzero", "argwhere", "unique", "unique_consecutive", "bincount", "masked_select", "equal",
    "allclose",
)  # fmt: skip
WARMUP = 2  # CRD fixes Z on its first batch; ReKD clusters its first full queue after the second
STEPS = 3
SGD = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
NEVER = 10**6  # a check interval that no counted step reaches


class SyncCounter:
    """Patches the synchronising calls; records those made from distill while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.calls: list[str] = []
        self._inside = threading.local()

    def caller(self) -> str | None:
        """``path:line`` of the innermost distill frame behind the libraries, if any."""
        frame = sys._getframe(2)
        stack = []
        while frame is not None:
            stack.append(frame)
            frame = frame.f_back
        if any(f.f_code.co_filename.startswith(DATA_LOADING) for f in stack):
            return None
        for frame in stack:
            name = frame.f_code.co_filename
            if not name.startswith(LIBRARIES):
                if not name.startswith(DISTILL):
                    return None
                return f"distill/{name[len(DISTILL) :]}:{frame.f_lineno}"
        return None

    def wrap(self, what: str, original, counts=lambda *args, **kwargs: True):
        def patched(*args, **kwargs):
            if self.active and not getattr(self._inside, "busy", False) and counts(*args, **kwargs):
                where = self.caller()
                if where is not None:
                    self.calls.append(f"{where} {what}")
            self._inside.busy, outer = True, getattr(self._inside, "busy", False)
            try:
                return original(*args, **kwargs)
            finally:
                self._inside.busy = outer

        return patched

    def patches(self) -> list:
        patches = [
            mock.patch.object(torch.Tensor, name, self.wrap(name, getattr(torch.Tensor, name)))
            for name in TENSOR_METHODS
        ]
        patches += [
            mock.patch.object(torch, name, self.wrap(f"torch.{name}", getattr(torch, name)))
            for name in TORCH_FUNCTIONS
        ]
        patches.append(mock.patch.object(
            torch, "where", self.wrap("torch.where(condition)", torch.where,
                                      lambda *args, **kwargs: len(args) + len(kwargs) == 1),
        ))  # fmt: skip
        for name in ("tensor", "as_tensor"):
            patches.append(mock.patch.object(
                torch, name, self.wrap(f"torch.{name}(..., device=)", getattr(torch, name),
                                       lambda *args, **kwargs: kwargs.get("device") is not None),
            ))  # fmt: skip
        patches.append(mock.patch.object(
            torch.Tensor, "new_tensor", self.wrap("new_tensor", torch.Tensor.new_tensor)
        ))  # fmt: skip
        for name in ("__getitem__", "__setitem__"):
            patches.append(mock.patch.object(
                torch.Tensor, name,
                self.wrap(f"{name} with a boolean mask", getattr(torch.Tensor, name), has_mask),
            ))  # fmt: skip
        return patches


def has_mask(tensor, index, *value) -> bool:
    indices = index if isinstance(index, tuple) else (index,)
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


class CountSteps(lightning.Callback):
    """Counts from the first batch after the warm-up to the end of the epoch."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counter.active = batch_idx >= WARMUP

    def on_train_epoch_end(self, trainer, pl_module):
        self.counter.active = False


def method_and_data(name: str, teacher_checkpoint: str):
    common = dict(optimizer=SGD, nonfinite_check_interval=NEVER)
    teacher = dict(
        student_backbone="resnet8", teacher_backbone="resnet14",
        teacher_checkpoint=teacher_checkpoint, num_classes=5, **common,
    )  # fmt: skip
    two_views = ColourDataModule(views=TwoViews(blur_prob=0.0))
    encoders = dict(proj_hidden_dim=16, proj_dim=8, queue_size=20, **common)
    rekd = dict(student_backbone="resnet8", teacher_backbone="resnet8", num_prototypes=4,
                threshold=0.0, **encoders)  # fmt: skip
    if name == "supervised":
        return Supervised(backbone="resnet8", num_classes=5, **common), ColourDataModule()
    if name == "kd":
        return KD(**teacher), ColourDataModule()
    if name == "kd-teacher-inputs":  # a teacher with statistics and a size of its own
        spec = dict(architecture="resnet14", weights=teacher_checkpoint, mean=[0.4] * 3,
                    std=[0.2] * 3, image_size=24)  # fmt: skip
        return KD(student_backbone="resnet8", teacher=spec, num_classes=5, **common), (
            ColourDataModule()
        )
    if name == "rkd":
        return RKD(**teacher), ColourDataModule()
    if name == "dkd":
        return DKD(**teacher), ColourDataModule()
    if name == "dist":
        return DIST(**teacher, kd_weight=1.0), ColourDataModule()
    if name == "pkt":
        return PKT(**teacher, kd_weight=1.0), ColourDataModule()
    if name == "crd":
        return CRD(**teacher, num_negatives=16, embed_dim=8, kd_weight=1.0), ColourDataModule()
    if name == "feature":
        return FeatureKD(**teacher, projector="mlp", kd_weight=1.0), ColourDataModule()
    if name == "feature-dense":  # a convolutional teacher's last map, as a ViT's tokens
        return FeatureKD(**teacher, level="dense", metric="cosine"), ColourDataModule()
    if name == "fitnets":
        return FitNets(**teacher, kd_weight=1.0), ColourDataModule()
    if name == "at-teacher-inputs":  # the teacher's stages of its own inputs, pooled to meet
        spec = dict(architecture="resnet14", weights=teacher_checkpoint, mean=[0.4] * 3,
                    std=[0.2] * 3, image_size=24)  # fmt: skip
        return AT(student_backbone="resnet8", teacher=spec, num_classes=5, **common), (
            ColourDataModule()
        )
    if name == "sp":
        return SP(**teacher), ColourDataModule()
    if name == "vid":
        return VID(**teacher), ColourDataModule()
    if name == "dino":
        views = MultiCropViews(num_global=2, num_local=2, blur_probs=(0.0, 0.0, 0.0))
        model = DINO(backbone="resnet8", output_dim=32, hidden_dim=16, bottleneck_dim=8,
                     lr_reference_batch=None, collapse_check_interval=NEVER, **common)  # fmt: skip
        return model, ColourDataModule(views=views)
    if name == "moco":
        return MoCo(backbone="resnet8", symmetric=True, **encoders), two_views
    if name == "rekd":
        return ReKD(symmetric=True, **rekd), two_views
    frozen = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", queue_size=20,
        teacher_checkpoint=teacher_checkpoint, teacher_embedding="backbone", **common,
    )  # fmt: skip
    if name == "seed":
        return SEED(proj_hidden_dim=16, **frozen), two_views
    if name == "disco":
        return DisCo(proj_hidden_dim=16, **frozen), two_views
    return ReKD(prototype_init_step=NEVER, **rekd), two_views  # the bank never initialised


METHODS = [
    "supervised", "kd", "kd-teacher-inputs", "rkd", "crd", "dino", "moco", "rekd",
    "rekd-before-bank-init", "seed", "disco", "feature", "feature-dense", "dkd", "dist", "pkt",
    "fitnets", "at-teacher-inputs", "sp", "vid",
]  # fmt: skip


@pytest.mark.parametrize("name", METHODS)
def test_training_steps_make_no_host_sync(name, teacher_checkpoint, tmp_path):
    torch.manual_seed(0)
    model, data = method_and_data(name, teacher_checkpoint)
    counter = SyncCounter()
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=WARMUP + STEPS, limit_val_batches=0,
        gradient_clip_val=3.0 if name == "dino" else None, callbacks=[CountSteps(counter)],
    )  # fmt: skip
    patches = counter.patches()
    for patch in patches:
        patch.start()
    try:
        trainer.fit(model, datamodule=data)
    finally:
        for patch in reversed(patches):
            patch.stop()
    assert trainer.global_step == WARMUP + STEPS
    assert counter.calls == [], "\n".join(sorted(set(counter.calls)))


def test_the_counter_sees_a_sync_from_distill_but_not_from_the_libraries():
    counter = SyncCounter()
    patches = counter.patches()
    for patch in patches:
        patch.start()
    try:
        counter.active = True
        values = torch.arange(4.0)
        values.mean().item()  # this test file is not distill: not counted
        lightning.pytorch.utilities.rank_zero_info(f"{values.sum():.1f}")  # Lightning's own
        from distill.modules.finite import FiniteWatch

        watch = FiniteWatch()
        watch.observe("loss", values.mean(), step=0)
        assert counter.calls == []
        watch.bad_terms()  # tolist() of the first bad steps: the sync kept for the checks
    finally:
        for patch in reversed(patches):
            patch.stop()
    assert len(counter.calls) == 1 and "distill/modules/finite.py" in counter.calls[0]
    assert counter.calls[0].endswith("tolist")
