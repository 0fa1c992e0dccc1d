import math

import pytest
import torch
from tests_support import EPS32, TRANSCENDENTAL, exp_score_rtol

from distill.errors import ConfigError
from distill.losses import CRDLoss, nce_loss
from distill.losses.crd import sample_other_class, sample_uniform

pytestmark = pytest.mark.numerics


def reference_nce(scores, num_rows):
    total = 0.0
    for row in scores.double().tolist():
        k = len(row) - 1
        noise = k / num_rows
        total -= math.log(row[0] / (row[0] + noise))
        total -= sum(math.log(noise / (h + noise)) for h in row[1:])
    return total / len(scores)


def reference_crd(crd, z_student, z_teacher, rows, temperature):
    """Float64 ``Z`` ``[2]`` and losses ``[2]`` of CRD's first batch from the same embeddings
    and bank rows, and the losses' sensitivity to a relative error of the critics ``h``: the
    larger ``mean_rows(K/N / (h⁺ + K/N) + Σ_neg h⁻ / (h⁻ + K/N))``, i.e. ``Σ |∂L/∂log h|``."""
    num_rows, noise = len(crd.student_memory), (rows.shape[1] - 1) / len(crd.student_memory)
    normalizers, losses, sensitivity = [], [], 0.0
    for z, bank in ((z_student, crd.teacher_memory.rows), (z_teacher, crd.student_memory.rows)):
        exps = torch.exp(torch.einsum("bd,bkd->bk", z.double(), bank.double()[rows]) / temperature)
        normalizers.append(exps.mean() * num_rows)
        h = exps / normalizers[-1]
        losses.append(reference_nce(h, num_rows))
        weights = (noise / (h[:, 0] + noise)) + (h[:, 1:] / (h[:, 1:] + noise)).sum(1)
        sensitivity = max(sensitivity, float(weights.mean()))
    return torch.stack(normalizers), torch.tensor(losses, dtype=torch.float64), sensitivity


def crd_tolerances(dim, temperature, rows, sensitivity):
    """``(rtol of Z, rtol and atol of the losses)`` of float32 CRD against ``reference_crd``,
    for unit embeddings and bank rows of norm ≤ √3 (the bound of their uniform start)."""
    exp_rtol = exp_score_rtol(dim, temperature, norms=math.sqrt(3))
    z_rtol = exp_rtol + (rows.numel() + 2) * EPS32  # a sum of B·(1 + K) exps, / count, · N
    critic_rtol = exp_rtol + z_rtol + EPS32  # h = exp / Z
    # Each of a row's 1 + K log terms also rounds its sum with K/N, its division and its log.
    loss_atol = sensitivity * critic_rtol + rows.shape[1] * (2 * EPS32 + TRANSCENDENTAL)
    loss_rtol = sum(rows.shape) * EPS32  # the sum of 1 + K terms, the mean over B rows
    return z_rtol, loss_rtol, loss_atol


def test_nce_loss_matches_float64_formula():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(5, 9, generator=generator, dtype=torch.float64) * 3
    assert nce_loss(scores, 50).item() == pytest.approx(reference_nce(scores, 50), rel=1e-12)


def test_other_class_negatives_never_share_the_anchor_label():
    torch.manual_seed(0)
    labels = torch.randint(0, 7, (500,))
    counts = torch.bincount(labels)
    order, starts = torch.argsort(labels, stable=True), torch.cumsum(counts, 0) - counts
    indices = torch.randint(0, 500, (64,))
    rows = sample_other_class(indices, labels[indices], 300, order, starts, counts)
    assert rows.shape == (64, 301) and torch.equal(rows[:, 0], indices)
    assert (labels[rows[:, 1:]] != labels[indices].unsqueeze(1)).all()
    # Uniform over the other classes: every row outside the anchor class turns up.
    anchor = int(indices[0])
    many = sample_other_class(
        torch.full((200,), anchor), labels[torch.full((200,), anchor)], 300, order, starts, counts
    )
    seen = set(many[:, 1:].flatten().tolist())
    assert seen == set(torch.nonzero(labels != labels[anchor]).flatten().tolist())


def test_uniform_sampler_puts_the_positive_first():
    rows = sample_uniform(torch.tensor([3, 9]), 16, 20)
    assert rows.shape == (2, 17) and rows[:, 0].tolist() == [3, 9]
    assert rows.min() >= 0 and rows.max() < 20


