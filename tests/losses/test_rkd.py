import itertools
import math

import pytest
import torch
from tests_support import EPS32, TRANSCENDENTAL, assert_within, dot_error

from distill.losses import rkd_angle_loss, rkd_distance_loss
from distill.losses.rkd import angle_potential, distance_potential, rkd_angle_loss_direct

pytestmark = pytest.mark.numerics


def huber(x, y):
    d = abs(x - y)
    return 0.5 * d * d if d < 1 else d - 0.5


def distance_potentials(e):
    rows = e.tolist()
    dist = [[math.dist(a, b) for b in rows] for a in rows]
    nonzero = [d for row in dist for d in row if d > 0]
    mu = sum(nonzero) / len(nonzero)
    return [[d / mu for d in row] for row in dist]


def angle_potentials(e):
    rows = e.tolist()
    n = len(rows)
    out = {}
    for j, i, k in itertools.product(range(n), repeat=3):
        u = [a - b for a, b in zip(rows[i], rows[j], strict=True)]
        v = [a - b for a, b in zip(rows[k], rows[j], strict=True)]
        nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
        dot = sum(a * b for a, b in zip(u, v, strict=True))
        out[j, i, k] = 0.0 if nu == 0 or nv == 0 else dot / (nu * nv)
    return out


def reference_distance_loss(s, t):
    ps, pt = distance_potentials(s), distance_potentials(t)
    n = len(ps)
    return sum(huber(ps[a][b], pt[a][b]) for a in range(n) for b in range(n)) / n**2


def reference_angle_loss(s, t):
    ps, pt = angle_potentials(s), angle_potentials(t)
    return sum(huber(ps[key], pt[key]) for key in ps) / len(ps)


def angle_error(e):
    """Bound on the absolute error of float32 Gram-form angles of ``e`` ``[B, D]``: four Gram
    entries (dot products of norms up to max‖e‖²) and three sums, cancelling down to
    ``⟨e_i − e_j, e_k − e_j⟩``, then divided by two distances of at least the smallest
    non-zero one; the distances' own relative errors (D squares, a sqrt) add twice."""
    e = e.detach().double()
    norms, distances = float(e.norm(dim=1).max()) ** 2, torch.cdist(e, e)
    numerator = 4 * dot_error(e.shape[1], norms) + 12 * EPS32 * norms
    return numerator / float(distances[distances > 0].min()) ** 2 + 2 * distance_rtol(e)


def distance_rtol(e):
    """Relative error bound of a float32 distance between rows of ``e``: a sum of D squared
    differences (D + 1 roundings), its sqrt and an inverse."""
    return (e.shape[1] + 2) * EPS32 + TRANSCENDENTAL


def distance_potential_error(e):
    """Bound on the absolute error of float32 distance potentials ``d_ij / μ``: the distance's
    and μ's relative errors (μ sums B² of them), the division, times the largest potential."""
    relative = 2 * distance_rtol(e) + (len(e) ** 2 + 2) * EPS32
    return relative * float(distance_potential(e.detach().double()).max())


def gradient_error(potential, e, error_e, error_teacher):
    """Bound ``[B, D]`` on the float32 gradient error of a mean Huber loss over the entries ψ
    of ``potential(e)``, each entry within ``error_e`` (the teacher's within
    ``error_teacher``): the Huber slopes (1-Lipschitz) and the entries' derivatives (computed
    from the same Gram entries and distances, as uncertain) weigh ``Σ|∂ψ/∂e| / count``."""
    jacobian = torch.autograd.functional.jacobian(potential, e.detach().double(), vectorize=True)
    jacobian = jacobian.reshape(-1, *e.shape)
    return (2 * error_e + error_teacher) * jacobian.abs().sum(0) / len(jacobian)


def embeddings(seed, rows=7, dim=5, duplicate=True):
    generator = torch.Generator().manual_seed(seed)
    e = torch.randn(rows, dim, generator=generator, dtype=torch.float64) * 2
    if duplicate:
        e[3] = e[1]  # duplicate rows give zero distances and degenerate angles
    return e


# The float64 checks below: hundreds of roundings of 2⁻⁵³ (~1e-13) are far below 1e-9.
@pytest.mark.parametrize("duplicate", [False, True])
def test_distance_loss_matches_float64_formula(duplicate):
    s, t = embeddings(0, duplicate=duplicate), embeddings(1, dim=9, duplicate=duplicate)
    got = rkd_distance_loss(s, t).item()
    assert got == pytest.approx(reference_distance_loss(s, t), rel=1e-9)


@pytest.mark.parametrize("duplicate", [False, True])
def test_angle_loss_matches_float64_formula(duplicate):
    s, t = embeddings(2, duplicate=duplicate), embeddings(3, dim=9, duplicate=duplicate)
    got = rkd_angle_loss(s, t).item()
    assert got == pytest.approx(reference_angle_loss(s, t), rel=1e-9)


