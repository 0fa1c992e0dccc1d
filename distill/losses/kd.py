"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Soft-target loss ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over the batch.

    The ``T²`` factor keeps the gradient scale independent of ``T`` (Hinton et al.). The
    teacher side carries no gradient.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``.
        temperature: Softening temperature ``T``.

    Returns:
        Scalar loss.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss needs logits of the same shape, got student {tuple(student_logits.shape)} "
            f"and teacher {tuple(teacher_logits.shape)}"
        )
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2
