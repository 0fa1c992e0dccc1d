"""Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (SP).

The student is taught the teacher's pattern of pairwise similarities within the batch: the
``B × B`` Gram matrices of the flattened activations, each row L2-normalised, compared in
squared Frobenius norm over ``B²``. Matches RepDistiller's ``distiller_zoo/SP.py``
(``Similarity``, which its author verified), trained there with β = 3000 on the last stage's
feature map ``feat[-2]``. Computed in float32 with autocast off (``distill.precision``): the
Gram entries of post-ReLU maps are large, close dot products that bf16 rounds to a few digits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.precision import float32


def similarity_matrix(features: Tensor) -> Tensor:
    """``G̃ = row-normalise(F Fᵀ)`` with ``F`` the ``[B, C·h·w]`` flattened activations.

    Args:
        features: ``[B, C, h, w]`` feature maps (or ``[B, D]`` embeddings).

    Returns:
        ``[B, B]``; row ``i`` has unit L2 norm.
    """
    flat = features.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


@float32
def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving loss ``‖G̃_t − G̃_s‖_F² / B²``.

    Student and teacher may differ in channels and spatial size (only the ``B × B``
    similarities are compared). No gradient reaches the teacher.

    Args:
        student: ``[B, C_s, h_s, w_s]`` (or ``[B, D_s]``).
        teacher: ``[B, C_t, h_t, w_t]`` (or ``[B, D_t]``) of the same images.

    Returns:
        Scalar loss.
    """
    if len(student) != len(teacher):
        raise ValueError(
            f"sp_loss needs the same batch for student and teacher, got {len(student)} "
            f"and {len(teacher)} samples"
        )
    difference = similarity_matrix(teacher.detach()) - similarity_matrix(student)
    return difference.pow(2).sum() / len(student) ** 2
