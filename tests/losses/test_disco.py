import pytest
import torch
import torch.nn.functional as F
from tests_support import EPS32

from distill.losses.disco import consistency_loss

pytestmark = pytest.mark.numerics


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_consistency_is_the_mean_squared_distance_of_the_pairs():
    student, teacher = unit(6, 16, seed=0), unit(6, 16, seed=1)
    expected = sum(
        sum((float(s) - float(t)) ** 2 for s, t in zip(row_s, row_t, strict=True))
        for row_s, row_t in zip(student.double(), teacher.double(), strict=True)
    ) / len(student)
    # Each of the D squared differences of a row: a subtraction and a square (relative 2 eps),
    # their sum of non-negative terms (D - 1), then the mean of B of them and its division.
    rtol = (16 + 6 + 3) * EPS32
    assert consistency_loss(student, teacher).item() == pytest.approx(expected, rel=rtol)


def test_unit_vectors_give_two_minus_twice_the_cosine():
    student, teacher = unit(5, 8, seed=2), unit(5, 8, seed=3)
    cosine = (student.double() * teacher.double()).sum(dim=1)
    expected = (2 - 2 * cosine).mean().item()
    assert consistency_loss(student, teacher).item() == pytest.approx(expected, abs=40 * EPS32)


def test_no_gradient_reaches_the_teacher():
    student, teacher = unit(4, 8, seed=4), unit(4, 8, seed=5)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    consistency_loss(student, teacher).backward()
    torch.testing.assert_close(student.grad, 2 * (student - teacher).detach() / 4)
    assert teacher.grad is None


def test_half_precision_inputs_are_compared_in_float32():
    student, teacher = unit(4, 8, seed=6), unit(4, 8, seed=7)
    loss = consistency_loss(student.bfloat16(), teacher.bfloat16())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(
        loss, consistency_loss(student.bfloat16().float(), teacher.bfloat16().float())
    )
