import math

import pytest
import torch
from tests_support import EPS32, TRANSCENDENTAL

from distill.losses.feature import feature_loss, pool_to_common_size

pytestmark = pytest.mark.numerics


def vectors(features):
    """The feature vectors of ``[B, D]`` or ``[B, D, h, w]`` as float64 lists, token by token
    (``[b, :, i, j]``)."""
    if features.dim() == 2:
        return features.double().tolist()
    batch, _, height, width = features.shape
    return [
        features[b, :, i, j].double().tolist()
        for b in range(batch)
        for i in range(height)
        for j in range(width)
    ]


def reference(student, teacher, metric):
    """Float64, vector by vector: mse the mean of all (s_k − t_k)², cosine the mean of
    1 − s·t / (‖s‖‖t‖)."""
    pairs = list(zip(vectors(student), vectors(teacher), strict=True))
    if metric == "mse":
        squares = [(a - b) ** 2 for s, t in pairs for a, b in zip(s, t, strict=True)]
        return sum(squares) / len(squares)
    total = 0.0
    for s, t in pairs:
        dot = sum(a * b for a, b in zip(s, t, strict=True))
        total += 1 - dot / (math.sqrt(sum(a * a for a in s)) * math.sqrt(sum(b * b for b in t)))
    return total / len(pairs)


def error_bound(metric, entries, vectors, dim):
    """Bound on the float32 loss's absolute error against the float64 reference.

    mse: each square errs by 3 roundings of itself (difference, square, and its share of the
    float32 inputs' own), the sum of ``entries`` non-negative terms by ``entries`` roundings
    of the total, then the division: ``(entries + 4)·EPS32·loss`` (``loss`` passed later).
    cosine: the dot product errs by ``dim`` roundings of ``‖s‖‖t‖`` (``dot_error``), each norm
    by ``dim + 1`` roundings and a sqrt, then the division: ``(3·dim + 4)·EPS32 + 2·sqrt`` in
    the cosine (at most 1); ``1 − cos`` (up to 2) and the mean over vectors add
    ``(vectors + 2)·2·EPS32``.
    """
    if metric == "mse":
        return (entries + 4) * EPS32
    return (3 * dim + 4) * EPS32 + 2 * TRANSCENDENTAL + (vectors + 2) * 2 * EPS32


@pytest.mark.parametrize("metric", ["mse", "cosine"])
@pytest.mark.parametrize("shape", [(6, 16), (3, 8, 2, 3)], ids=["embedding", "feature-map"])
def test_loss_matches_the_float64_formula(metric, shape):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(*shape, generator=generator)
    teacher = torch.randn(*shape, generator=generator) + 0.5 * student  # correlated pairs
    loss = feature_loss(student, teacher, metric).item()
    expected = reference(student, teacher, metric)
    tokens = shape[0] * (shape[2] * shape[3] if len(shape) == 4 else 1)
    bound = error_bound(metric, student.numel(), tokens, shape[1])
    if metric == "mse":
        bound *= expected
    assert loss == pytest.approx(expected, abs=bound)


def test_cosine_is_over_channels_of_each_token_not_over_the_map():
    # Two tokens of one map: the first equal to the teacher's, the second opposite to it.
    teacher = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])  # [1, 2 channels, 1, 2]
    student = torch.tensor([[[[2.0, -2.0]], [[6.0, 1.0]]]])
    assert feature_loss(student, teacher, "cosine").item() == pytest.approx((0.0 + 2.0) / 2)


def test_only_the_student_receives_gradient():
    student = torch.randn(4, 8, requires_grad=True)
    teacher = torch.randn(4, 8, requires_grad=True)
    for metric in ("mse", "cosine"):
        feature_loss(student, teacher, metric).backward()
    assert student.grad is not None and teacher.grad is None


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 10\).*\(2, 12\)"):
        feature_loss(torch.zeros(2, 10), torch.zeros(2, 12))


def test_pooling_brings_each_spatial_dimension_down_to_the_smaller_one():
    # Height larger on the student's side, width on the teacher's: each is pooled on its own.
    student = torch.arange(2 * 8 * 2, dtype=torch.float64).view(1, 2, 8, 2)
    teacher = torch.arange(3 * 4 * 6, dtype=torch.float64).view(1, 3, 4, 6)
    pooled_student, pooled_teacher = pool_to_common_size(student, teacher)
    assert pooled_student.shape == (1, 2, 4, 2) and pooled_teacher.shape == (1, 3, 4, 2)
    # Means of row pairs, resp. column triples (small integers: exact in float64).
    torch.testing.assert_close(pooled_student, student.view(1, 2, 4, 2, 2).mean(dim=3))
    torch.testing.assert_close(pooled_teacher, teacher.view(1, 3, 4, 2, 3).mean(dim=4))
    same = torch.ones(1, 1, 4, 2)
    assert pool_to_common_size(same, same)[0] is same  # already the size: left alone
