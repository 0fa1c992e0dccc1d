"""Park et al. 2019, "Relational Knowledge Distillation": distance- and angle-wise losses.

Both compare the relations among a batch's embeddings rather than the embeddings
themselves, so student and teacher widths may differ. As in the reference implementation
(and RepDistiller), each loss is the mean smooth-L1 (Huber, δ = 1) over all B×B, resp.
B×B×B, entries, and the teacher side carries no gradient. Both run in float32 with autocast
off (``distill.losses.precision``): in bf16 the Gram form of the angles cancels
catastrophically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.precision import float32


def _pairwise_distances(embeddings: Tensor) -> Tensor:
    """Euclidean distances ``[B, B]`` computed from differences, so duplicates give exactly 0."""
    return torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")


def distance_potential(embeddings: Tensor) -> Tensor:
    """``ψ_D(i, j) = ‖e_i − e_j‖ / μ`` with ``μ`` the mean non-zero pairwise distance. ``[B, B]``"""
    distances = _pairwise_distances(embeddings)
    # The zeros add nothing to the sum; counting the others keeps every size fixed (no sync).
    count = (distances > 0).sum()
    mean = distances.sum() / count.clamp_min(1)
    return distances / torch.where(count > 0, mean, 1.0)  # all rows equal: nothing to scale


def _gram_and_inverse_distances(embeddings: Tensor) -> tuple[Tensor, Tensor]:
    """``G = e eᵀ`` and ``1/‖e_i − e_j‖`` (0 for coincident rows), both ``[B, B]``."""
    distances = _pairwise_distances(embeddings)
    nonzero = distances > 0
    # Dividing by 1 where rows coincide keeps gradients finite; those entries are then zeroed.
    inverse = torch.where(nonzero, 1 / torch.where(nonzero, distances, 1.0), 0.0)
    return embeddings @ embeddings.T, inverse


def _angles_at(gram: Tensor, inverse: Tensor, start: int, stop: int) -> Tensor:
    """``ψ_A[j, i, k]`` for the vertices ``start <= j < stop``: ``[stop - start, B, B]``.

    ``⟨e_i − e_j, e_k − e_j⟩ = G_ik − G_ji − G_jk + G_jj``, divided by both distances.
    """
    rows, inv = gram[start:stop], inverse[start:stop]
    dots = gram.unsqueeze(0) - rows.unsqueeze(2) - rows.unsqueeze(1)
    dots = dots + gram.diagonal()[start:stop].view(-1, 1, 1)
    return dots * inv.unsqueeze(2) * inv.unsqueeze(1)


def angle_potential(embeddings: Tensor) -> Tensor:
    """``ψ_A(i, j, k) = ⟨u_ji, u_jk⟩`` with ``u_ji = (e_i − e_j)/‖e_i − e_j‖``. ``[B, B, B]``

    Indexed ``[j, i, k]`` (vertex first). Computed from the Gram matrix ``G = e eᵀ``:
    ``⟨e_i − e_j, e_k − e_j⟩ = G_ik − G_ij − G_jk + G_jj``, divided by the two distances, so
    memory is O(B³ + B·D) instead of the O(B²·D) of the direct difference tensor.
    Degenerate entries (``e_i = e_j`` or ``e_k = e_j``) are 0, as with normalised zero
    vectors in the direct form.
    """
    gram, inverse = _gram_and_inverse_distances(embeddings)
    return _angles_at(gram, inverse, 0, len(embeddings))


class _AngleHuberSum(torch.autograd.Function):
    """``Σ Huber(ψ_A student − ψ_A teacher)`` over all B³ angles, one vertex chunk at a time.

    The gradient with respect to the student's Gram matrix ``G`` and inverse distances
    ``a`` is accumulated in the same pass (the output is a scalar, so the backward pass only
    scales it), so no B³ tensor outlives its chunk and nothing is recomputed. With
    ``ψ[j,i,k] = dots[j,i,k]·a[j,i]·a[j,k]``, ``dots = G_ik − G_ji − G_jk + G_jj`` and
    ``R = Huber′(ψ_s − ψ_t)``, ``W = R·a[j,i]·a[j,k]``:
    ``∂/∂G_ik = Σ_j W[j,i,k]``, ``∂/∂G_ji −= Σ_k W[j,i,k]``, ``∂/∂G_jk −= Σ_i W[j,i,k]``,
    ``∂/∂G_jj = Σ_ik W[j,i,k]`` and
    ``∂/∂a[j,m] = Σ_k R·dots[j,m,k]·a[j,k] + Σ_i R·dots[j,i,m]·a[j,i]``.
    """

    @staticmethod
    def forward(ctx, gram, inverse, teacher_gram, teacher_inverse, step: int):  # noqa: D102
        total = gram.new_zeros(())
        d_gram, d_inverse = torch.zeros_like(gram), torch.zeros_like(inverse)
        for start in range(0, len(gram), step):
            stop = min(start + step, len(gram))
            rows, inv = gram[start:stop], inverse[start:stop]
            dots = gram.unsqueeze(0) - rows.unsqueeze(2) - rows.unsqueeze(1)
            dots += gram.diagonal()[start:stop].view(-1, 1, 1)
            diff = dots * inv.unsqueeze(2) * inv.unsqueeze(1)
            diff -= _angles_at(teacher_gram, teacher_inverse, start, stop)
            size = diff.abs()
            total += torch.where(size < 1, 0.5 * diff * diff, size - 0.5).sum()
            slope = diff.clamp_(-1, 1)  # R, reusing diff's memory
            del size
            weights = slope * inv.unsqueeze(2) * inv.unsqueeze(1)  # W
            d_gram += weights.sum(0)
            by_row, by_column = weights.sum(2), weights.sum(1)  # [c, B]: Σ_k W, Σ_i W
            d_gram[start:stop] -= by_row + by_column
            d_gram.diagonal()[start:stop] += by_row.sum(1)
            del weights
            slope *= dots  # R·dots
            d_inverse[start:stop] += torch.bmm(slope, inv.unsqueeze(2)).squeeze(2)
            d_inverse[start:stop] += torch.bmm(inv.unsqueeze(1), slope).squeeze(1)
        ctx.save_for_backward(d_gram, d_inverse)
        return total

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        d_gram, d_inverse = ctx.saved_tensors
        return grad_output * d_gram, grad_output * d_inverse, None, None, None


@float32
def rkd_distance_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Distance-wise RKD loss: mean Huber(ψ_D(student), ψ_D(teacher)) over B×B entries.

    Args:
        student_emb: ``[B, D_s]`` penultimate embeddings of the student.
        teacher_emb: ``[B, D_t]`` of the teacher (no gradient).
    """
    with torch.no_grad():
        target = distance_potential(teacher_emb)
    return F.smooth_l1_loss(distance_potential(student_emb), target)


