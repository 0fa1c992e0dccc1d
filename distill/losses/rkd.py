"""Park et al. 2019, "Relational Knowledge Distillation": distance- and angle-wise losses.

Both compare the relations among a batch's embeddings rather than the embeddings
themselves, so student and teacher widths may differ. As in the reference implementation
(and RepDistiller), each loss is the mean smooth-L1 (Huber, δ = 1) over all B×B, resp.
B×B×B, entries, and the teacher side carries no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _pairwise_distances(embeddings: Tensor) -> Tensor:
    """Euclidean distances ``[B, B]`` computed from differences, so duplicates give exactly 0."""
    return torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")


def distance_potential(embeddings: Tensor) -> Tensor:
    """``ψ_D(i, j) = ‖e_i − e_j‖ / μ`` with ``μ`` the mean non-zero pairwise distance. ``[B, B]``"""
    distances = _pairwise_distances(embeddings)
    nonzero = distances[distances > 0]
    if nonzero.numel() == 0:  # all rows equal: no relation to scale
        return distances
    return distances / nonzero.mean()


def angle_potential(embeddings: Tensor) -> Tensor:
    """``ψ_A(i, j, k) = ⟨u_ji, u_jk⟩`` with ``u_ji = (e_i − e_j)/‖e_i − e_j‖``. ``[B, B, B]``

    Indexed ``[j, i, k]`` (vertex first). Computed from the Gram matrix ``G = e eᵀ``:
    ``⟨e_i − e_j, e_k − e_j⟩ = G_ik − G_ij − G_jk + G_jj``, divided by the two distances, so
    memory is O(B³ + B·D) instead of the O(B²·D) of the direct difference tensor.
    Degenerate entries (``e_i = e_j`` or ``e_k = e_j``) are 0, as with normalised zero
    vectors in the direct form.
    """
    gram = embeddings @ embeddings.T
    distances = _pairwise_distances(embeddings)  # [j, i]
    nonzero = distances > 0
    # 1/‖e_i − e_j‖, and 0 for coincident rows (dividing by 1 there keeps gradients finite).
    inverse = torch.where(nonzero, 1 / torch.where(nonzero, distances, 1.0), 0.0)
    # dots[j, i, k] = G_ik - G_ji - G_jk + G_jj
    dots = (
        gram.unsqueeze(0) - gram.unsqueeze(2) - gram.unsqueeze(1) + gram.diagonal().view(-1, 1, 1)
    )
    return dots * inverse.unsqueeze(2) * inverse.unsqueeze(1)


def rkd_distance_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Distance-wise RKD loss: mean Huber(ψ_D(student), ψ_D(teacher)) over B×B entries.

    Args:
        student_emb: ``[B, D_s]`` penultimate embeddings of the student.
        teacher_emb: ``[B, D_t]`` of the teacher (no gradient).
    """
    with torch.no_grad():
        target = distance_potential(teacher_emb)
    return F.smooth_l1_loss(distance_potential(student_emb), target)


def rkd_angle_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Angle-wise RKD loss: mean Huber(ψ_A(student), ψ_A(teacher)) over B×B×B entries.

    Args:
        student_emb: ``[B, D_s]`` penultimate embeddings of the student.
        teacher_emb: ``[B, D_t]`` of the teacher (no gradient).
    """
    with torch.no_grad():
        target = angle_potential(teacher_emb)
    return F.smooth_l1_loss(angle_potential(student_emb), target)


def rkd_angle_loss_direct(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """The reference's direct form of ``rkd_angle_loss`` via the ``[B, B, D]`` difference
    tensor; kept for the benchmark and as a cross-check, not for training."""

    def angles(e: Tensor) -> Tensor:
        directions = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i, D]
        return torch.bmm(directions, directions.transpose(1, 2))

    with torch.no_grad():
        target = angles(teacher_emb)
    return F.smooth_l1_loss(angles(student_emb), target)
