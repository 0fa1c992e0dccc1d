import pytest
import torch
import torch.nn.functional as F
from tests_support import OUTSIDE_TRAINER, fit_teacher_student, refused

from distill.losses import dist_loss, dist_terms, kd_loss
from distill.methods import DIST


def make(checkpoint, **kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", teacher_checkpoint=checkpoint,
        num_classes=5, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )  # fmt: skip
    return DIST(**{**defaults, **kwargs})


@pytest.mark.parametrize("kd_weight", [0.0, 0.3])
@OUTSIDE_TRAINER
def test_loss_is_ce_plus_weighted_relations_and_optional_kd(
    teacher_checkpoint, monkeypatch, kd_weight
):
    # In eval mode (fixed BN statistics) both evaluations see the same network.
    model = make(
        teacher_checkpoint, inter_weight=0.5, intra_weight=1.5, dist_weight=2.0,
        temperature=3.0, kd_weight=kd_weight, ce_weight=0.7,
    ).eval()  # fmt: skip
    model.teacher_weights.load()
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **_: logged.__setitem__(name, value))
    images, targets = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    loss = model.training_step((images, targets, torch.arange(6)), 0)
    logits, teacher_logits = model.student(images), model.teacher(images)
    ce = F.cross_entropy(logits, targets)
    expected = 0.7 * ce + 2.0 * dist_loss(logits, teacher_logits, 0.5, 1.5, 3.0)
    names = {"train/loss", "train/ce", "train/dist_inter", "train/dist_intra"}
    if kd_weight:
        expected = expected + 0.3 * kd_loss(logits, teacher_logits, 3.0)
        names.add("train/kd")
    # The same float32 operations on the same outputs, in the same order: equal to the bit.
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    assert set(logged) == names
    inter, intra = dist_terms(logits, teacher_logits, 3.0)
    for name, value in (("dist_inter", inter), ("dist_intra", intra), ("ce", ce)):
        torch.testing.assert_close(logged[f"train/{name}"], value, rtol=0, atol=0)


@OUTSIDE_TRAINER
def test_a_bf16_autocast_step_computes_its_loss_in_float32(teacher_checkpoint):
    model = make(teacher_checkpoint).eval()
    model.teacher_weights.load()
    images, targets = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step((images, targets, torch.arange(6)), 0)
        logits, teacher_logits = model.student(images), model.teacher(images)
    assert logits.dtype == teacher_logits.dtype == torch.bfloat16  # autocast was on
    # The float32 formula of the networks' bf16 outputs.
    logits, teacher_logits = logits.float(), teacher_logits.float()
    expected = F.cross_entropy(logits, targets) + 2.0 * dist_loss(logits, teacher_logits)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_fit_trains_only_the_student_and_logs_the_terms(teacher_checkpoint, tmp_path):
    trainer = fit_teacher_student(make(teacher_checkpoint), teacher_checkpoint, tmp_path)
    assert {"train/loss", "train/ce", "train/dist_inter", "train/dist_intra"} <= set(
        trainer.callback_metrics
    )
    assert "train/kd" not in trainer.callback_metrics  # the authors' CIFAR setting: no KD


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("inter_weight", -1.0, "a number >= 0"),
        ("intra_weight", float("inf"), "a number >= 0"),
        ("dist_weight", -2.0, "a number >= 0"),
        ("kd_weight", -0.5, "a number >= 0"),
        ("temperature", 0.0, "a number > 0"),
        ("ce_weight", -1.0, "a number >= 0"),
    ],
)
def test_bad_arguments_are_one_message_naming_the_key(argument, value, valid):
    message = refused(DIST, teacher_checkpoint="teacher.ckpt", **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"


def test_dist_refuses_a_teacher_without_logits():
    teacher = {"architecture": "resnet14", "weights": "t.ckpt", "embedding": "backbone"}
    assert refused(DIST, teacher=teacher) == (
        "model.init_args.teacher.embedding='backbone': DIST reads the teacher's logits; valid: "
        "auto, logits"
    )