def test_loss_matches_formula_with_z_fixed_on_the_first_batch():
    torch.manual_seed(0)
    crd = CRDLoss(6, 10, num_rows=40, embed_dim=8, num_negatives=12, sampler="uniform")
    f_s, f_t, idx = torch.randn(4, 6), torch.randn(4, 10), torch.tensor([0, 5, 9, 33])
    z_s, z_t = crd.embed(f_s, f_t)
    torch.manual_seed(1)
    student_loss, teacher_loss = crd(z_s, z_t, idx)
    torch.manual_seed(1)
    rows = crd.sample(idx)
    with torch.no_grad():
        normalizers, losses, sensitivity = reference_crd(crd, z_s, z_t, rows, 0.07)
    z_rtol, loss_rtol, loss_atol = crd_tolerances(8, 0.07, rows, sensitivity)
    torch.testing.assert_close(crd.normalizers.double(), normalizers, rtol=z_rtol, atol=0)
    got = torch.stack([student_loss, teacher_loss]).detach().double()
    torch.testing.assert_close(got, losses, rtol=loss_rtol, atol=loss_atol)
    frozen = crd.normalizers.clone()
    crd(z_s * 0.5, z_t, idx)  # a second batch does not move Z
    assert torch.equal(crd.normalizers, frozen)


def test_float64_embeddings_are_scored_in_float64():
    # As under --trainer.precision 64-true: banks and embeddings in float64 stay float64 (a
    # float32 cast of the embeddings alone was a dtype error against the float64 banks).
    torch.manual_seed(0)
    crd = CRDLoss(6, 10, num_rows=40, embed_dim=8, num_negatives=12, sampler="uniform").double()
    f_s, f_t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    z_s, z_t = crd.embed(f_s, f_t)
    idx = torch.tensor([0, 5, 9, 33])
    torch.manual_seed(1)
    student_loss, teacher_loss = crd(z_s, z_t, idx)
    torch.manual_seed(1)
    with torch.no_grad():
        normalizers, losses, _ = reference_crd(crd, z_s, z_t, crd.sample(idx), 0.07)
    assert student_loss.dtype == teacher_loss.dtype == torch.float64
    # Float64 on both sides: ~100 roundings of 2⁻⁵³, amplified 1/τ by exp, stay below 1e-12.
    torch.testing.assert_close(crd.normalizers, normalizers, rtol=1e-10, atol=0)
    got = torch.stack([student_loss, teacher_loss]).detach()
    torch.testing.assert_close(got, losses, rtol=1e-10, atol=0)


def test_gradients_reach_the_embed_heads_and_the_student_features():
    crd = CRDLoss(6, 10, num_rows=40, embed_dim=8, num_negatives=12, sampler="uniform")
    f_s = torch.randn(4, 6, requires_grad=True)
    z_s, z_t = crd.embed(f_s, torch.randn(4, 10))
    sum(crd(z_s, z_t, torch.arange(4))).backward()
    assert f_s.grad.abs().sum() > 0
    assert crd.embed_student.weight.grad.abs().sum() > 0
    assert crd.embed_teacher.weight.grad.abs().sum() > 0
    assert crd.student_memory.rows.grad is None  # banks are buffers


def test_update_memory_moves_exactly_the_batch_rows():
    crd = CRDLoss(6, 10, num_rows=40, embed_dim=8, num_negatives=12, sampler="uniform")
    before_s, before_t = crd.student_memory.rows.clone(), crd.teacher_memory.rows.clone()
    z_s, z_t = crd.embed(torch.randn(3, 6), torch.randn(3, 10))
    idx = torch.tensor([1, 4, 7])
    crd.update_memory(z_s, z_t, idx)
    expected = torch.nn.functional.normalize(0.5 * before_s[idx] + 0.5 * z_s.detach(), dim=1)
    torch.testing.assert_close(crd.student_memory.rows[idx], expected)
    moved = (crd.teacher_memory.rows != before_t).any(dim=1).nonzero().flatten()
    assert moved.tolist() == [1, 4, 7]


def test_other_class_without_labels_is_refused():
    with pytest.raises(ConfigError, match="one label per training sample"):
        CRDLoss(6, 10, num_rows=40, sampler="other_class")


def test_scores_and_z_are_float32_exact_under_bf16_autocast():
    torch.manual_seed(0)
    crd = CRDLoss(6, 10, num_rows=40, embed_dim=128, num_negatives=12, sampler="uniform")
    f_s, f_t, idx = torch.randn(4, 6), torch.randn(4, 10), torch.tensor([0, 5, 9, 33])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_s, z_t = crd.embed(f_s, f_t)  # bf16, as in a bf16-mixed step
        torch.manual_seed(1)
        student_loss, teacher_loss = crd(z_s, z_t, idx)
    torch.manual_seed(1)
    rows = crd.sample(idx)
    with torch.no_grad():
        normalizers, losses, sensitivity = reference_crd(crd, z_s, z_t, rows, 0.07)
    # bf16 scores put Z 0.1–0.2% and the losses 1% off: 6 and 30 times float32's bounds.
    z_rtol, loss_rtol, loss_atol = crd_tolerances(128, 0.07, rows, sensitivity)
    torch.testing.assert_close(crd.normalizers.double(), normalizers, rtol=z_rtol, atol=0)
    got = torch.stack([student_loss, teacher_loss]).detach().double()
    torch.testing.assert_close(got, losses, rtol=loss_rtol, atol=loss_atol)
    assert z_s.dtype == torch.bfloat16 and student_loss.dtype == torch.float32
