"""SP: the batch's similarities at the last map before pooling, jointly with cross-entropy."""

import pytest
import torch
from stages_support import ce_and_kd, float64_batch, make_method, resnet_stages, with_statistics
from tests_support import NETWORK64_TOL, OUTSIDE_TRAINER

from distill.methods import SP


def similarities(features):
    """SP paper's ``G̃ = Q Qᵀ / ‖(Q Qᵀ)_[i,:]‖₂`` of the ``[B, C·h·w]`` activations ``Q``."""
    flat = features.flatten(1)
    gram = flat @ flat.T
    return gram / gram.norm(dim=1, keepdim=True)


@OUTSIDE_TRAINER
@pytest.mark.parametrize(
    ("stages", "kd_weight"),
    [(None, 0.0), ([["stage3", "stage3"], ["stage1", "stage2"]], 0.5)],
    ids=["repdistiller-stage", "two-pairs-with-kd"],
)
def test_the_loss_is_ce_and_the_similarity_terms_by_hand(teacher_checkpoint, stages, kd_weight):
    model = make_method(SP, teacher_checkpoint, stages=stages, sp_weight=30.0, ce_weight=0.3,
                        kd_weight=kd_weight, temperature=2.0)  # fmt: skip
    model.teacher_weights.load()
    model = with_statistics(model).double().eval()
    images, targets, indices = float64_batch()
    loss = model.training_step((images, targets, indices), 0)
    pairs = stages or [["stage3", "stage3"]]
    assert model.stage_pairs == [tuple(pair) for pair in pairs]  # RepDistiller's feat[-2]
    with torch.no_grad():
        student, logits = resnet_stages(model.student, images)
        teacher, teacher_logits = resnet_stages(model.teacher, images)
        expected = ce_and_kd(model, logits, targets, teacher_logits)
        for student_stage, teacher_stage in pairs:
            difference = similarities(teacher[teacher_stage]) - similarities(student[student_stage])
            expected = expected + 30.0 * difference.pow(2).sum() / len(images) ** 2
    torch.testing.assert_close(loss, expected, rtol=NETWORK64_TOL, atol=0)
