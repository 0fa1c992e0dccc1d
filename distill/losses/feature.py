"""Feature regression: the student's projected features pulled onto a frozen teacher's, as in
FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets") and SimReg (Navaneet et al.
2021, "SimReg: Regression as a Simple Yet Effective Tool for Self-supervised Knowledge
Distillation"); and ``pool_to_common_size``, which brings a pair of feature maps to one spatial
size for the losses that compare them position by position (AT, VID).
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


def pool_to_common_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """The two feature maps average-pooled to their common (smaller) spatial size.

    RepDistiller's AT and VID losses pool whichever map is larger to the other's height
    (``adaptive_avg_pool2d``, square maps assumed); here height and width are matched each
    on its own, which is the same on square maps.

    Args:
        student: ``[B, C_s, h_s, w_s]``.
        teacher: ``[B, C_t, h_t, w_t]``.

    Returns:
        Both maps at ``[min(h_s, h_t), min(w_s, w_t)]``; a map already of that size is
        returned as it is.
    """
    size = tuple(min(a, b) for a, b in zip(student.shape[-2:], teacher.shape[-2:], strict=True))
    if tuple(student.shape[-2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[-2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher
