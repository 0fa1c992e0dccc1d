import math

import pytest
import torch
import torch.nn.functional as F
from tests_support import EPS32, TRANSCENDENTAL

from distill.losses import VIDLoss, vid_loss

pytestmark = pytest.mark.numerics


def reference_likelihood(mean, target, variance):
    """Float64, entry by entry: ``0.5 · mean_{b,c,k} (log σ²_c + (t − μ)² / σ²_c)``."""
    terms = []
    for b in range(len(mean)):
        for c, var in enumerate(variance.double().tolist()):
            mu, t = mean[b, c].double().flatten().tolist(), target[b, c].double().flatten().tolist()
            terms += [
                0.5 * (math.log(var) + (y - x) ** 2 / var) for x, y in zip(mu, t, strict=True)
            ]
    return sum(terms) / len(terms)


def likelihood_error(mean, target, variance):
    """Bound on the float32 likelihood's error: per entry, the residual's, square's and
    division's roundings (four of ``r²/σ²``), the log's (of ``|log σ²|``, and its own), the
    sum's and the halving (exact); the mean of ``N`` terms of either sign errs by ``N + 1``
    roundings of the mean of their sizes."""
    var = variance.double().view(1, -1, *[1] * (mean.dim() - 2))
    scaled = (target.double() - mean.double()).pow(2) / var
    log = var.log().expand_as(scaled)
    terms = 0.5 * (log + scaled)
    bound = 0.5 * (4 * EPS32 * scaled + TRANSCENDENTAL * (1 + log.abs())) + EPS32 * terms.abs()
    return float(bound.mean()) + (terms.numel() + 1) * EPS32 * float(terms.abs().mean())


