import math

import pytest
import torch
from tests_support import EPS32, log_softmax_error

from distill.losses.classification import labelled_cross_entropy

pytestmark = pytest.mark.numerics


def reference(logits, targets):
    """Float64: the mean over labelled rows of log Σ_c exp(z_c) − z_y; 0 without any."""
    losses = [
        math.log(sum(math.exp(z) for z in row)) - row[label]
        for row, label in zip(logits.double().tolist(), targets.tolist(), strict=True)
        if label >= 0
    ]
    return sum(losses) / len(losses) if losses else 0.0


def test_unlabelled_samples_are_left_out_of_the_mean():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator) * 2
    targets = torch.tensor([3, -1, 0, -1, 4, 1])
    loss = labelled_cross_entropy(logits, targets)
    # Each labelled row's −log p_y errs as float32 log_softmax does; the mean of the 4 rows
    # (their sum and the division) adds 5 roundings of values up to 2·max|z| + log C.
    largest = float(logits.abs().max())
    error = log_softmax_error(0.0, largest, 5) + 5 * EPS32 * (2 * largest + math.log(5))
    assert loss.item() == pytest.approx(reference(logits, targets), abs=error)
    assert loss.item() != pytest.approx(reference(logits, targets.clamp_min(0)), abs=1e-3)


def test_fully_labelled_is_cross_entropy_and_unlabelled_is_zero_without_gradient():
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(
        labelled_cross_entropy(logits, targets), torch.nn.functional.cross_entropy(logits, targets)
    )
    loss = labelled_cross_entropy(logits, torch.full((4,), -1))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(4, 3))
