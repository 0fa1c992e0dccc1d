import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from tests_support import quiet_trainer

from distill.data import DigitsDataModule
from distill.errors import ConfigError
from distill.losses import kd_loss
from distill.methods import KD, Supervised


@pytest.fixture
def teacher_checkpoint(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="resnet14", num_classes=10).state_dict()}, path)
    return str(path)


def make(checkpoint, **kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14",
        teacher_checkpoint=checkpoint, num_classes=10,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    )  # fmt: skip
    return KD(**{**defaults, **kwargs})


def test_loss_is_weighted_ce_plus_kd(teacher_checkpoint):
    model = make(teacher_checkpoint, temperature=3.0, kd_weight=0.7, ce_weight=0.2)
    images, targets = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    model.eval()  # fixed BN statistics, so both evaluations see the same network
    loss = model.training_step((images, targets, torch.arange(6)), 0)
    logits, teacher_logits = model.student(images), model.teacher(images)
    expected = 0.2 * F.cross_entropy(logits, targets) + 0.7 * kd_loss(logits, teacher_logits, 3.0)
    torch.testing.assert_close(loss, expected)


def test_fit_trains_only_the_student_and_leaves_the_teacher_untouched(teacher_checkpoint, tmp_path):
    model = make(teacher_checkpoint)
    teacher_before = copy.deepcopy(model.teacher.state_dict())
    student_before = copy.deepcopy(model.student.state_dict())
    trainer = quiet_trainer(tmp_path, max_steps=4, limit_val_batches=1)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    for name, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name  # weights and BN buffers
    assert not model.teacher.training
    moved = [
        n for n, v in model.student.state_dict().items() if not torch.equal(v, student_before[n])
    ]
    assert "head.weight" in moved and "backbone.conv1.weight" in moved
    assert {"train/kd", "train/ce", "train/loss"} <= set(trainer.callback_metrics)
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.student.parameters()}


def test_backward_sends_no_gradient_to_the_teacher(teacher_checkpoint):
    model = make(teacher_checkpoint)
    batch = (torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.arange(4))
    model.training_step(batch, 0).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.student.parameters())


def test_teacher_with_other_logit_width_is_refused_with_the_shapes(teacher_checkpoint):
    # KD compares logits class by class: a 10-class teacher cannot teach a 5-class student.
    with pytest.raises(ConfigError, match=r"head\.weight \(10, \d+\) vs \(5, \d+\).*num_classes"):
        make(teacher_checkpoint, num_classes=5)


def test_frozen_teacher_alone_raises_no_eval_mode_warning(tmp_path, teacher_checkpoint):
    def eval_mode_warnings(model):
        trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
        return [str(w.message) for w in caught if "in eval mode at the start" in str(w.message)]

    assert eval_mode_warnings(make(teacher_checkpoint)) == []
    model = make(teacher_checkpoint)
    model.student.head.eval()  # a module left in eval mode by mistake is still reported
    assert len(eval_mode_warnings(model)) == 1
