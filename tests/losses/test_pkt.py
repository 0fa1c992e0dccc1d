import math

import pytest
import torch
from tests_support import (
    EPS32,
    TRANSCENDENTAL,
    assert_float32_under_bf16_autocast,
    dot_error,
    normalize_error,
)

from distill.losses import pkt_loss

pytestmark = pytest.mark.numerics

EPS = 1e-7


def reference_distribution(embeddings):
    """Float64, from the paper: ``K[i][j] = (1 + cos(x_i, x_j)) / 2`` with RepDistiller's
    ``x / (‖x‖ + ε)``, each row divided by its sum."""
    rows = embeddings.double().tolist()
    units = [[v / (math.sqrt(sum(w * w for w in x)) + EPS) for v in x] for x in rows]
    kernel = [
        [(1 + sum(a * b for a, b in zip(u, w, strict=True))) / 2 for w in units] for u in units
    ]
    return [[k / sum(row) for k in row] for row in kernel]


def reference_pkt(student, teacher):
    """``mean_{i,j} P_t[i][j] · log((P_t[i][j] + ε) / (P_s[i][j] + ε))`` over all ``B²``."""
    p_s, p_t = reference_distribution(student), reference_distribution(teacher)
    terms = [
        t * math.log((t + EPS) / (s + EPS))
        for r_s, r_t in zip(p_s, p_t, strict=True)
        for s, t in zip(r_s, r_t, strict=True)
    ]
    return sum(terms) / len(terms)


def distribution_and_error(embeddings):
    """``P`` of float32 ``embeddings`` and a bound on its float32 error, in float64. Each unit
    vector's entries err relatively by the norm's error and a division (``normalize_error``),
    so a cosine of two unit vectors errs by twice that plus the dot product's ``D`` roundings;
    ``(cos + 1)/2`` adds a rounding of a value up to 2 (the halving is exact); the row sum of
    ``B`` kernels errs by their errors and ``B`` roundings of itself; the division by both
    relative errors and a rounding."""
    x = embeddings.detach().double()
    units = x / (x.norm(dim=1, keepdim=True) + EPS)
    kernel = (units @ units.T + 1) / 2
    kernel_error = (2 * normalize_error(x.shape[1]) + dot_error(x.shape[1])) / 2 + EPS32
    total = kernel.sum(dim=1, keepdim=True)
    total_error = len(x) * kernel_error + len(x) * EPS32 * total
    p = kernel / total
    return p, kernel_error / total + kernel * total_error / total**2 + EPS32 * p


def loss_error(student, teacher):
    """Bound on the float32 loss's error. A term ``t · log((t + ε)/(s + ε))`` moves by
    ``(|L| + 1)`` times ``t``'s error and ``t/(s + ε)`` times ``s``'s (``L`` the log), and by
    ``t`` times the log's own error (three roundings of the ratio, then the log's) and the
    product's rounding; the mean of ``B²`` terms of either sign errs by ``B² + 1`` roundings of
    the mean of their sizes."""
    (p_s, e_s), (p_t, e_t) = distribution_and_error(student), distribution_and_error(teacher)
    log = ((p_t + EPS) / (p_s + EPS)).log()
    terms = p_t * log
    bound = (log.abs() + 1) * e_t + p_t / (p_s + EPS) * e_s
    bound = bound + p_t * (3 * EPS32 + TRANSCENDENTAL * (1 + log.abs())) + EPS32 * terms.abs()
    return float(bound.mean()) + (terms.numel() + 1) * EPS32 * float(terms.abs().mean())


def embeddings(seed, rows, dim):
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("rows", "student_dim", "teacher_dim"), [(8, 6, 16), (5, 32, 32)])
def test_loss_matches_the_float64_formula(rows, student_dim, teacher_dim):
    teacher = embeddings(0, rows, teacher_dim)
    # Related embeddings: the student sees a projection of the teacher's plus noise.
    projection = embeddings(1, teacher_dim, student_dim) / math.sqrt(teacher_dim)
    student = teacher @ projection + 0.5 * embeddings(2, rows, student_dim)
    loss = pkt_loss(student, teacher).item()
    expected = reference_pkt(student, teacher)
    assert loss == pytest.approx(expected, abs=loss_error(student, teacher))


def test_loss_vanishes_for_a_rescaled_rotation_of_the_teacher_in_another_width():
    # Cosines ignore each sample's scale and any rotation: such a student costs nothing.
    teacher = embeddings(3, 8, 6).double() * 4
    q, _ = torch.linalg.qr(embeddings(4, 10, 6).double())  # [10, 6], orthonormal columns
    scales = torch.tensor([0.5, 2.0, 4.0, 1.0, 3.0, 1.5, 0.25, 8.0], dtype=torch.float64)
    student = scales.unsqueeze(1) * teacher @ q.T
    # The ε of ‖x‖ + ε moves a rescaled row's cosines by ~ε/‖x‖ (< 1e-7); the loss is
    # second order in that (its first-order terms cancel, each row summing to one): < 1e-13.
    assert pkt_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-12)
    shuffled = student[torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])]  # two samples swapped
    assert pkt_loss(shuffled, teacher).item() > 1e-4


def test_only_the_student_receives_gradient():
    student = embeddings(5, 6, 4).requires_grad_(True)
    teacher = embeddings(6, 6, 8).requires_grad_(True)
    pkt_loss(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_loss_is_float32_exact_under_bf16_autocast():
    teacher = embeddings(7, 32, 64)
    student = teacher[:, :48] + 0.1 * embeddings(8, 32, 48)
    assert_float32_under_bf16_autocast(pkt_loss, student, teacher)


def test_batch_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"got 4 and 3 samples"):
        pkt_loss(torch.ones(4, 2), torch.ones(3, 2))
