import math

import pytest
import torch

from distill.errors import ConfigError
from distill.losses import CRDLoss, nce_loss
from distill.losses.crd import sample_other_class, sample_uniform


def reference_nce(scores, num_rows):
    total = 0.0
    for row in scores.double().tolist():
        k = len(row) - 1
        noise = k / num_rows
        total -= math.log(row[0] / (row[0] + noise))
        total -= sum(math.log(noise / (h + noise)) for h in row[1:])
    return total / len(scores)


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
    exp_s = torch.exp(torch.einsum("bd,bkd->bk", z_s, crd.teacher_memory.rows[rows]) / 0.07)
    exp_t = torch.exp(torch.einsum("bd,bkd->bk", z_t, crd.student_memory.rows[rows]) / 0.07)
    z_student, z_teacher = exp_s.mean() * 40, exp_t.mean() * 40
    torch.testing.assert_close(crd.normalizers, torch.stack([z_student, z_teacher]).detach())
    expected_s = reference_nce((exp_s / z_student).detach(), 40)
    expected_t = reference_nce((exp_t / z_teacher).detach(), 40)
    assert student_loss.item() == pytest.approx(expected_s, rel=1e-5)
    assert teacher_loss.item() == pytest.approx(expected_t, rel=1e-5)
    frozen = crd.normalizers.clone()
    crd(z_s * 0.5, z_t, idx)  # a second batch does not move Z
    assert torch.equal(crd.normalizers, frozen)


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
    bank_t, bank_s = crd.teacher_memory.rows.double(), crd.student_memory.rows.double()
    exp_s = torch.exp(torch.einsum("bd,bkd->bk", z_s.double(), bank_t[rows]) / 0.07)
    exp_t = torch.exp(torch.einsum("bd,bkd->bk", z_t.double(), bank_s[rows]) / 0.07)
    z_student, z_teacher = exp_s.mean() * 40, exp_t.mean() * 40
    # bf16 scores put Z 0.3% and the losses 0.7–1% off; float32 is within 1e-6.
    expected = torch.stack([z_student, z_teacher])
    torch.testing.assert_close(crd.normalizers.double(), expected, rtol=1e-5, atol=0)
    expected_s = reference_nce((exp_s / z_student).detach(), 40)
    expected_t = reference_nce((exp_t / z_teacher).detach(), 40)
    assert student_loss.item() == pytest.approx(expected_s, rel=1e-5)
    assert teacher_loss.item() == pytest.approx(expected_t, rel=1e-5)
    assert z_s.dtype == torch.bfloat16 and student_loss.dtype == torch.float32
