import math

import pytest
import torch
from lightly.loss import DINOLoss as LightlyDINOLoss
from tests_support import EPS32, TRANSCENDENTAL, assert_within, log_softmax_error, softmax_rtol

from distill.errors import ConfigError
from distill.losses import DINOLoss, dino_loss
from distill.losses.dino import collapse_monitors, teacher_probabilities

pytestmark = pytest.mark.numerics


def softmax64(row, temp):
    top = max(x / temp for x in row)
    exps = [math.exp(x / temp - top) for x in row]
    return [e / sum(exps) for e in exps]


def reference_dino(student, teacher, center, student_temp, teacher_temp):
    """The paper's loss with loops in float64: mean over pairs (i, v), v != i, and batch."""
    total, pairs = 0.0, 0
    for i, t_view in enumerate(teacher.double().tolist()):
        for v, s_view in enumerate(student.double().tolist()):
            if v == i:
                continue
            for t_row, s_row in zip(t_view, s_view, strict=True):
                p_t = softmax64([t - c for t, c in zip(t_row, center, strict=True)], teacher_temp)
                p_s = softmax64(s_row, student_temp)
                total -= sum(p * math.log(q) for p, q in zip(p_t, p_s, strict=True)) / len(t_view)
            pairs += 1
    return total / pairs


def logit_bounds(outputs, temperature, center=0.0):
    """``(error, size)`` of float32 logits ``(outputs − center)/τ``: two roundings (the
    subtraction, the division) of values up to ``size``."""
    size = float(((outputs - center) / temperature).abs().max())
    return EPS32 * size, size


def loss_error(student, teacher, center, student_temp, teacher_temp, loss):
    """Bound on the absolute error of float32 ``dino_loss`` against ``reference_dino``.

    The teacher targets' relative error scales the loss (a sum of ``−p_t log p_s ≥ 0``); the
    student's log-probabilities err absolutely (their weights ``p_t`` sum to 1); then the sum
    over B·K terms of a pair and over the pairs, of non-negative terms.
    """
    views, batch, k = student.shape
    target_rtol = softmax_rtol(*logit_bounds(teacher, teacher_temp, center), k)
    log_prob_error = log_softmax_error(*logit_bounds(student, student_temp), k)
    sums = (batch * k + views * len(teacher) + 2) * EPS32
    return (target_rtol + sums) * loss + log_prob_error


