import math

import pytest
import torch
import torch.nn.functional as F
from tests_support import EPS32, TRANSCENDENTAL

from distill.losses import at_loss

pytestmark = pytest.mark.numerics


def block_mean(features, height, width):
    """``[B][C][height][width]`` lists: the means of equal blocks (integer size ratios)."""
    rows = features.double().tolist()
    step_h, step_w = features.shape[2] // height, features.shape[3] // width
    return [
        [
            [
                [
                    sum(
                        channel[i * step_h + a][j * step_w + b]
                        for a in range(step_h)
                        for b in range(step_w)
                    )
                    / (step_h * step_w)
                    for j in range(width)
                ]
                for i in range(height)
            ]
            for channel in sample
        ]
        for sample in rows
    ]


def reference_maps(maps):
    """Float64, sample by sample, from the paper: ``a_k = (1/C) Σ_c f_ck²`` over positions ``k``
    in row-major order, divided by ``√(Σ_k a_k²)``."""
    out = []
    for sample in maps:
        positions = [(i, j) for i in range(len(sample[0])) for j in range(len(sample[0][0]))]
        a = [sum(channel[i][j] ** 2 for channel in sample) / len(sample) for i, j in positions]
        norm = math.sqrt(sum(x * x for x in a))
        out.append([x / norm for x in a])
    return out


def reference_at(students, teachers):
    """Σ over stage pairs of the mean over samples and positions of (Q_s − Q_t)², a larger map
    first block-averaged to the smaller one's size."""
    total = 0.0
    for s, t in zip(students, teachers, strict=True):
        height, width = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
        q_s = reference_maps(block_mean(s, height, width))
        q_t = reference_maps(block_mean(t, height, width))
        squares = [
            (x - y) ** 2 for a, b in zip(q_s, q_t, strict=True) for x, y in zip(a, b, strict=True)
        ]
        total += sum(squares) / len(squares)
    return total


def map_and_error(features, size):
    """The attention map ``[B, h·w]`` of float32 ``features`` and a bound on its float32 error,
    in float64. A map pooled by ``k`` values (``k`` − 1 additions and a division) errs by
    ``(k + 1)·EPS32`` of its values' mean size; squaring an entry with error ``e`` by
    ``2|f|e + e²`` and a rounding; the channel mean of ``C`` non-negative squares by ``C + 1``
    roundings of itself; the norm of ``h·w`` such means by the means' errors plus ``h·w + 2``
    roundings and a sqrt; the division by both relative errors and a rounding."""
    f = features.detach().double()
    window = (f.shape[2] // size[0]) * (f.shape[3] // size[1])
    error = (window + 1) * EPS32 * F.adaptive_avg_pool2d(f.abs(), size) if window > 1 else 0.0
    f = F.adaptive_avg_pool2d(f, size)
    squares = f * f
    square_error = 2 * f.abs() * error + error * error + EPS32 * squares
    means = squares.mean(dim=1).flatten(1)
    means_error = square_error.mean(dim=1).flatten(1) + (f.shape[1] + 1) * EPS32 * means
    norm = means.norm(dim=1, keepdim=True)
    norm_error = means_error.norm(dim=1, keepdim=True)
    norm_error = norm_error + ((means.shape[1] + 2) * EPS32 + TRANSCENDENTAL) * norm
    maps = means / norm
    return maps, means_error / norm + maps * norm_error / norm + EPS32 * maps


def loss_error(students, teachers):
    """Bound on the float32 loss's error: each squared difference ``d²`` errs by
    ``2|d|·e_d + e_d²`` and a rounding (``e_d`` both maps' errors and the subtraction's); a
    stage's mean of ``N`` non-negative squares by ``N + 1`` roundings of itself; the sum over
    stages by one rounding each."""
    total, error = 0.0, 0.0
    for s, t in zip(students, teachers, strict=True):
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        (q_s, e_s), (q_t, e_t) = map_and_error(s, size), map_and_error(t, size)
        difference = (q_s - q_t).abs()
        e_d = e_s + e_t + EPS32 * difference
        squares = difference * difference
        stage = float(squares.mean())
        bound = 2 * difference * e_d + e_d * e_d + EPS32 * squares
        error += float(bound.mean()) + (squares.numel() + 1) * EPS32 * stage
        total += stage
    return error + len(students) * EPS32 * total


def stages(seed, shapes):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for shape in shapes]


