"""AT: attention maps of the stages after the stem, jointly with cross-entropy."""

import pytest
import torch
from stages_support import ce_and_kd, float64_batch, make_method, resnet_stages, with_statistics
from tests_support import NETWORK64_TOL, OUTSIDE_TRAINER

from distill.methods import AT


def attention(features):
    """The AT paper's ``Q = vec(Σ_c f_c²) / ‖vec(Σ_c f_c²)‖`` (the channel mean, normalised)."""
    summed = features.pow(2).sum(dim=1).flatten(1)
    return summed / summed.norm(dim=1, keepdim=True)


def halve(features):
    """Average pooling of each 2 x 2 block."""
    batch, channels, height, width = features.shape
    return features.reshape(batch, channels, height // 2, 2, width // 2, 2).mean(dim=(3, 5))


@OUTSIDE_TRAINER
@pytest.mark.parametrize(
    ("stages", "kd_weight"),
    [(None, 0.0), ([["stage1", "stage2"], ["stage3", "stage3"]], 0.5)],
    ids=["repdistiller-stages", "a-larger-map-with-kd"],
)
def test_the_loss_is_ce_and_the_attention_terms_by_hand(teacher_checkpoint, stages, kd_weight):
    model = make_method(AT, teacher_checkpoint, stages=stages, at_weight=30.0, ce_weight=0.3,
                        kd_weight=kd_weight, temperature=2.0)  # fmt: skip
    model.teacher_weights.load()
    model = with_statistics(model).double().eval()
    images, targets, indices = float64_batch()
    loss = model.training_step((images, targets, indices), 0)
    pairs = stages or [["stage1", "stage1"], ["stage2", "stage2"], ["stage3", "stage3"]]
    assert model.stage_pairs == [tuple(pair) for pair in pairs]  # RepDistiller's feat[1:-1]
    with torch.no_grad():
        student, logits = resnet_stages(model.student, images)
        teacher, teacher_logits = resnet_stages(model.teacher, images)
        expected = ce_and_kd(model, logits, targets, teacher_logits)
        for student_stage, teacher_stage in pairs:
            s, t = student[student_stage], teacher[teacher_stage]
            s = halve(s) if s.shape[-1] > t.shape[-1] else s  # student stage1 is 32 px, 16 px
            expected = expected + 30.0 * (attention(s) - attention(t)).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=NETWORK64_TOL, atol=0)