@pytest.mark.parametrize("duplicate", [False, True])
def test_gram_form_equals_direct_form(duplicate):
    s = embeddings(4, rows=16, dim=32, duplicate=duplicate)
    t = embeddings(5, rows=16, dim=64, duplicate=duplicate)
    gram, direct = rkd_angle_loss(s, t), rkd_angle_loss_direct(s, t)
    assert abs(gram.item() - direct.item()) / direct.item() < 1e-6


def test_gradients_are_finite_reach_only_the_student_and_match_direct_form():
    s = embeddings(6, duplicate=True).float().requires_grad_(True)
    t = embeddings(7, duplicate=True).float().requires_grad_(True)
    (rkd_angle_loss(s, t) + rkd_distance_loss(s, t)).backward()
    assert torch.isfinite(s.grad).all() and t.grad is None
    gram_grad = s.grad.clone()
    s.grad = None
    s64 = s.detach().double().requires_grad_(True)
    (
        rkd_angle_loss_direct(s64, t.detach().double()) + rkd_distance_loss(s64, t.double())
    ).backward()
    error = gradient_error(angle_potential, s, angle_error(s), angle_error(t))
    error += gradient_error(
        distance_potential, s, distance_potential_error(s), distance_potential_error(t)
    )
    assert_within(gram_grad, s64.grad, error)


def test_losses_vanish_for_a_scaled_copy_of_the_teacher():
    t = embeddings(8, duplicate=False)
    assert rkd_distance_loss(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert rkd_angle_loss(3.0 * t + 1.0, t).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("chunk_elements", [50, 100, 300])
def test_chunked_angle_loss_equals_one_chunk_in_value_and_gradient(chunk_elements):
    # Chunks of 1, 2 and 6 vertices of a 7-row batch (49 angles per vertex).
    s = embeddings(9, duplicate=True).requires_grad_(True)
    t = embeddings(10, dim=9, duplicate=True)
    whole = rkd_angle_loss(s, t, chunk_elements=10**6)
    (whole_grad,) = torch.autograd.grad(whole, s)
    chunked = rkd_angle_loss(s, t, chunk_elements=chunk_elements)
    (chunked_grad,) = torch.autograd.grad(chunked, s)
    assert chunked.item() == pytest.approx(reference_angle_loss(s.detach(), t), rel=1e-9)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)
    torch.testing.assert_close(chunked_grad, whole_grad, rtol=1e-10, atol=1e-12)


def post_relu(seed, rows, dim):
    """Non-negative features like pooled ReLU outputs: their large common component makes
    the Gram form's ``G_ik − G_ij − G_jk + G_jj`` cancel."""
    return torch.relu(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("loss", "reference", "gradient_reference", "potential", "entry_error"),
    [
        (
            rkd_distance_loss, reference_distance_loss, rkd_distance_loss, distance_potential,
            distance_potential_error,
        ),
        (rkd_angle_loss, reference_angle_loss, rkd_angle_loss_direct, angle_potential, angle_error),
    ],
    ids=["distance", "angle"],
)  # fmt: skip
def test_losses_and_gradients_are_float32_exact_under_bf16_autocast(
    loss, reference, gradient_reference, potential, entry_error, dtype
):
    s, t = post_relu(11, rows=10, dim=48).to(dtype), post_relu(12, rows=10, dim=96).to(dtype)
    student = s.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(student, t)
    value.backward()
    # bf16 Gram angles put the value 4e-3 and the gradient 2e-2 off, within float32's worst
    # case for these cancelling relations: what tells them apart is that autocast changes
    # nothing, to the bit.
    plain = s.clone().requires_grad_(True)
    plain_value = loss(plain, t)
    plain_value.backward()
    assert torch.equal(value, plain_value) and torch.equal(student.grad, plain.grad)
    expected = reference(s.double(), t.double())
    entries = potential(s.double()).numel()  # Huber terms ≥ 0: their sum's relative error
    error = entry_error(s.float()) + entry_error(t.float()) + entries * EPS32 * expected
    assert value.item() == pytest.approx(expected, abs=error)
    s64 = s.double().requires_grad_(True)
    gradient_reference(s64, t.double()).backward()
    error = gradient_error(potential, s, entry_error(s.float()), entry_error(t.float()))
    # A bf16 gradient is the float32 one rounded (a relative error up to 2⁻⁸ per entry).
    if dtype == torch.bfloat16:
        error = error + 2**-8 * s64.grad.abs()
    assert_within(student.grad, s64.grad, error)
    assert value.dtype == torch.float32 and student.grad.dtype == dtype
