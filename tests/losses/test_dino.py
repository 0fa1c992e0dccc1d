import math

import pytest
import torch
from lightly.loss import DINOLoss as LightlyDINOLoss

from distill.errors import ConfigError
from distill.losses import DINOLoss, dino_loss
from distill.losses.dino import collapse_monitors, teacher_probabilities


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


def random_outputs(views, batch, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(views, batch, dim, generator=generator) * 2


def test_dino_loss_matches_float64_formula():
    student, teacher = random_outputs(5, 3, 7, 0), random_outputs(2, 3, 7, 1)
    center = random_outputs(1, 1, 7, 2)[0, 0] * 0.1
    loss = dino_loss(list(student), list(teacher), center, 0.1, 0.04)
    expected = reference_dino(student, teacher, center.double().tolist(), 0.1, 0.04)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_student_gradient_matches_formula_and_teacher_gets_none():
    student = random_outputs(3, 4, 6, 3).requires_grad_()
    teacher = random_outputs(2, 4, 6, 4).requires_grad_()
    center = torch.zeros(6)
    dino_loss(list(student), list(teacher), center, 0.1, 0.05).backward()
    assert teacher.grad is None
    # dL/ds_v = Σ_{i ≠ v} (softmax(s_v/τ_s) − P_t(i)) / (pairs · B · τ_s); 4 pairs here.
    s, t = student.detach().double(), teacher.detach().double()
    p_s, p_t = torch.softmax(s / 0.1, -1), torch.softmax(t / 0.05, -1)
    expected = torch.zeros_like(s)
    for v in range(3):
        for i in range(2):
            if i != v:
                expected[v] += (p_s[v] - p_t[i]) / (4 * 4 * 0.1)
    torch.testing.assert_close(student.grad.double(), expected, rtol=1e-4, atol=1e-7)


def test_loss_and_probabilities_stay_float32_under_bf16_autocast():
    student = random_outputs(4, 3, 8, 5).bfloat16()
    teacher = random_outputs(2, 3, 8, 6).bfloat16()
    center = torch.zeros(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dino_loss(list(student), list(teacher), center, 0.1, 0.04)
        probs = teacher_probabilities(list(teacher), center, 0.04)
    assert loss.dtype == probs.dtype == torch.float32
    expected = reference_dino(student.float(), teacher.float(), [0.0] * 8, 0.1, 0.04)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_module_matches_lightly_loss_and_center_update():
    student, teacher = random_outputs(4, 5, 9, 7), random_outputs(2, 5, 9, 8)
    ours = DINOLoss(9, teacher_temp=0.06, warmup_teacher_temp=0.06, center_momentum=0.8)
    lightly = LightlyDINOLoss(9, teacher_temp=0.06, center_momentum=0.8)
    for _ in range(2):  # the second call uses the moved center
        loss = ours(list(student), list(teacher), 0.06)
        ours.update_center(list(teacher))
        expected = lightly(list(teacher), list(student), teacher_temp=0.06)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        torch.testing.assert_close(ours.center, lightly.center[0])
        teacher = teacher + 1.0


def test_center_moves_by_the_momentum_formula():
    loss = DINOLoss(5, center_momentum=0.9)
    first, second = random_outputs(2, 3, 5, 9), random_outputs(2, 4, 5, 10)
    loss.update_center(list(first))
    expected = 0.1 * first.double().reshape(-1, 5).mean(0)
    torch.testing.assert_close(loss.center[0].double(), expected)
    loss.update_center(list(second))
    expected = 0.9 * expected + 0.1 * second.double().reshape(-1, 5).mean(0)
    torch.testing.assert_close(loss.center[0].double(), expected)
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
    entropy, kl = collapse_monitors(torch.full((6, k), 1 / k))
    assert entropy.item() == pytest.approx(math.log(k)) and kl.item() == pytest.approx(0, abs=1e-6)
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
    entropy, kl = collapse_monitors(probs)
    assert entropy.item() == pytest.approx(h.item(), rel=1e-5)
    assert kl.item() == pytest.approx((mean * (mean * k).log()).sum().item(), rel=1e-4)


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
