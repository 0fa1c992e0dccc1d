"""Zhao et al. 2022, "Decoupled Knowledge Distillation" (DKD).

KD's loss splits into a target-class term and a non-target-class term,
``KD = TCKD + (1 − p^t_gt) · NCKD``; DKD weighs them freely, ``α · TCKD + β · NCKD``, so that
NCKD is no longer suppressed where the teacher is confident. Matches mdistiller's
``mdistiller/distillers/DKD.py``; its CIFAR-100 defaults are α = 1, β = 8 (resnet32x4 →
resnet8x4; β = 2 for resnet56 → resnet20 and resnet110 → resnet32, β = 6 for vgg13 → vgg8
and wrn_40_2 → wrn_16_2), T = 4, cross-entropy weight 1, the loss warmed up linearly over
20 epochs (``dkd_warmup``). Computed in float32 with autocast off (``distill.precision``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.precision import float32


def _kl_rows(log_target: Tensor, log_prediction: Tensor) -> Tensor:
    """``Σ_j p_j (log p_j − log q_j)`` per row ``[B]``, with ``0 · log 0 = 0`` (and no NaN
    from the ``−∞`` of an excluded class, in the value or the gradient)."""
    target = log_target.exp()
    difference = (log_target - log_prediction).masked_fill(target == 0, 0.0)
    return (target * difference).sum(dim=1)


def _binary_log_probs(log_probs: Tensor, targets: Tensor, target_mask: Tensor) -> Tensor:
    """``[B, 2]``: ``log p_gt`` and ``log Σ_{j≠gt} p_j`` (a log-sum-exp: exact where
    ``1 − p_gt`` would round to 0)."""
    others = log_probs.masked_fill(target_mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat([log_probs.gather(1, targets.unsqueeze(1)), others], dim=1)


@float32
def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """``(T² · TCKD, T² · NCKD)``, each a batch mean.

    With ``p = softmax(z/T)``: ``TCKD = KL(b^t ‖ b^s)`` over the binary distributions
    ``b = (p_gt, 1 − p_gt)``, and ``NCKD = KL(p̂^t ‖ p̂^s)`` over the non-target classes with
    ``p̂_j = p_j / (1 − p_gt)``, ``j ≠ gt``. mdistiller excludes the target class by
    subtracting 1000 from its logit/T; here it is excluded exactly (the same values while
    logits/T differ by far less than 1000), so NCKD passes no gradient to the target logit.
    TCKD's ``log(1 − p_gt)`` is a log-sum-exp of the non-target log-probabilities, where
    mdistiller's ``log Σ_{j≠gt} p_j`` becomes ``−∞`` (an infinite loss) once the sum
    underflows (a student logit gap above ~100·T in float32). No gradient reaches the teacher.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``.
        targets: ``[B]`` class indices (the ground truth ``gt``).
        temperature: ``T`` (4).
    """
    if student_logits.shape != teacher_logits.shape or targets.shape != student_logits.shape[:1]:
        raise ValueError(
            f"dkd_terms needs student and teacher logits [B, C] and targets [B], got "
            f"{tuple(student_logits.shape)}, {tuple(teacher_logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    target_mask = F.one_hot(targets, student_logits.shape[1]).bool()
    student = student_logits / temperature
    teacher = teacher_logits.detach() / temperature
    tckd = _kl_rows(
        _binary_log_probs(teacher.log_softmax(dim=1), targets, target_mask),
        _binary_log_probs(student.log_softmax(dim=1), targets, target_mask),
    )
    nckd = _kl_rows(
        teacher.masked_fill(target_mask, float("-inf")).log_softmax(dim=1),
        student.masked_fill(target_mask, float("-inf")).log_softmax(dim=1),
    )
    return tckd.mean() * temperature**2, nckd.mean() * temperature**2


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """DKD loss ``T² · (α · TCKD + β · NCKD)``, batch mean (see ``dkd_terms``).

    Without the warm-up factor, which the caller applies (``dkd_warmup``), as mdistiller's
    ``DKD.forward_train`` does.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``.
        targets: ``[B]`` class indices.
        alpha: ``α``, the TCKD weight (1).
        beta: ``β``, the NCKD weight (8: mdistiller's resnet32x4 → resnet8x4).
        temperature: ``T`` (4).

    Returns:
        Scalar loss.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, targets, temperature)
    return alpha * tckd + beta * nckd


def dkd_warmup(epoch: int, warmup_epochs: int = 20) -> float:
    """mdistiller's linear warm-up of the DKD loss, ``min((epoch + 1) / warmup_epochs, 1)``.

    mdistiller counts epochs from 1 and weighs epoch ``e`` by ``min(e / 20, 1)``; ``epoch``
    here counts from 0 (Lightning's ``current_epoch``), so the first epoch is weighed 1/20
    and epoch 19 onwards fully.

    Args:
        epoch: The 0-based epoch.
        warmup_epochs: The epochs of the ramp (20); 0 disables it.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)
