import pytest
import torch

from distill.eval.metrics import top_k_accuracies


def test_top1_and_top5_are_direct_counts():
    scores = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    labels = torch.tensor([0, 0])
    # Row 0: right at top 1. Row 1: class 0 ranks last of six, outside the top 5.
    assert top_k_accuracies(scores, labels, 6) == pytest.approx({"top1": 0.5, "top5": 0.5})
    labels = torch.tensor([1, 1])  # row 0: 2nd; row 1: 5th
    assert top_k_accuracies(scores, labels, 6) == pytest.approx({"top1": 0.0, "top5": 1.0})


def test_no_top5_with_fewer_than_five_classes():
    scores, labels = torch.eye(4), torch.arange(4)
    assert top_k_accuracies(scores, labels, 4) == {"top1": 1.0}
