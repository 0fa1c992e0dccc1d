"""Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge
Transfer" (PKT).

Each embedding's cosine similarities to the batch, mapped from [-1, 1] to [0, 1] and
normalised to sum to one, are a conditional distribution over the batch; the student's is
pulled to the teacher's in KL divergence. Matches RepDistiller's ``distiller_zoo/PKT.py``
(the authors' code), ε = 1e-7 included, trained there with β = 30000 on the embedding
``feat[-1]``. Computed in float32 with autocast off (``distill.precision``): cosines of similar
embeddings differ in digits that a bf16 matrix product drops.
"""

from __future__ import annotations

from torch import Tensor

from distill.precision import float32


def similarity_distribution(embeddings: Tensor, eps: float = 1e-7) -> Tensor:
    """``P[i, j] = K[i, j] / Σ_l K[i, l]`` with ``K = (1 + cos) / 2`` of rows ``i`` and ``j``.

    The cosine is taken as RepDistiller's, with ``x / (‖x‖ + ε)``.

    Args:
        embeddings: ``[B, D]``.
        eps: ``ε``.

    Returns:
        ``[B, B]``; each row sums to one (the diagonal included).
    """
    unit = embeddings / (embeddings.norm(dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.T + 1) / 2
    return kernel / kernel.sum(dim=1, keepdim=True)


@float32
def pkt_loss(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT loss ``mean_{i,j} P_t[i,j] · log((P_t[i,j] + ε) / (P_s[i,j] + ε))``.

    The mean is over all ``B²`` entries, as RepDistiller's ``torch.mean``: the batch mean of
    the rows' (ε-smoothed) KL divergences ``KL(P_t[i] ‖ P_s[i])``, divided once more by ``B``
    (which β = 30000 absorbs). RepDistiller
    also sets NaN entries of the normalised embeddings to 0; they arise only from NaN or
    infinite inputs (a zero row gives ``0 / ε = 0``), which are left to propagate here. No
    gradient reaches the teacher.

    Args:
        student: ``[B, D_s]`` embeddings.
        teacher: ``[B, D_t]`` embeddings of the same images.
        eps: ``ε`` (1e-7).

    Returns:
        Scalar loss.
    """
    if len(student) != len(teacher):
        raise ValueError(
            f"pkt_loss needs the same batch for student and teacher, got {len(student)} "
            f"and {len(teacher)} samples"
        )
    target = similarity_distribution(teacher.detach(), eps)
    prediction = similarity_distribution(student, eps)
    return (target * ((target + eps) / (prediction + eps)).log()).mean()
