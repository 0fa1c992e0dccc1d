"""Cross-entropy on the labelled part of a batch, for methods that train on partly labelled
data (unlabelled samples carry the target ``-1``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def labelled_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the samples with a label (``target >= 0``); 0 with none.

    Computed without a host synchronisation (no test of how many samples are labelled), so
    a batch without labels gives 0 and no gradient rather than NaN.

    Args:
        logits: ``[B, C]``.
        targets: ``[B]`` class indices, ``-1`` for unlabelled samples.
    """
    labelled = targets >= 0
    losses = F.cross_entropy(logits, targets.clamp_min(0), reduction="none")
    return (losses * labelled).sum() / labelled.sum().clamp_min(1)
