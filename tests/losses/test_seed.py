import math

import pytest
import torch
import torch.nn.functional as F
from tests_support import EPS32, log_softmax_error, score_error, softmax_rtol

from distill.losses.seed import seed_loss, seed_targets

pytestmark = pytest.mark.numerics


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def embeddings(batch=6, queue_size=20, dim=8, seed=0):
    """Teacher, student and a queue in which some rows are near the teacher's embeddings, so
    that even at τ_t = 0.01 the teacher's distribution is spread over several candidates."""
    teacher, student = unit(batch, dim, seed=seed), unit(batch, dim, seed=seed + 1)
    queue = unit(queue_size, dim, seed=seed + 2)
    noise = 0.05 * torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed + 3))
    queue[:batch] = F.normalize(teacher + noise, dim=1)
    return student, teacher, queue


def reference_seed(student, teacher, queue, student_temp, teacher_temp):
    """Float64, image by image, from the paper: candidates c = (t_i, u_1, ..., u_Q);
    p^T_j ∝ exp(t_i·c_j/τ_t), p^S_j ∝ exp(s_i·c_j/τ_s); L = mean_i -Σ_j p^T_j log p^S_j."""
    total = 0.0
    for i in range(len(student)):
        s, t = student[i].double(), teacher[i].double()
        candidates = [t] + [u.double() for u in queue]
        teacher_scores = [float(t @ c) / teacher_temp for c in candidates]
        student_scores = [float(s @ c) / student_temp for c in candidates]
        t_max, s_max = max(teacher_scores), max(student_scores)
        t_sum = sum(math.exp(x - t_max) for x in teacher_scores)
        s_log_sum = s_max + math.log(sum(math.exp(x - s_max) for x in student_scores))
        total -= sum(
            math.exp(a - t_max) / t_sum * (b - s_log_sum)
            for a, b in zip(teacher_scores, student_scores, strict=True)
        )
    return total / len(student)


def loss_error(dim, student_temp, teacher_temp, num_candidates, batch):
    """Bound on the absolute error of the float32 loss of unit vectors against the float64
    reference: the teacher's probabilities (relative error ``softmax_rtol``) weigh log-probs
    of size at most ``M = 2/τ_s + log C``; the student's log-probs err by
    ``log_softmax_error``; then the C products and their sum, and the mean over the batch."""
    probs_rtol = softmax_rtol(score_error(dim, teacher_temp), 1 / teacher_temp, num_candidates)
    log_probs = log_softmax_error(score_error(dim, student_temp), 1 / student_temp, num_candidates)
    largest = 2 / student_temp + math.log(num_candidates)
    return probs_rtol * largest + log_probs + (num_candidates + 1 + batch) * EPS32 * largest


@pytest.mark.parametrize(("student_temp", "teacher_temp"), [(0.2, 0.01), (0.1, 0.07)])
def test_seed_loss_matches_the_papers_cross_entropy(student_temp, teacher_temp):
    student, teacher, queue = embeddings()
    loss = seed_loss(student, teacher, queue, student_temp, teacher_temp)
    expected = reference_seed(student, teacher, queue, student_temp, teacher_temp)
    error = loss_error(8, student_temp, teacher_temp, 21, 6)
    assert loss.item() == pytest.approx(expected, abs=error)
    # The spread teacher distribution makes the queue matter: not just -log p^S(own).
    targets = seed_targets(teacher, queue, teacher_temp)
    assert (targets[:, 0] < 0.99).all() and (targets[:, 0] > 0.01).all()


def test_teacher_distribution_puts_its_own_embedding_first():
    _, teacher, queue = embeddings(seed=4)
    targets = seed_targets(teacher, queue, 0.05)
    scores = torch.cat([torch.ones(6, 1), teacher @ queue.T], dim=1) / 0.05
    torch.testing.assert_close(targets, scores.softmax(dim=1), rtol=1e-5, atol=1e-7)


def test_no_gradient_reaches_the_teacher():
    student, teacher, queue = embeddings(seed=8)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    seed_loss(student, teacher, queue).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_loss_is_float32_exact_under_bf16_autocast():
    student, teacher, queue = embeddings(dim=128, seed=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = seed_loss(student, teacher, queue)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, seed_loss(student, teacher, queue))
