import math

import pytest
import torch
from tests_support import EPS32, TRANSCENDENTAL, assert_float32_under_bf16_autocast, softmax_rtol

from distill.losses import dist_loss, kd_loss
from distill.losses.dist import dist_terms

pytestmark = pytest.mark.numerics

EPS = 1e-8


def reference_probabilities(logits, temperature):
    rows = []
    for row in logits.double().tolist():
        exps = [math.exp(v / temperature) for v in row]
        rows.append([v / sum(exps) for v in exps])
    return rows


def pearson(x, y):
    """As the authors' code: ``⟨x̄, ȳ⟩ / (‖x̄‖‖ȳ‖ + ε)``, ``x̄`` centred."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cx, cy = [v - mx for v in x], [v - my for v in y]
    dot = sum(a * b for a, b in zip(cx, cy, strict=True))
    return dot / (math.sqrt(sum(a * a for a in cx)) * math.sqrt(sum(b * b for b in cy)) + EPS)


def reference_terms(student, teacher, temperature):
    """Float64, from the paper: ``τ²(1 − mean over samples of ρ(rows))`` and
    ``τ²(1 − mean over classes of ρ(columns))`` of ``softmax(z/τ)``."""
    y_s = reference_probabilities(student, temperature)
    y_t = reference_probabilities(teacher, temperature)
    inter = 1 - sum(pearson(a, b) for a, b in zip(y_s, y_t, strict=True)) / len(y_s)
    columns_s, columns_t = list(zip(*y_s, strict=True)), list(zip(*y_t, strict=True))
    intra = 1 - sum(pearson(a, b) for a, b in zip(columns_s, columns_t, strict=True)) / len(
        columns_s
    )
    return temperature**2 * inter, temperature**2 * intra


def relation_and_error(a, b, error_a, error_b):
    """``1 − mean_i ρ(a_i, b_i)`` over the rows of float64 ``a``, ``b`` and a bound on its float32
    error, the entries' errors given. Each row mean errs by the entries' mean error and
    ``K + 1`` roundings; each centred entry by both and a rounding; the dot product by the
    centred errors and ``K`` roundings of ``‖ā‖‖b̄‖``; each norm by the centred errors,
    ``K + 2`` roundings and a sqrt; the denominator by both norms' errors and two roundings;
    the ratio by both relative errors and a rounding; the mean of ``N`` correlations (at most
    1) by ``N + 1`` roundings and ``1 −`` by a rounding of up to 2."""
    mean_a, mean_b = a.mean(dim=1, keepdim=True), b.mean(dim=1, keepdim=True)
    a, b = a - mean_a, b - mean_b
    error_a = error_a + error_a.mean(1, True) + (a.shape[1] + 1) * EPS32 * mean_a + EPS32 * a.abs()
    error_b = error_b + error_b.mean(1, True) + (b.shape[1] + 1) * EPS32 * mean_b + EPS32 * b.abs()
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    dot_error = (b.abs() * error_a + a.abs() * error_b + error_a * error_b).sum(dim=1)
    dot_error = dot_error + a.shape[1] * EPS32 * norm_a * norm_b
    norm_rtol = (a.shape[1] + 2) * EPS32 + TRANSCENDENTAL
    norm_a_error = error_a.norm(dim=1) + norm_rtol * norm_a
    norm_b_error = error_b.norm(dim=1) + norm_rtol * norm_b
    denominator = norm_a * norm_b + EPS
    denominator_error = norm_b * norm_a_error + norm_a * norm_b_error + norm_a_error * norm_b_error
    denominator_error = denominator_error + 2 * EPS32 * denominator
    correlation = (a * b).sum(dim=1) / denominator
    correlation_error = (dot_error + correlation.abs() * denominator_error) / (
        denominator - denominator_error
    ) + EPS32 * correlation.abs()
    error = float(correlation_error.mean()) + (len(a) + 1) * EPS32 + 2 * EPS32
    return 1 - float(correlation.mean()), error


def terms_error(student, teacher, temperature):
    """Bounds on the float32 errors of ``(τ²·inter, τ²·intra)``: probabilities with relative
    error ``softmax_rtol`` (the logits ``z/τ`` rounded once), the relations' errors on rows,
    then on columns, times ``τ²`` (two roundings)."""
    probabilities = []
    for logits in (student, teacher):
        largest = logits.abs().max().item() / temperature
        y = torch.softmax(logits.double() / temperature, dim=1)
        probabilities.append((y, softmax_rtol(EPS32 * largest, largest, logits.shape[1]) * y))
    (y_s, e_s), (y_t, e_t) = probabilities
    errors = []
    for a, b, error_a, error_b in ((y_s, y_t, e_s, e_t), (y_s.T, y_t.T, e_s.T, e_t.T)):
        relation, error = relation_and_error(a, b, error_a, error_b)
        errors.append(temperature**2 * (error + 2 * EPS32 * relation))
    return errors


def logits(seed, batch=8, classes=10, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(batch, classes, generator=generator) * scale
    student = 0.5 * teacher + torch.randn(batch, classes, generator=generator) * scale
    return student, teacher


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_terms_and_loss_match_the_float64_formula(temperature):
    student, teacher = logits(0)
    inter, intra = dist_terms(student, teacher, temperature)
    expected_inter, expected_intra = reference_terms(student, teacher, temperature)
    inter_error, intra_error = terms_error(student, teacher, temperature)
    assert inter.item() == pytest.approx(expected_inter, abs=inter_error)
    assert intra.item() == pytest.approx(expected_intra, abs=intra_error)
    loss = dist_loss(student, teacher, beta=2.0, gamma=0.5, temperature=temperature)
    expected = 2.0 * expected_inter + 0.5 * expected_intra
    # The weighted sum adds three roundings (two products, a sum).
    bound = 2.0 * inter_error + 0.5 * intra_error + 3 * EPS32 * expected
    assert loss.item() == pytest.approx(expected, abs=bound)


def eps_share(a, b):
    """``mean_i ε / ‖ā_i‖‖b̄_i‖``: how far the ``ε`` of the denominator holds ``1 − ρ`` above 0
    for rows ``ā_i ∝ b̄_i`` (the authors' ``ρ`` is ``1 − ε/(‖ā‖‖b̄‖ + ε)`` there)."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return float((EPS / (a.norm(dim=1) * b.norm(dim=1))).mean())


def test_inter_relation_is_per_sample_and_intra_per_class():
    # A student whose probabilities are an affine image a·p_t + (1 − a)/C of the teacher's
    # correlates perfectly with it: with one a for all samples along rows and columns alike
    # (DIST 0 where KD is not), with one a per sample along rows only.
    _, teacher = logits(1)
    teacher = teacher.double()
    p_t = torch.softmax(teacher, dim=1)
    classes = p_t.shape[1]
    p_shared = 0.3 * p_t + 0.7 / classes
    rows, columns = eps_share(p_shared, p_t), eps_share(p_shared.T, p_t.T)
    # Float64: each ρ ≈ 1 gathers tens of roundings of 2⁻⁵³, well within 1e-13.
    rounding = 1e-13
    loss = dist_loss(torch.log(p_shared), teacher, temperature=1.0).item()
    assert loss <= rows + columns + rounding
    assert kd_loss(torch.log(p_shared), teacher, 1.0).item() > 0.1
    per_sample = torch.linspace(0.1, 0.9, len(p_t), dtype=torch.float64).unsqueeze(1)
    p_mixed = per_sample * p_t + (1 - per_sample) / classes
    inter, intra = dist_terms(torch.log(p_mixed), teacher, temperature=1.0)
    assert inter.item() <= eps_share(p_mixed, p_t) + rounding and intra.item() > 1e-2


def test_only_the_student_receives_gradient():
    student, teacher = logits(2)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    dist_loss(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_loss_is_float32_exact_under_bf16_autocast():
    student, teacher = logits(3, batch=32, classes=100)
    assert_float32_under_bf16_autocast(dist_loss, student, teacher)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 10\) and teacher \(2, 100\)"):
        dist_loss(torch.zeros(2, 10), torch.zeros(2, 100))