def random_outputs(views, batch, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(views, batch, dim, generator=generator) * 2


def test_dino_loss_matches_float64_formula():
    student, teacher = random_outputs(5, 3, 7, 0), random_outputs(2, 3, 7, 1)
    center = random_outputs(1, 1, 7, 2)[0, 0] * 0.1
    loss = dino_loss(list(student), list(teacher), center, 0.1, 0.04)
    expected = reference_dino(student, teacher, center.double().tolist(), 0.1, 0.04)
    assert loss.dtype == torch.float32
    error = loss_error(student, teacher, center, 0.1, 0.04, expected)
    assert loss.item() == pytest.approx(expected, abs=error)


def test_student_gradient_matches_formula_and_teacher_gets_none():
    student = random_outputs(3, 4, 6, 3).requires_grad_()
    teacher = random_outputs(2, 4, 6, 4).requires_grad_()
    center = torch.zeros(6)
    dino_loss(list(student), list(teacher), center, 0.1, 0.05).backward()
    assert teacher.grad is None
    # dL/ds_v = Σ_{i ≠ v} (softmax(s_v/τ_s) − P_t(i)) / (pairs · B · τ_s); 4 pairs here.
    s, t = student.detach().double(), teacher.detach().double()
    p_s, p_t = torch.softmax(s / 0.1, -1), torch.softmax(t / 0.05, -1)
    # Float32 errs by the relative errors of p_s (the backward's exp of the log-softmax) and
    # of P_t, each term, then by the roundings of the sum over i and the scaling.
    s_rtol = log_softmax_error(*logit_bounds(s, 0.1), 6) + TRANSCENDENTAL
    t_rtol = softmax_rtol(*logit_bounds(t, 0.05), 6)
    expected, error = torch.zeros_like(s), torch.zeros_like(s)
    for v in range(3):
        for i in range(2):
            if i != v:
                expected[v] += (p_s[v] - p_t[i]) / (4 * 4 * 0.1)
                error[v] += (s_rtol * p_s[v] + t_rtol * p_t[i]) / (4 * 4 * 0.1)
    error += 4 * EPS32 * expected.abs()
    assert_within(student.grad, expected, error)


def test_loss_and_probabilities_stay_float32_under_bf16_autocast():
    student = random_outputs(4, 3, 8, 5).bfloat16()
    teacher = random_outputs(2, 3, 8, 6).bfloat16()
    center = torch.zeros(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dino_loss(list(student), list(teacher), center, 0.1, 0.04)
        probs = teacher_probabilities(list(teacher), center, 0.04)
    assert loss.dtype == probs.dtype == torch.float32
    expected = reference_dino(student.float(), teacher.float(), [0.0] * 8, 0.1, 0.04)
    error = loss_error(student.float(), teacher.float(), center, 0.1, 0.04, expected)
    assert loss.item() == pytest.approx(expected, abs=error)


def test_module_matches_lightly_loss_and_center_update():
    student, teacher = random_outputs(4, 5, 9, 7), random_outputs(2, 5, 9, 8)
    ours = DINOLoss(9, teacher_temp=0.06, warmup_teacher_temp=0.06, center_momentum=0.8)
    lightly = LightlyDINOLoss(9, teacher_temp=0.06, center_momentum=0.8)
    center_error = 0.0
    for _ in range(2):  # the second call uses the moved center
        loss = ours(list(student), list(teacher), 0.06)
        # Two float32 computations: each within its bound of the exact value.
        error = 2 * loss_error(student, teacher, ours.center, 0.1, 0.06, loss.item())
        ours.update_center(list(teacher))
        expected = lightly(list(teacher), list(student), teacher_temp=0.06)
        assert loss.item() == pytest.approx(expected.item(), abs=error)
        # Each center: a mean of G·B = 10 rows, then m·c + (1 − m)·mean, of values up to max|t|.
        center_error += 2 * (10 + 4) * EPS32 * float(teacher.abs().max())
        torch.testing.assert_close(ours.center, lightly.center[0], rtol=0, atol=center_error)
        teacher = teacher + 1.0


def test_center_moves_by_the_momentum_formula():
    loss = DINOLoss(5, center_momentum=0.9)
    first, second = random_outputs(2, 3, 5, 9), random_outputs(2, 4, 5, 10)
    loss.update_center(list(first))
    expected = 0.1 * first.double().reshape(-1, 5).mean(0)
    # A mean of n rows, then m·c + (1 − m)·mean: n + 4 roundings of values up to max|x|.
    error = (6 + 4) * EPS32 * float(first.abs().max())
    torch.testing.assert_close(loss.center[0].double(), expected, rtol=0, atol=error)
    loss.update_center(list(second))
    expected = 0.9 * expected + 0.1 * second.double().reshape(-1, 5).mean(0)
    error += (8 + 4) * EPS32 * float(second.abs().max())
    torch.testing.assert_close(loss.center[0].double(), expected, rtol=0, atol=error)
    assert "center" in dict(loss.named_buffers())  # checkpointed with the model


def test_teacher_temperature_warms_up_linearly_per_step():
    loss = DINOLoss(4, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=2)
    # 10 steps per epoch: 20 warm-up steps.
    assert loss.teacher_temp_at(0, 10) == pytest.approx(0.04)
    assert loss.teacher_temp_at(10, 10) == pytest.approx(0.055)
    assert loss.teacher_temp_at(20, 10) == pytest.approx(0.07)
    assert loss.teacher_temp_at(500, 10) == pytest.approx(0.07)
    assert DINOLoss(4, teacher_temp=0.07).teacher_temp_at(0, 10) == pytest.approx(0.07)


def test_collapse_monitors_on_uniform_one_hot_and_random_outputs():
    k = 16
    # An entropy is a sum of K terms −p log p ≥ 0 (a log and a product each), then a mean.
    entropy_rtol = TRANSCENDENTAL + (k + 6 + 2) * EPS32
    entropy, kl = collapse_monitors(torch.full((6, k), 1 / k))
    assert entropy.item() == pytest.approx(math.log(k), rel=entropy_rtol)
    assert kl.item() == pytest.approx(0, abs=1e-6)
    same = torch.zeros(6, k)
    same[:, 3] = 1
    entropy, kl = collapse_monitors(same)
    assert entropy.item() == pytest.approx(0, abs=1e-6) and kl.item() == pytest.approx(math.log(k))
    # Sharp but on different dimensions: healthy, both near 0.
    entropy, kl = collapse_monitors(torch.eye(k))
    assert entropy.item() == pytest.approx(0, abs=1e-6) and kl.item() == pytest.approx(0, abs=1e-5)
    probs = torch.softmax(random_outputs(2, 5, k, 11), -1)
    rows = probs.double().reshape(-1, k)
    h = -(rows * rows.log()).sum(1).mean()
    mean = rows.mean(0)
    terms = mean * (mean * k).log()
    entropy, kl = collapse_monitors(probs)
    assert entropy.item() == pytest.approx(h.item(), rel=TRANSCENDENTAL + (k + 10 + 2) * EPS32)
    # KL's terms m log(mK) have both signs: the mean's relative error (10 rows) in m and in the
    # log, the log's and the product's roundings, and the sum's, are bounded term by term.
    mean_rtol = (10 + 1) * EPS32
    kl_error = mean_rtol * float((mean + terms.abs()).sum())
    kl_error += (TRANSCENDENTAL + (k + 1) * EPS32) * float(terms.abs().sum())
    assert kl.item() == pytest.approx(terms.sum().item(), abs=kl_error)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"teacher_temp": 0.0}, "teacher_temp=0.0; a temperature must be > 0"),
        ({"student_temp": -0.1}, "student_temp=-0.1"),
        ({"warmup_teacher_temp": 0.09, "teacher_temp": 0.07}, "warmup_teacher_temp=0.09 exceeds"),
        ({"center_momentum": 1.5}, "center_momentum=1.5; valid: 0 <= m <= 1"),
    ],
)
def test_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DINOLoss(8, **kwargs)


def test_too_few_views_are_refused():
    one = [torch.zeros(2, 4)]
    with pytest.raises(ValueError, match="got 1 teacher and 1 student views"):
        dino_loss(one, one, torch.zeros(4), 0.1, 0.04)


def test_float64_outputs_give_a_float64_loss_and_center():
    # 64-true precision runs stay float64 (the float32 island only raises half precision).
    student, teacher = random_outputs(4, 3, 7, 7).double(), random_outputs(2, 3, 7, 8).double()
    module = DINOLoss(7, 0.1, 0.04, center_momentum=0.9).double()
    loss = module(list(student), list(teacher), 0.04)
    assert loss.dtype == torch.float64
    expected = reference_dino(student, teacher, [0.0] * 7, 0.1, 0.04)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    module.update_center(list(teacher))
    expected_center = 0.1 * teacher.flatten(0, 1).mean(0)  # from a zero center
    torch.testing.assert_close(module.center[0], expected_center, rtol=1e-14, atol=1e-15)
