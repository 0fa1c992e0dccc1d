import math

import pytest
import torch
from tests_support import (
    EPS32,
    TRANSCENDENTAL,
    assert_float32_under_bf16_autocast,
    log_softmax_error,
)

from distill.losses import dkd_loss, dkd_warmup, kd_loss
from distill.losses.dkd import dkd_terms

pytestmark = pytest.mark.numerics


def log_sum_exp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def kl(p_log, q_log):
    """``Σ_j p_j (log p_j − log q_j)`` from log-probabilities."""
    return sum(math.exp(a) * (a - b) for a, b in zip(p_log, q_log, strict=True))


def reference_terms(student, teacher, targets, temperature):
    """Float64, sample by sample, from the paper: with ``p = softmax(z/T)``, TCKD is the KL of
    the teacher's ``(p_gt, 1 − p_gt)`` from the student's, NCKD the KL of
    ``p_j / (1 − p_gt)``, ``j ≠ gt``; both times ``T²``, averaged over the batch. Also returns
    the largest log-ratio of each term (for the error bound)."""
    tckd = nckd = tckd_ratio = nckd_ratio = 0.0
    for s_row, t_row, gt in zip(student.tolist(), teacher.tolist(), targets.tolist(), strict=True):
        logs = []
        for row in (s_row, t_row):
            scaled = [v / temperature for v in row]
            log_p = [v - log_sum_exp(scaled) for v in scaled]
            others = [v for j, v in enumerate(log_p) if j != gt]
            log_rest = log_sum_exp(others)  # log(1 − p_gt), without cancelling
            logs.append(([log_p[gt], log_rest], [v - log_rest for v in others]))
        (s_binary, s_hat), (t_binary, t_hat) = logs
        tckd += kl(t_binary, s_binary)
        nckd += kl(t_hat, s_hat)
        tckd_ratio = max(tckd_ratio, *(abs(a - b) for a, b in zip(t_binary, s_binary, strict=True)))
        nckd_ratio = max(nckd_ratio, *(abs(a - b) for a, b in zip(t_hat, s_hat, strict=True)))
    scale = temperature**2 / len(targets)
    return tckd * scale, nckd * scale, tckd_ratio, nckd_ratio


def term_error(log_error, largest_ratio, entries, batch, temperature):
    """Bound on the float32 error of ``T² · mean_b KL`` over ``entries`` classes whose
    log-probabilities err by ``log_error`` and differ by at most ``M = largest_ratio``: each
    ``p_j`` errs relatively by ``log_error`` and its exp's rounding, each difference by
    ``2·log_error`` and a rounding, the products by one; the row sum by ``entries``
    roundings and the batch mean by ``batch + 1`` of ``Σ p|diff| ≤ M``; ``T²`` and its product
    by two more."""
    M = largest_ratio + 2 * log_error
    row = (log_error + TRANSCENDENTAL + (entries + 2) * EPS32) * M + 2 * log_error
    return temperature**2 * (row + (batch + 3) * EPS32 * M)


def logits(seed, batch=6, classes=10, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=generator) * scale
    teacher = torch.randn(batch, classes, generator=generator) * scale
    targets = torch.randint(classes, (batch,), generator=generator)
    return student, teacher, targets


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_terms_match_the_float64_formula(temperature):
    student, teacher, targets = logits(0)
    tckd, nckd = dkd_terms(student, teacher, targets, temperature)
    expected_tckd, expected_nckd, tckd_ratio, nckd_ratio = reference_terms(
        student.double(), teacher.double(), targets, temperature
    )
    largest = max(student.abs().max().item(), teacher.abs().max().item()) / temperature
    classes, batch = student.shape[1], len(targets)
    log_p = log_softmax_error(EPS32 * largest, largest, classes)
    # log(1 − p_gt) is a log-sum-exp of log-probabilities, at most 2·max|z/T| + log C in size.
    log_rest = log_softmax_error(log_p, 2 * largest + math.log(classes), classes)
    tckd_bound = term_error(log_rest, tckd_ratio, 2, batch, temperature)
    nckd_bound = term_error(log_p, nckd_ratio, classes, batch, temperature)
    assert tckd.item() == pytest.approx(expected_tckd, abs=tckd_bound)
    assert nckd.item() == pytest.approx(expected_nckd, abs=nckd_bound)
    loss = dkd_loss(student, teacher, targets, alpha=0.5, beta=8.0, temperature=temperature)
    expected = 0.5 * expected_tckd + 8.0 * expected_nckd
    # The weighted sum adds three roundings (two products, a sum).
    bound = 0.5 * tckd_bound + 8 * nckd_bound + 3 * EPS32 * expected
    assert loss.item() == pytest.approx(expected, abs=bound)