def randn(seed, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape", [(3, 4, 2, 3), (5, 6)], ids=["feature-maps", "embeddings"])
def test_likelihood_matches_the_float64_formula(shape):
    mean, target = randn(0, *shape), randn(1, *shape) * 2
    variance = F.softplus(randn(2, shape[1])) + 0.05  # some below 1: negative log-variances
    loss = vid_loss(mean, target, variance).item()
    expected = reference_likelihood(mean, target, variance)
    assert loss == pytest.approx(expected, abs=likelihood_error(mean, target, variance))


def reference_module(weights, variance, student, teacher):
    """Float64 loops: the teacher's 4×4 map block-averaged to the student's 2×2; at each
    position ``μ = W₃ relu(W₂ relu(W₁ s))`` (1×1 convolutions are channel products); then the
    likelihood of the teacher's pooled features."""
    w1, w2, w3 = (w.double().squeeze(-1).squeeze(-1).tolist() for w in weights)
    s, t = student.double().tolist(), teacher.double().tolist()

    def layer(w, x, relu):
        out = [sum(a * b for a, b in zip(row, x, strict=True)) for row in w]
        return [max(v, 0.0) for v in out] if relu else out

    terms = []
    for b in range(len(s)):
        for i in range(2):
            for j in range(2):
                x = [channel[i][j] for channel in s[b]]
                mu = layer(w3, layer(w2, layer(w1, x, True), True), False)
                for c, m in enumerate(mu):
                    block = [t[b][c][2 * i + di][2 * j + dj] for di in range(2) for dj in range(2)]
                    target = sum(block) / 4
                    terms.append(0.5 * (math.log(variance[c]) + (target - m) ** 2 / variance[c]))
    return sum(terms) / len(terms)


def test_module_regresses_the_pooled_teacher_through_three_1x1_convolutions():
    torch.manual_seed(0)
    module = VIDLoss(student_channels=3, teacher_channels=4, hidden_channels=5).double()
    with torch.no_grad():
        module.raw_variance.copy_(randn(3, 4, dtype=torch.float64))
    student, teacher = randn(4, 2, 3, 2, 2, dtype=torch.float64), randn(5, 2, 4, 4, 4).double()
    weights = [layer.weight for layer in module.regressor if isinstance(layer, torch.nn.Conv2d)]
    assert [tuple(w.shape[:2]) for w in weights] == [(5, 3), (5, 5), (4, 5)]
    assert all(layer.bias is None for layer in module.regressor if hasattr(layer, "bias"))
    variance = (F.softplus(module.raw_variance) + 1e-5).tolist()
    expected = reference_module(weights, variance, student, teacher)
    # Float64 throughout: tens of roundings of 2⁻⁵³ in values of order 1 are ~1e-14.
    assert module(student, teacher).item() == pytest.approx(expected, rel=1e-12)


def test_hidden_width_defaults_to_the_teachers_and_variance_starts_at_init_variance():
    module = VIDLoss(student_channels=3, teacher_channels=7, init_variance=5.0)
    assert module.regressor[0].out_channels == 7 and module.regressor[2].out_channels == 7
    # The float32 parameter (one rounding of ~5), softplus (slope < 1, its exp and log) and
    # the added floor: a few roundings of 5.
    bound = 5.0 * (3 * EPS32 + 2 * TRANSCENDENTAL)
    assert (module.variance() - 5.0).abs().max().item() <= bound


def test_loss_is_stationary_in_each_variance_at_its_channels_mean_squared_residual():
    # ∂/∂σ² of 0.5·(log σ² + r²/σ²) is 0.5·(1/σ² − r²/σ⁴): the learned variance of a channel
    # settles at the mean squared residual of that channel.
    torch.manual_seed(1)
    module = VIDLoss(student_channels=3, teacher_channels=4).double()
    student, teacher = randn(6, 5, 3, 2, 2, dtype=torch.float64), randn(7, 5, 4, 2, 2).double()
    with torch.no_grad():
        residual = (teacher - module.regressor(student)).pow(2).mean(dim=(0, 2, 3))
        module.raw_variance.copy_(torch.log(torch.expm1(residual - module.min_variance)))
    module(student, teacher).backward()
    # Float64: the gradient's two terms of order 1/σ² cancel to ~1e-16.
    assert module.raw_variance.grad.abs().max().item() < 1e-12
    module.zero_grad()
    with torch.no_grad():
        module.raw_variance.add_(0.5)
    module(student, teacher).backward()
    assert (module.raw_variance.grad > 1e-3).all()  # too large a variance is pushed down


def test_student_regressor_and_variance_receive_gradient_and_teacher_none():
    module = VIDLoss(student_channels=2, teacher_channels=3)
    student = randn(8, 2, 2, 4, 4).requires_grad_(True)
    teacher = randn(9, 2, 3, 2, 2).requires_grad_(True)
    module(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_likelihood_is_float32_exact_under_bf16_autocast():
    mean = randn(10, 8, 16, 4, 4).bfloat16().requires_grad_(True)
    target = (randn(11, 8, 16, 4, 4) * 3).bfloat16()
    variance = (F.softplus(randn(12, 16)) + 1e-5).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vid_loss(mean, target, variance)
    loss.backward()
    plain_mean = mean.detach().float().requires_grad_(True)
    plain_variance = variance.detach().clone().requires_grad_(True)
    plain_loss = vid_loss(plain_mean, target.float(), plain_variance)
    plain_loss.backward()
    assert loss.dtype == torch.float32 and torch.equal(loss, plain_loss)
    assert torch.equal(mean.grad, plain_mean.grad.bfloat16())
    assert torch.equal(variance.grad, plain_variance.grad)


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(2, 3, 1, 1\), \(2, 4, 1, 1\) and \(3,\)"):
        vid_loss(torch.ones(2, 3, 1, 1), torch.ones(2, 4, 1, 1), torch.ones(3))
    with pytest.raises(ValueError, match=r"init_variance=1e-06 must exceed min_variance=1e-05"):
        VIDLoss(2, 3, init_variance=1e-6)
