"""Ahn et al. 2019, "Variational Information Distillation for Knowledge Transfer" (VID).

The teacher's feature map ``t`` is modelled as a Gaussian given the student's ``s``: mean
``μ(s)`` from a small regressor, variance ``σ²_c`` learned per teacher channel; the student
and the regressor minimise the negative log-likelihood, a lower bound on the mutual
information of the two. ``vid_loss`` is the likelihood term, ``VIDLoss`` holds what is
learned. Matches RepDistiller's ``distiller_zoo/VID.py`` (the authors' code), which trains one
``VIDLoss`` per inner stage ``feat[1:-1]`` with β = 1 and sums them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.feature import pool_to_common_size
from distill.precision import float32


@float32
def vid_loss(mean: Tensor, target: Tensor, variance: Tensor) -> Tensor:
    """Gaussian negative log-likelihood ``0.5 · mean_{b,c,k} (log σ²_c + (t − μ)² / σ²_c)``.

    The constant ``0.5 · log 2π`` of the density is left out, as in RepDistiller (it moves
    no gradient); the mean is over all ``B·C·h·w`` entries. Computed in float32 with autocast
    off (``distill.precision``); no gradient reaches the target.

    Args:
        mean: ``[B, C, h, w]`` predicted means ``μ`` (or ``[B, C]``).
        target: The teacher's features ``t``, of the same shape.
        variance: ``[C]`` per-channel variances ``σ²``, positive.

    Returns:
        Scalar loss.
    """
    if mean.shape != target.shape or variance.shape != mean.shape[1:2]:
        raise ValueError(
            f"vid_loss needs mean and target of one shape [B, C, ...] and a variance [C], got "
            f"{tuple(mean.shape)}, {tuple(target.shape)} and {tuple(variance.shape)}"
        )
    variance = variance.view(1, -1, *[1] * (mean.dim() - 2))
    return 0.5 * (variance.log() + (target.detach() - mean).pow(2) / variance).mean()


class VIDLoss(nn.Module):
    """VID for one stage pair: the regressor ``μ`` and the learned variances ``σ²``.

    ``μ`` is RepDistiller's three 1×1 convolutions without bias, ReLU between them,
    ``C_s → hidden → hidden → C_t``. ``σ²_c = softplus(raw_variance_c) + min_variance``,
    starting at ``init_variance``. A larger map of the pair is average-pooled to the other's
    size first (``pool_to_common_size``). The regressor runs in the autocast dtype like the
    student; the likelihood in float32 (``vid_loss``). Trained with the student, dropped at
    export.

    Args:
        student_channels: ``C_s``.
        teacher_channels: ``C_t``.
        hidden_channels: The regressor's width; ``None`` is ``C_t`` (RepDistiller's setting).
        init_variance: ``σ²`` at the start (5.0).
        min_variance: The floor added to the softplus (1e-5), so ``log σ²`` stays finite.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        hidden_channels: int | None = None,
        init_variance: float = 5.0,
        min_variance: float = 1e-5,
    ) -> None:
        super().__init__()
        if init_variance <= min_variance:
            raise ValueError(
                f"VIDLoss init_variance={init_variance} must exceed min_variance={min_variance}"
            )
        hidden = teacher_channels if hidden_channels is None else hidden_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(student_channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, teacher_channels, kernel_size=1, bias=False),
        )
        self.min_variance = min_variance
        # The inverse softplus of the initial variance (RepDistiller's log_scale).
        raw = math.log(math.expm1(init_variance - min_variance))
        self.raw_variance = nn.Parameter(torch.full((teacher_channels,), raw))

    def variance(self) -> Tensor:
        """``σ²`` ``[C_t]``."""
        return F.softplus(self.raw_variance) + self.min_variance

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """VID loss of one stage pair (scalar).

        Args:
            student: ``[B, C_s, h, w]`` student features.
            teacher: ``[B, C_t, h', w']`` teacher features; no gradient reaches them.
        """
        student, teacher = pool_to_common_size(student, teacher)
        return vid_loss(self.regressor(student), teacher, self.variance())
