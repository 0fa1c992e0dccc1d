import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tests_support import (
    OUTSIDE_TRAINER,
    ColourDataModule,
    StopFlagAfter,
    fit_teacher_student,
    quiet_trainer,
    refused,
)

from distill.callbacks import MethodCheckpoint
from distill.losses import dkd_loss, dkd_terms
from distill.methods import DKD

SGD = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731


def make(checkpoint, **kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", teacher_checkpoint=checkpoint,
        num_classes=5, optimizer=SGD,
    )  # fmt: skip
    return DKD(**{**defaults, **kwargs})


@pytest.mark.parametrize(
    ("epoch", "factor"), [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0), (9, 1.0)]
)  # mdistiller's min(epoch / 4, 1) with epochs counted from 1
@OUTSIDE_TRAINER
def test_loss_is_ce_plus_the_warmed_up_decoupled_terms(
    teacher_checkpoint, monkeypatch, epoch, factor
):
    # In eval mode (fixed BN statistics) both evaluations see the same network.
    model = make(
        teacher_checkpoint, alpha=0.5, beta=3.0, temperature=2.0, dkd_warmup_epochs=4,
        ce_weight=0.7,
    ).eval()  # fmt: skip
    model.teacher_weights.load()
    monkeypatch.setattr(DKD, "current_epoch", property(lambda self: epoch))
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **_: logged.__setitem__(name, value))
    images, targets = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    loss = model.training_step((images, targets, torch.arange(6)), 0)
    logits, teacher_logits = model.student(images), model.teacher(images)
    ce = F.cross_entropy(logits, targets)
    expected = 0.7 * ce + factor * dkd_loss(logits, teacher_logits, targets, 0.5, 3.0, 2.0)
    # The same float32 operations on the same outputs, in the same order: equal to the bit.
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    assert set(logged) == {"train/loss", "train/ce", "train/tckd", "train/nckd", "train/dkd_warmup"}
    tckd, nckd = dkd_terms(logits, teacher_logits, targets, 2.0)
    for name, value in (("tckd", tckd), ("nckd", nckd), ("ce", ce), ("loss", expected)):
        torch.testing.assert_close(logged[f"train/{name}"], value, rtol=0, atol=0)
    assert logged["train/dkd_warmup"].item() == factor  # 0.25, 0.5, 0.75, 1 are exact


@OUTSIDE_TRAINER
def test_a_bf16_autocast_step_computes_its_loss_in_float32(teacher_checkpoint):
    model = make(teacher_checkpoint).eval()
    model.teacher_weights.load()
    images, targets = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step((images, targets, torch.arange(6)), 0)
        logits, teacher_logits = model.student(images), model.teacher(images)
    assert logits.dtype == teacher_logits.dtype == torch.bfloat16  # autocast was on
    # The float32 formula of the networks' bf16 outputs (epoch 0 of 20: weight 1/20).
    logits, teacher_logits = logits.float(), teacher_logits.float()
    expected = F.cross_entropy(logits, targets) + dkd_loss(logits, teacher_logits, targets) / 20
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_fit_trains_only_the_student_and_logs_the_terms(teacher_checkpoint, tmp_path):
    trainer = fit_teacher_student(make(teacher_checkpoint), teacher_checkpoint, tmp_path)
    logged = {"train/loss", "train/ce", "train/tckd", "train/nckd", "train/dkd_warmup"}
    assert logged <= set(trainer.callback_metrics)
    # Epoch 0 of mdistiller's 20, logged as a float32 tensor.
    assert trainer.callback_metrics["train/dkd_warmup"] == torch.tensor(1 / 20)


class RecordWarmup(L.Callback):
    """The DKD weight each optimiser step of this fit was trained with, by global step."""

    def __init__(self) -> None:
        self.factors: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.factors[trainer.global_step] = trainer.callback_metrics["train/dkd_warmup"].item()


def warmup_fit(checkpoint, root, interrupt_after=None, ckpt_path=None):
    """3 epochs of 2 steps with a 3-epoch DKD warm-up; ``last.ckpt`` in ``root``."""
    L.seed_everything(0)
    record = RecordWarmup()
    callbacks = [MethodCheckpoint(dirpath=str(root), monitor=None), record]
    if interrupt_after:
        callbacks.append(StopFlagAfter(interrupt_after))
    trainer = quiet_trainer(
        root, max_epochs=3, limit_train_batches=2, limit_val_batches=0, enable_checkpointing=True,
        callbacks=callbacks,
    )  # fmt: skip
    model = make(checkpoint, dkd_warmup_epochs=3)
    try:
        trainer.fit(model, datamodule=ColourDataModule(), ckpt_path=ckpt_path)
    except SIGTERMException:
        assert interrupt_after is not None
    return model, trainer, record.factors


def test_warmup_follows_the_epoch_and_a_resumed_fit_weighs_its_steps_the_same(
    teacher_checkpoint, tmp_path
):
    _, _, straight = warmup_fit(teacher_checkpoint, tmp_path / "straight")
    third, two_thirds = (torch.tensor(x).item() for x in (1 / 3, 2 / 3))  # as logged (float32)
    assert straight == {1: third, 2: third, 3: two_thirds, 4: two_thirds, 5: 1.0, 6: 1.0}
    # Interrupted in the middle of epoch 1 (after step 3), then resumed from that step.
    _, stopped, first = warmup_fit(teacher_checkpoint, tmp_path / "first", interrupt_after=3)
    assert stopped.global_step == 3
    last = str(tmp_path / "first" / "last.ckpt")
    _, resumed, second = warmup_fit(teacher_checkpoint, tmp_path / "second", ckpt_path=last)
    assert resumed.global_step == 6
    assert {**first, **second} == straight


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("alpha", -1.0, "a number >= 0"),
        ("beta", float("nan"), "a number >= 0"),
        ("temperature", 0.0, "a number > 0"),
        ("dkd_warmup_epochs", -1, "an integer >= 0"),
        ("dkd_warmup_epochs", 2.5, "an integer >= 0"),
        ("ce_weight", -0.1, "a number >= 0"),
    ],
)
def test_bad_arguments_are_one_message_naming_the_key(argument, value, valid):
    message = refused(DKD, teacher_checkpoint="teacher.ckpt", **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"


def test_dkd_refuses_a_teacher_without_logits():
    teacher = {"architecture": "resnet14", "weights": "t.ckpt", "embedding": "backbone"}
    assert refused(DKD, teacher=teacher) == (
        "model.init_args.teacher.embedding='backbone': DKD reads the teacher's logits; valid: "
        "auto, logits"
    )