@float32
def rkd_angle_loss(
    student_emb: Tensor, teacher_emb: Tensor, chunk_elements: int = 1 << 18
) -> Tensor:
    """Angle-wise RKD loss: mean Huber(ψ_A(student), ψ_A(teacher)) over B×B×B entries.

    The B³ angles are never held at once: vertices are processed in chunks of about
    ``chunk_elements`` angles, and each chunk's gradient is accumulated as it goes (see
    ``_AngleHuberSum``), so memory is O(chunk + B² + B·D) for any batch size.

    Args:
        student_emb: ``[B, D_s]`` penultimate embeddings of the student.
        teacher_emb: ``[B, D_t]`` of the teacher (no gradient).
        chunk_elements: Angles per chunk: a speed/memory trade-off that leaves the result
            alone (small chunks stay in cache; 2¹⁸ was fastest at B = 256 on this CPU).
    """
    batch = len(student_emb)
    student = _gram_and_inverse_distances(student_emb)
    with torch.no_grad():
        teacher = _gram_and_inverse_distances(teacher_emb)
    step = max(1, chunk_elements // batch**2)
    return _AngleHuberSum.apply(*student, *teacher, step) / batch**3


@float32
def rkd_angle_loss_direct(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """The reference's direct form of ``rkd_angle_loss`` via the ``[B, B, D]`` difference
    tensor; kept for the benchmark and as a cross-check, not for training."""

    def angles(e: Tensor) -> Tensor:
        directions = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i, D]
        return torch.bmm(directions, directions.transpose(1, 2))

    with torch.no_grad():
        target = angles(teacher_emb)
    return F.smooth_l1_loss(angles(student_emb), target)
