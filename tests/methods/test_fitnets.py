"""FitNets: the hint through RepDistiller's regressor, jointly with cross-entropy."""

import pytest
import torch
from stages_support import (
    batch_norm,
    ce_and_kd,
    float64_batch,
    make_method,
    resnet_stages,
    with_statistics,
)
from tests_support import NETWORK64_TOL, OUTSIDE_TRAINER, refused
from torch import nn

from distill.errors import ConfigError
from distill.methods import FitNets


def make(checkpoint, **kwargs):
    return make_method(FitNets, checkpoint, **kwargs)


def regress(connector, student_map):
    """RepDistiller's ``ConvReg`` by hand for a 1x1 convolution: conv, eval BN, ReLU."""
    weight = connector.conv.weight[:, :, 0, 0]
    return torch.relu(batch_norm(connector.bn, torch.einsum("oc,bchw->bohw", weight, student_map)))


@OUTSIDE_TRAINER
@pytest.mark.parametrize("kd_weight", [0.0, 0.5])
def test_the_loss_is_ce_and_the_regressed_hint_by_hand(teacher_checkpoint, kd_weight):
    model = make(teacher_checkpoint, hint_weight=7.0, ce_weight=0.3, kd_weight=kd_weight,
                 temperature=2.0)  # fmt: skip
    model.teacher_weights.load()
    model = with_statistics(model).double().eval()  # fixed BN statistics on both sides
    images, targets, indices = float64_batch()
    loss = model.training_step((images, targets, indices), 0)
    assert model.stage_pairs == [("stage2", "stage2")]  # RepDistiller's hint_layer 2
    with torch.no_grad():
        student, logits = resnet_stages(model.student, images)
        teacher, teacher_logits = resnet_stages(model.teacher, images)
        hint = regress(model.connectors.connectors[0], student["stage2"]) - teacher["stage2"]
        expected = 7.0 * hint.pow(2).mean() + ce_and_kd(model, logits, targets, teacher_logits)
    # Float64 networks on both sides (tests_support.NETWORK64_TOL); a hint from another stage
    # or without the regressor's batch norm or ReLU moves the loss by far more.
    torch.testing.assert_close(loss, expected, rtol=NETWORK64_TOL, atol=0)


def test_the_regressor_is_repdistillers_convreg_for_each_resolution(teacher_checkpoint):
    model = make(teacher_checkpoint, stages=[["stage1", "stage2"], ["stage3", "stage3"],
                                             ["stage3", "stage2"], ["stem", "stage3"]])  # fmt: skip
    twice, same, half, larger = model.connectors.connectors
    assert isinstance(twice.conv, nn.Conv2d) and twice.conv.stride == (2, 2)  # 32 -> 16 px
    assert twice.conv.kernel_size == (3, 3) and twice.conv.out_channels == 32
    assert same.conv.kernel_size == (1, 1) and same.conv.in_channels == 64
    assert isinstance(half.conv, nn.ConvTranspose2d) and half.conv.kernel_size == (4, 4)
    assert larger.conv.kernel_size == (25, 25)  # 32 -> 8 px by a valid convolution
    assert all(isinstance(c.relu, nn.ReLU) for c in model.connectors.connectors)


@OUTSIDE_TRAINER
def test_a_batch_of_another_size_than_the_regressor_was_built_for_is_named(teacher_checkpoint):
    model = make(teacher_checkpoint, stages=[["stem", "stage3"]])  # a 25x25 valid convolution
    model.teacher_weights.load()
    batch = (torch.randn(2, 3, 64, 64), torch.zeros(2, dtype=torch.long), torch.arange(2))
    with pytest.raises(ConfigError) as error:
        model.training_step(batch, 0)
    assert str(error.value) == (
        "model.init_args.image_size=32: the regressor of stage pair ['stem', 'stage3'] was built "
        "for 32 px images and gives (64, 40, 40) on this batch of 64 px images, while the "
        "teacher's stage is (64, 16, 16); set image_size to the side of the training images"
    )
    assert make(teacher_checkpoint, stages=[["stem", "stage3"]], image_size=64)


def test_bad_arguments_are_one_message_naming_the_key(teacher_checkpoint):
    assert refused(make, checkpoint=teacher_checkpoint, image_size=0) == (
        "model.init_args.image_size=0; valid: an integer >= 1"
    )
    message = refused(make, checkpoint=teacher_checkpoint, stages=[["stage3", "stem"]])
    assert message.startswith("model.init_args.stages: stage pair ('stage3', 'stem'): no connector")


@OUTSIDE_TRAINER
def test_a_teacher_fed_larger_images_gets_a_regressor_to_its_larger_map(teacher_checkpoint):
    spec = dict(architecture="resnet14", weights=teacher_checkpoint, image_size=64)
    model = make(None, teacher_backbone="resnet32x4", teacher=spec)
    (connector,) = model.connectors.connectors
    assert isinstance(connector.conv, nn.ConvTranspose2d)  # student 16 px to teacher 32 px
    model.teacher_weights.load()
    images = torch.randn(2, 3, 32, 32)
    loss = model.training_step((images, torch.zeros(2, dtype=torch.long), torch.arange(2)), 0)
    assert loss.isfinite()
