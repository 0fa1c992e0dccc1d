"""SEED's distillation loss (Fang et al. 2021, "SEED: Self-supervised Distillation for Visual
Representation"): the student learns the teacher's similarity distribution over a queue.

For an image with L2-normalised teacher embedding ``t`` and student embedding ``s``, the
candidates are ``t`` itself followed by the queued teacher embeddings ``u_1..u_Q``;
``p^T = softmax([t·t, t·u_1, ..., t·u_Q]/τ_t)`` is the teacher's distribution and
``p^S = softmax([s·t, s·u_1, ..., s·u_Q]/τ_s)`` the student's, and the loss is the
cross-entropy ``-Σ_j p^T_j log p^S_j`` (batch mean). Logits are scored in float32 with
autocast off, as in ``distill.losses.contrastive``: ``τ_t = 0.01`` multiplies a bf16 rounding
of the dot product by 100.
"""

from __future__ import annotations

from torch import Tensor

from distill.losses.contrastive import contrast_logits
from distill.precision import float32


@float32
def seed_targets(teacher: Tensor, queue: Tensor, teacher_temperature: float = 0.01) -> Tensor:
    """The teacher's distribution ``p^T`` ``[B, 1 + Q]`` over its own embedding and the queue.

    Args:
        teacher: ``[B, D]`` L2-normalised teacher embeddings ``t``.
        queue: ``[Q, D]`` L2-normalised queued teacher embeddings ``u_j``.
        teacher_temperature: ``τ_t``.
    """
    return contrast_logits(teacher, teacher, queue, teacher_temperature).softmax(dim=1)


@float32
def seed_loss(
    student: Tensor,
    teacher: Tensor,
    queue: Tensor,
    student_temperature: float = 0.2,
    teacher_temperature: float = 0.01,
) -> Tensor:
    """SEED's cross-entropy ``-Σ_j p^T_j log p^S_j``, batch mean (no gradient to the teacher).

    Args:
        student: ``[B, D]`` L2-normalised student embeddings ``s``.
        teacher: ``[B, D]`` L2-normalised teacher embeddings ``t`` of the same images.
        queue: ``[Q, D]`` L2-normalised queued teacher embeddings ``u_j``.
        student_temperature: ``τ_s`` (SEED: 0.2).
        teacher_temperature: ``τ_t`` (SEED: 0.01).
    """
    teacher = teacher.detach()
    targets = seed_targets(teacher, queue, teacher_temperature)
    log_probs = contrast_logits(student, teacher, queue, student_temperature).log_softmax(dim=1)
    return -(targets * log_probs).sum(dim=1).mean()
