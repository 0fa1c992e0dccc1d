"""Feature regression: the student's projected features pulled onto a frozen teacher's, as in
FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets") and SimReg (Navaneet et al.
2021, "SimReg: Regression as a Simple Yet Effective Tool for Self-supervised Knowledge
Distillation").
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from distill.precision import float32


@float32
def feature_loss(
    student: Tensor, teacher: Tensor, metric: Literal["mse", "cosine"] = "mse"
) -> Tensor:
    """Distance between paired feature vectors, averaged: over a batch of embeddings, or
    over every token (position) of a batch of feature maps.

    ``mse``: the mean over all entries of ``(s − t)²`` (FitNets' hint loss as RepDistiller
    computes it, ``nn.MSELoss()``). ``cosine``: the mean over vectors of ``1 − cos(s, t)``,
    the cosine taken along the channel dimension (SimReg's MSE of L2-normalised vectors,
    ``2 − 2·cos``, halved).

    Args:
        student: ``[B, D]`` embeddings or ``[B, D, h, w]`` feature maps (one ``D``-vector
            per token).
        teacher: The teacher's, of the same shape; no gradient reaches it.
        metric: ``mse`` or ``cosine``.

    Returns:
        Scalar loss.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"feature_loss needs features of the same shape, got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    if metric == "mse":
        return F.mse_loss(student, teacher.detach())
    if metric == "cosine":
        return (1 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean()
    raise ValueError(f"feature_loss: metric {metric!r}; valid: mse, cosine")
