"""Zagoruyko & Komodakis 2017, "Paying More Attention to Attention: Improving the Performance
of Convolutional Neural Networks via Attention Transfer" (AT).

The attention map of a feature map ``f`` ``[B, C, h, w]`` is the channel mean of ``f^p`` at
each position, flattened and L2-normalised per sample, so student and teacher may differ in
width and in activation scale. As in RepDistiller (``distiller_zoo/AT.py``, which follows the
authors' code): each stage pair contributes the mean over ``B·h·w`` entries of the squared
difference of the maps, the pairs are summed (RepDistiller's ``sum(loss_group)``, what its
weight β = 1000 was tuned for), and a larger map is average-pooled to the smaller one's size
first. The maps are computed in float32 with autocast off (``distill.precision``): entries of
size ``1/√(h·w)`` whose difference is squared lose most of their digits in bf16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.feature import pool_to_common_size
from distill.precision import float32


def attention_map(features: Tensor, p: int = 2) -> Tensor:
    """``Q = normalise(mean_c f_c^p)``: one L2-normalised ``[h·w]`` map per sample.

    Args:
        features: ``[B, C, h, w]``.
        p: The power (AT and RepDistiller: 2).

    Returns:
        ``[B, h·w]``.
    """
    return F.normalize(features.pow(p).mean(dim=1).flatten(1), dim=1)


@float32
def _stage_loss(student: Tensor, teacher: Tensor, p: int) -> Tensor:
    student, teacher = pool_to_common_size(student, teacher.detach())
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


def at_loss(
    student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], p: int = 2
) -> Tensor:
    """Attention-transfer loss ``Σ_j mean_{b,k} (Q_s^j[b, k] − Q_t^j[b, k])²`` over stage pairs.

    ``Q^j = attention_map(f^j, p)`` of stage ``j``; a pair whose spatial sizes differ is
    compared at the smaller size (``pool_to_common_size``). Matches RepDistiller's
    ``Attention`` summed over its stage pairs; RepDistiller trains it with β = 1000 on the
    inner stages ``feat[1:-1]``. No gradient reaches the teacher.

    Args:
        student_features: One ``[B, C_s, h, w]`` map per stage.
        teacher_features: The teacher's maps ``[B, C_t, h', w']`` of the paired stages.
        p: The power of the attention map (2).

    Returns:
        Scalar loss.
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            f"at_loss needs the same number of student and teacher stages (at least one), "
            f"got {len(student_features)} and {len(teacher_features)}"
        )
    losses = [
        _stage_loss(student, teacher, p)
        for student, teacher in zip(student_features, teacher_features, strict=True)
    ]
    return torch.stack(losses).sum()
