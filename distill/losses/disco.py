"""DisCo's consistency term (Gao et al. 2022, "DisCo: Remedying Self-supervised Learning on
Lightweight Models with Distilled Contrastive Learning"): the student's final embedding of a
view is pulled onto the frozen teacher's final embedding of the same view.
"""

from __future__ import annotations

from torch import Tensor

from distill.precision import float32


@float32
def consistency_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Squared Euclidean distance ``‖s − t‖²`` between paired embeddings, batch mean.

    DisCo's official code sums ``MSELoss(reduction='sum')`` over each device's batch
    instead; ``distill.methods.DisCo`` says how its weight maps onto that.

    Args:
        student: ``[B, D]`` student embeddings (L2-normalised in DisCo).
        teacher: ``[B, D]`` teacher embeddings of the same views; no gradient reaches them.
    """
    return (student - teacher.detach()).pow(2).sum(dim=1).mean()
