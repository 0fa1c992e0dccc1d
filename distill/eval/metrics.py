"""Top-k accuracy of class scores, the number every probe reports."""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy


def top_k_accuracies(scores: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 accuracy, and top-5 when there are at least 5 classes, as fractions in [0, 1].

    Args:
        scores: ``[M, C]`` class scores (logits, votes, ...).
        labels: ``[M]`` true classes.
        num_classes: ``C``.

    Returns:
        ``{"top1": ..., "top5": ...}`` (no ``top5`` with fewer than 5 classes).
    """
    accuracies = {"top1": multiclass_accuracy(scores, labels, num_classes, average="micro")}
    if num_classes >= 5:
        accuracies["top5"] = multiclass_accuracy(
            scores, labels, num_classes, average="micro", top_k=5
        )
    return {name: float(value) for name, value in accuracies.items()}
