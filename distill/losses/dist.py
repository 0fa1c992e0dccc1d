"""Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (DIST).

Instead of matching the teacher's probabilities exactly (KL), the student matches their
relations, measured by Pearson correlation, which ignores any positive affine change of
scale and shift: inter-class (each sample's class probabilities, student against teacher)
and intra-class (each class's probabilities across the batch). Matches the authors'
``lib/models/losses/dist_kd.py`` (hunto/image_classification_sota, linked from DIST_KD) and
torchdistill's ``DISTLoss``: β = γ = 1 and, in the CIFAR-100 setting (``dist_t4``, loss
weight 2 beside cross-entropy weight 1), τ = 4 (τ = 1 on ImageNet). Computed in float32 with
autocast off (``distill.precision``): the correlations subtract means from probabilities.
"""

from __future__ import annotations

from torch import Tensor

from distill.precision import float32


def mean_pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over rows ``i`` of the Pearson correlation of ``a[i]`` and ``b[i]``.

    As the authors' code: ``⟨ā, b̄⟩ / (‖ā‖ ‖b̄‖ + ε)`` with ``ā = a − mean(a)`` per row.

    Args:
        a: ``[N, K]``.
        b: ``[N, K]``.
        eps: ``ε`` (1e-8).
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return ((a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)).mean()


@float32
def dist_terms(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """``(τ² · inter, τ² · intra)`` relation losses of ``Y = softmax(z / τ)`` ``[B, C]``.

    ``inter = 1 − mean_i ρ(Y_s[i, :], Y_t[i, :])`` over the ``B`` samples and
    ``intra = 1 − mean_c ρ(Y_s[:, c], Y_t[:, c])`` over the ``C`` classes, ``ρ`` the Pearson
    correlation (``mean_pearson_correlation``). No gradient reaches the teacher.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``.
        temperature: ``τ`` (4, the CIFAR-100 setting).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"dist_terms needs logits of the same shape, got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )
    student = (student_logits / temperature).softmax(dim=1)
    teacher = (teacher_logits.detach() / temperature).softmax(dim=1)
    inter = 1 - mean_pearson_correlation(student, teacher)
    intra = 1 - mean_pearson_correlation(student.T, teacher.T)
    return inter * temperature**2, intra * temperature**2


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 4.0,
) -> Tensor:
    """DIST loss ``τ² · (β · inter + γ · intra)`` (see ``dist_terms``).

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``.
        beta: ``β``, the inter-class weight (1).
        gamma: ``γ``, the intra-class weight (1).
        temperature: ``τ`` (4).

    Returns:
        Scalar loss.
    """
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    return beta * inter + gamma * intra