def test_kd_is_tckd_plus_nckd_weighed_by_the_teachers_non_target_mass():
    # The paper's decomposition (its Eq. 5): KD = TCKD + (1 − p^t_gt)·NCKD, sample by sample.
    student, teacher, targets = (x.double() if x.is_floating_point() else x for x in logits(1))
    for b in range(len(targets)):
        s, t, y = student[b : b + 1], teacher[b : b + 1], targets[b : b + 1]
        tckd, nckd = dkd_terms(s, t, y, temperature=4.0)
        rest = 1 - torch.softmax(t / 4.0, dim=1)[0, y].item()
        # Float64: tens of roundings of 2⁻⁵³ in values of order 1.
        assert kd_loss(s, t, 4.0).item() == pytest.approx(
            tckd.item() + rest * nckd.item(), rel=1e-12
        )


def test_nckd_passes_no_gradient_to_the_target_logit_and_none_to_the_teacher():
    student, teacher, targets = logits(2)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    _, nckd = dkd_terms(student, teacher, targets)
    (gradient,) = torch.autograd.grad(nckd, student)
    assert (gradient.gather(1, targets.unsqueeze(1)) == 0).all()
    assert (gradient.abs().sum(dim=1) > 0).all()
    dkd_loss(student, teacher, targets).backward()
    assert teacher.grad is None


def test_gradient_matches_finite_differences():
    student, teacher, targets = logits(3, batch=3, classes=5)
    student = student.double().requires_grad_(True)
    teacher = teacher.double()
    assert torch.autograd.gradcheck(
        lambda s: dkd_loss(s, teacher, targets, alpha=1.0, beta=8.0, temperature=2.0), (student,)
    )


def test_a_confident_student_keeps_a_finite_loss_and_gradient():
    # At T = 1 a logit gap of 120 leaves 1 − p_gt ≈ e⁻¹²⁰, below float32's smallest number:
    # computed as a log-sum-exp it stays finite where log(Σ_{j≠gt} p_j) would be log 0.
    student = torch.zeros(2, 5)
    student[torch.arange(2), torch.tensor([1, 3])] = 120.0
    teacher = torch.tensor([[0.0, 2.0, 1.0, 0.0, -1.0], [1.0, 0.0, 0.0, 3.0, 0.0]])
    targets = torch.tensor([1, 3])
    student.requires_grad_(True)
    tckd, nckd = dkd_terms(student, teacher, targets, temperature=1.0)
    expected_tckd, expected_nckd, *_ = reference_terms(
        student.double(), teacher.double(), targets, 1.0
    )
    # TCKD ≈ 37 weighs log-probabilities up to ~120 in size, each within a few float32
    # roundings of 120 (~3e-5), by probabilities summing to one: 1e-5 of it is ~4e-4.
    # NCKD ≈ 0.17 reads only the non-target logits (at most 3 in size): a few roundings.
    assert tckd.item() == pytest.approx(expected_tckd, rel=1e-5)
    assert nckd.item() == pytest.approx(expected_nckd, rel=1e-5)
    (tckd + nckd).backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize(
    ("epoch", "warmup_epochs", "factor"),
    [
        (0, 20, 1 / 20),
        (9, 20, 10 / 20),
        (18, 20, 19 / 20),
        (19, 20, 1.0),
        (200, 20, 1.0),
        (0, 0, 1.0),
    ],
)
def test_warmup_ramps_linearly_from_the_first_epoch_as_mdistiller_counts(
    epoch, warmup_epochs, factor
):
    # mdistiller's epochs start at 1 and weigh epoch e by min(e / 20, 1); Lightning's at 0.
    assert dkd_warmup(epoch, warmup_epochs) == factor


def test_loss_is_float32_exact_under_bf16_autocast():
    student, teacher, targets = logits(4, batch=16, classes=100)
    assert_float32_under_bf16_autocast(dkd_loss, student, teacher, targets)


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(2, 10\), \(2, 10\) and \(3,\)"):
        dkd_loss(torch.zeros(2, 10), torch.zeros(2, 10), torch.zeros(3, dtype=torch.long))
