import math

import pytest
import torch

from distill.losses import kd_loss

pytestmark = pytest.mark.numerics


def reference_kd(student, teacher, temperature):
    """T² · mean_b Σ_c p_t log(p_t / p_s), written out in float64."""
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist(), strict=True):
        s_exp = [math.exp(v / temperature) for v in s_row]
        t_exp = [math.exp(v / temperature) for v in t_row]
        p_s = [v / sum(s_exp) for v in s_exp]
        p_t = [v / sum(t_exp) for v in t_exp]
        total += sum(t * math.log(t / s) for t, s in zip(p_t, p_s, strict=True))
    return temperature**2 * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_matches_float64_formula(temperature):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 10, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(6, 10, generator=generator, dtype=torch.float64) * 3
    got = kd_loss(student, teacher, temperature)
    # Float64 throughout: tens of roundings of 2⁻⁵³ amplified by logits up to ~10 are ~1e-14.
    assert got.item() == pytest.approx(reference_kd(student, teacher, temperature), rel=1e-10)


def test_zero_when_logits_agree_and_gradient_only_reaches_student():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = student.detach().clone().requires_grad_(True)
    loss = kd_loss(student, teacher, 4.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    kd_loss(student, teacher + 1.0 * torch.randn(4, 5), 4.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 10\).*\(2, 100\)"):
        kd_loss(torch.zeros(2, 10), torch.zeros(2, 100))