@pytest.mark.parametrize(
    ("student_shapes", "teacher_shapes"),
    [
        ([(3, 4, 4, 4), (3, 8, 2, 2)], [(3, 6, 4, 4), (3, 5, 2, 2)]),
        ([(3, 4, 8, 4), (3, 8, 2, 2)], [(3, 6, 4, 4), (3, 5, 4, 6)]),
    ],
    ids=["same-size", "pooled-either-side"],
)
def test_loss_matches_the_float64_formula(student_shapes, teacher_shapes):
    students, teachers = stages(0, student_shapes), stages(1, teacher_shapes)
    # Related maps: the student's positions weighed like the teacher's, as in real pairs.
    students = [
        s * (1 + F.adaptive_avg_pool2d(t.abs().mean(1, keepdim=True), s.shape[2:]))
        for s, t in zip(students, teachers, strict=True)
    ]
    loss = at_loss(students, teachers).item()
    expected = reference_at(students, teachers)
    assert loss == pytest.approx(expected, abs=loss_error(students, teachers))


def test_maps_ignore_sample_scale_and_channel_order_sign_and_count():
    # The channel mean of f² is unchanged by permuting, negating or duplicating channels, and
    # the normalisation removes each sample's scale: such a student costs nothing.
    (teacher,) = stages(2, [(4, 6, 3, 3)])
    scales = torch.tensor([0.5, 2.0, 4.0, 1.0]).view(4, 1, 1, 1)  # powers of two: exact
    permuted = teacher[:, [3, 0, 5, 1, 4, 2]] * torch.tensor([1, -1, 1, 1, -1, 1]).view(6, 1, 1)
    student = scales * torch.cat([permuted, teacher], dim=1)  # 12 channels
    # Float32 maps agree to a few roundings (~1e-7) of entries up to 1: squares of ~1e-14.
    assert at_loss([student], [teacher]).item() == pytest.approx(0.0, abs=1e-12)
    spread = teacher.clone()
    spread[:, :, 0, 0] *= 3  # one position's attention changed
    assert at_loss([spread], [teacher]).item() > 1e-3


def test_only_the_student_receives_gradient():
    students = [s.requires_grad_(True) for s in stages(3, [(2, 3, 4, 4), (2, 4, 2, 2)])]
    teachers = [t.requires_grad_(True) for t in stages(4, [(2, 5, 4, 4), (2, 6, 4, 4)])]
    at_loss(students, teachers).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in students)
    assert all(t.grad is None for t in teachers)


def test_loss_is_float32_exact_under_bf16_autocast():
    students = [s.bfloat16().requires_grad_(True) for s in stages(5, [(4, 8, 8, 8), (4, 8, 4, 4)])]
    teachers = [t.bfloat16() for t in stages(6, [(4, 16, 8, 8), (4, 16, 4, 4)])]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = at_loss(students, teachers)
    loss.backward()
    plain = [s.detach().float().requires_grad_(True) for s in students]
    plain_loss = at_loss(plain, [t.float() for t in teachers])
    plain_loss.backward()
    assert loss.dtype == torch.float32 and torch.equal(loss, plain_loss)
    for student, reference in zip(students, plain, strict=True):
        assert student.grad.dtype == torch.bfloat16
        assert torch.equal(student.grad, reference.grad.bfloat16())


def test_stage_count_mismatch_names_both_counts():
    with pytest.raises(ValueError, match=r"got 2 and 1"):
        at_loss(stages(7, [(1, 2, 2, 2)] * 2), stages(8, [(1, 2, 2, 2)]))
