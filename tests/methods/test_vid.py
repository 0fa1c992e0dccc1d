"""VID: a Gaussian of each teacher stage around a regression of the student's, with learned
per-channel variances, jointly with cross-entropy."""

import math

import pytest
import torch
from stages_support import ce_and_kd, float64_batch, make_method, resnet_stages, with_statistics
from tests_support import NETWORK64_TOL, OUTSIDE_TRAINER, refused

from distill.methods import VID


def negative_log_likelihood(vid, student, teacher):
    """The VID paper's ``Σ_c Σ_hw (log σ_c + (t − μ(s))² / 2σ_c²)`` averaged over all entries
    (RepDistiller's scale, without the constant), ``μ`` RepDistiller's three 1x1 convolutions
    with ReLUs between them, ``σ_c² = log(1 + e^{a_c}) + 1e-5``."""
    mean = student
    for index, conv in enumerate(vid.regressor[::2]):
        mean = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], mean)
        mean = torch.relu(mean) if index < 2 else mean
    variance = (1 + vid.raw_variance.exp()).log() + 1e-5
    variance = variance[None, :, None, None]
    return (0.5 * variance.log() + (teacher - mean).pow(2) / (2 * variance)).mean()


@OUTSIDE_TRAINER
@pytest.mark.parametrize("kd_weight", [0.0, 0.5])
def test_the_loss_is_ce_and_the_vid_terms_by_hand(teacher_checkpoint, kd_weight):
    model = make_method(VID, teacher_checkpoint, vid_weight=3.0, ce_weight=0.3,
                        kd_weight=kd_weight, temperature=2.0)  # fmt: skip
    model.teacher_weights.load()
    with torch.no_grad():  # variances a few steps away from their common start
        for vid in model.vid:
            vid.raw_variance.uniform_(-1.0, 2.0)
    model = with_statistics(model).double().eval()
    images, targets, indices = float64_batch()
    loss = model.training_step((images, targets, indices), 0)
    pairs = [("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3")]
    assert model.stage_pairs == pairs  # RepDistiller's feat[1:-1], one VIDLoss each
    with torch.no_grad():
        student, logits = resnet_stages(model.student, images)
        teacher, teacher_logits = resnet_stages(model.teacher, images)
        expected = ce_and_kd(model, logits, targets, teacher_logits)
        for vid, (student_stage, teacher_stage) in zip(model.vid, pairs, strict=True):
            nll = negative_log_likelihood(vid, student[student_stage], teacher[teacher_stage])
            expected = expected + 3.0 * nll
    torch.testing.assert_close(loss, expected, rtol=NETWORK64_TOL, atol=0)


def test_each_pair_has_a_regressor_to_the_teachers_width_and_variances_starting_at_5(
    teacher_checkpoint,
):
    model = make_method(VID, teacher_checkpoint, student_backbone="resnet8x4")
    widths = [(64, 16), (128, 32), (256, 64)]  # resnet8x4's stages to resnet14's
    for vid, (student, teacher) in zip(model.vid, widths, strict=True):
        first, last = vid.regressor[0], vid.regressor[-1]
        assert (first.in_channels, first.out_channels, last.out_channels) == (
            student, teacher, teacher,
        )  # fmt: skip
        assert torch.allclose(vid.variance(), torch.full((teacher,), 5.0))
    assert refused(make_method, method=VID, checkpoint=teacher_checkpoint, init_variance=0.0) == (
        f"model.init_args.init_variance=0.0; valid: a number > {1e-5:g}"
    )
    assert math.isclose(model.hparams.init_variance, 5.0)
