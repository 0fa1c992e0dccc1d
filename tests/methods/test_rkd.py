import warnings

import pytest
import torch
import torch.nn.functional as F
from tests_support import OUTSIDE_TRAINER, refused

from distill.errors import ConfigError
from distill.losses import rkd_angle_loss, rkd_distance_loss
from distill.methods import RKD, Supervised


@pytest.fixture
def teacher_checkpoint(tmp_path):
    torch.manual_seed(2)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="wrn_16_2", num_classes=10).state_dict()}, path)
    return str(path)


def make(checkpoint, **kwargs):
    return RKD(
        student_backbone="resnet8", teacher_backbone="wrn_16_2", teacher_checkpoint=checkpoint,
        num_classes=10, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["D", "A", "DA"])
@pytest.mark.parametrize("normalize", [False, True])
@OUTSIDE_TRAINER
def test_loss_is_ce_plus_weighted_relations(teacher_checkpoint, mode, normalize):
    model = make(teacher_checkpoint, mode=mode, normalize=normalize, rkd_weight=0.5).eval()
    images, targets = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = model.training_step((images, targets, torch.arange(8)), 0)
    s_emb, logits = model.student.forward_features(images)
    t_emb = model.teacher.backbone(images)  # widths differ: 64 vs 128
    if normalize:
        s_emb, t_emb = F.normalize(s_emb), F.normalize(t_emb)
    relational = 0.0
    if "D" in mode:
        relational = relational + 25 * rkd_distance_loss(s_emb, t_emb)
    if "A" in mode:
        relational = relational + 50 * rkd_angle_loss(s_emb, t_emb)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets) + 0.5 * relational)


def test_unknown_mode_is_named():
    with pytest.raises(ConfigError, match="mode='AD'.*D, A, DA"):
        RKD(mode="AD")


@OUTSIDE_TRAINER
def test_no_gradient_reaches_the_teacher(teacher_checkpoint):
    model = make(teacher_checkpoint)
    batch = (torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,)), torch.arange(6))
    model.training_step(batch, 0).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.backbone.conv1.weight.grad.abs().sum() > 0


def test_batches_below_three_skip_both_relations_and_warn_once_per_term(
    teacher_checkpoint, monkeypatch
):
    # With 2 samples the one normalised distance is 1 and every angle is 1 or 0 for any
    # embeddings: both terms would be 0 with no gradient, so they are skipped, not logged.
    model = make(teacher_checkpoint).eval()
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **_: logged.__setitem__(name, value))

    def step(size):
        logged.clear()
        images, targets = torch.randn(size, 3, 32, 32), torch.randint(0, 10, (size,))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = model.training_step((images, targets, torch.arange(size)), 0)
        ce = F.cross_entropy(model.student(images), targets)
        messages = [str(w.message) for w in caught if "RKD" in str(w.message)]
        return loss, ce, messages, dict(logged)

    loss, ce, messages, first = step(1)
    torch.testing.assert_close(loss, ce)  # CE alone, no NaN
    assert set(first) == {"train/loss", "train/ce"}
    assert len(messages) == 2
    for term, message in zip(["rkd_distance", "rkd_angle"], messages, strict=True):
        assert f"skips its {term} term on a batch of 1 sample(s)" in message
        assert "at least 3" in message and "data.init_args.drop_last" in message
    loss, ce, messages, second = step(2)
    torch.testing.assert_close(loss, ce)
    assert set(second) == {"train/loss", "train/ce"} and messages == []  # warned once
    loss, ce, messages, third = step(3)
    assert set(third) == {"train/loss", "train/ce", "train/rkd_distance", "train/rkd_angle"}
    relational = 25 * third["train/rkd_distance"] + 50 * third["train/rkd_angle"]
    torch.testing.assert_close(loss, ce + relational)
    assert messages == [] and third["train/rkd_angle"] > 0


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("distance_weight", -25.0, "a number >= 0"),
        ("angle_weight", float("nan"), "a number >= 0"),
        ("rkd_weight", -1.0, "a number >= 0"),
    ],
)
def test_bad_numbers_are_one_message_naming_the_key(argument, value, valid):
    message = refused(RKD, teacher_checkpoint="teacher.ckpt", **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"
