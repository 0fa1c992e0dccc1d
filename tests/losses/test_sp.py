import math

import pytest
import torch
from tests_support import EPS32, TRANSCENDENTAL, assert_float32_under_bf16_autocast

from distill.losses import sp_loss

pytestmark = pytest.mark.numerics


def reference_similarities(features):
    """Float64, from the paper: ``G[i][j] = ⟨f_i, f_j⟩`` of the flattened activations, each
    row divided by its L2 norm."""
    rows = features.double().flatten(1).tolist()
    gram = [[sum(a * b for a, b in zip(x, y, strict=True)) for y in rows] for x in rows]
    return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in gram]


def reference_sp(student, teacher):
    """``‖G_t − G_s‖_F² / B²``."""
    g_s, g_t = reference_similarities(student), reference_similarities(teacher)
    squares = [
        (a - b) ** 2
        for r_s, r_t in zip(g_s, g_t, strict=True)
        for a, b in zip(r_s, r_t, strict=True)
    ]
    return sum(squares) / len(student) ** 2


def similarities_and_error(features):
    """The row-normalised Gram matrix of float32 ``features`` and a bound on its float32 error,
    in float64: each Gram entry a dot product in ``D`` dimensions (``D`` roundings of
    ``‖f_i‖‖f_j‖``, ``dot_error``); each row's norm the entries' errors plus ``B + 2``
    roundings and a sqrt; the division both relative errors and a rounding."""
    f = features.detach().double().flatten(1)
    gram, norms = f @ f.T, f.norm(dim=1)
    gram_error = f.shape[1] * EPS32 * torch.outer(norms, norms)
    row = gram.norm(dim=1, keepdim=True)
    row_error = gram_error.norm(dim=1, keepdim=True)
    row_error = row_error + ((len(f) + 2) * EPS32 + TRANSCENDENTAL) * row
    similarities = gram / row
    error = gram_error / row + similarities.abs() * row_error / row + EPS32 * similarities.abs()
    return similarities, error


def loss_error(student, teacher):
    """Bound on the float32 loss's error: each squared difference ``d²`` errs by
    ``2|d|·e_d + e_d²`` and a rounding; the sum of ``B²`` non-negative squares by ``B²``
    roundings of itself, the division by ``B²`` by one more."""
    (g_s, e_s), (g_t, e_t) = similarities_and_error(student), similarities_and_error(teacher)
    difference = (g_s - g_t).abs()
    e_d = e_s + e_t + EPS32 * difference
    squares = difference * difference
    loss = float(squares.sum()) / len(student) ** 2
    bound = float((2 * difference * e_d + e_d * e_d + EPS32 * squares).sum()) / len(student) ** 2
    return bound + (squares.numel() + 1) * EPS32 * loss


def features(seed, *shape):
    """Post-ReLU maps, as the last stage's output: all Gram entries positive and large."""
    return torch.relu(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((6, 4, 3, 3), (6, 8, 3, 3)), ((6, 4, 4, 4), (6, 16, 2, 2)), ((6, 12), (6, 20))],
    ids=["feature-maps", "other-spatial-size", "embeddings"],
)
def test_loss_matches_the_float64_formula(student_shape, teacher_shape):
    student, teacher = features(0, *student_shape), features(1, *teacher_shape)
    loss = sp_loss(student, teacher).item()
    expected = reference_sp(student, teacher)
    assert loss == pytest.approx(expected, abs=loss_error(student, teacher))


def test_loss_vanishes_for_a_scaled_rotation_of_the_teacher_in_another_width():
    # G = F Fᵀ is unchanged by F → F Q with orthonormal rows Q Qᵀ = I, and the row
    # normalisation removes one common scale: such a student costs nothing.
    teacher = features(2, 8, 4, 3, 3).double()
    generator = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(60, 36, generator=generator, dtype=torch.float64))
    student = (3.0 * teacher.flatten(1) @ q.T).view(8, 15, 2, 2)  # [B, 36] → [B, 60]
    # Float64 similarities agree to ~1e-15: their squared differences are far below 1e-20.
    assert sp_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-20)
    # A scale per sample is not removed: it scales the sample's column of G as well as its row.
    scales = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 1.0, 0.5, 1.0], dtype=torch.float64)
    assert sp_loss(scales.view(8, 1, 1, 1) * teacher, teacher).item() > 1e-3


def test_only_the_student_receives_gradient():
    student = features(4, 5, 3, 2, 2).requires_grad_(True)
    teacher = features(5, 5, 6, 2, 2).requires_grad_(True)
    sp_loss(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_loss_is_float32_exact_under_bf16_autocast():
    student, teacher = features(6, 16, 32, 4, 4), features(7, 16, 64, 4, 4)
    assert_float32_under_bf16_autocast(sp_loss, student, teacher)


def test_batch_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"got 4 and 3 samples"):
        sp_loss(torch.ones(4, 2), torch.ones(3, 2))
