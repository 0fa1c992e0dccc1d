import pytest
import torch
import torch.nn.functional as F
from tests_support import EPS32, TRANSCENDENTAL, assert_within, dot_error, normalize_error

from distill.errors import ConfigError
from distill.modules import PrototypeBank

pytestmark = pytest.mark.numerics
NORM_ERROR = 2 * normalize_error(16)  # normalising a 16-d vector, then measuring its norm


def clusters(num=4, per=25, dim=16, noise=0.05, seed=0):
    """Points around ``num`` well-separated unit centres: (points, labels, centres), shuffled."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.linalg.qr(torch.randn(dim, num, generator=generator))[0].T  # orthonormal
    labels = torch.arange(num).repeat_interleave(per)
    points = F.normalize(centres[labels] + noise * torch.randn(num * per, dim, generator=generator))
    order = torch.randperm(num * per, generator=generator)
    return points[order], labels[order], centres


@pytest.mark.parametrize("restarts", [1, 3])
def test_spherical_kmeans_recovers_separated_clusters(restarts):
    points, labels, centres = clusters()
    bank = PrototypeBank(4, 16, threshold=0.5, kmeans_restarts=restarts)
    global_state = torch.get_rng_state()
    bank.init_from(points)
    assert torch.equal(torch.get_rng_state(), global_state)  # its own generator
    assert bank.is_initialized and bool(bank.initialized)
    torch.testing.assert_close(bank.prototypes.norm(dim=1), torch.ones(4), rtol=0, atol=NORM_ERROR)
    # Each true centre has one prototype at cosine > 0.99: a one-to-one match.
    match = (centres @ bank.prototypes.T).argmax(dim=1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    assert ((centres @ bank.prototypes.T).max(dim=1).values > 0.99).all()
    # The assignment is the true partition up to renaming.
    assert torch.equal(bank.assign(points), match[labels])


def test_initialisation_is_the_same_for_the_same_embeddings_and_seed():
    points, _, _ = clusters(num=6, noise=0.3)
    first, second = PrototypeBank(6, 16, seed=3), PrototypeBank(6, 16, seed=3)
    first.init_from(points)
    second.init_from(points)
    assert torch.equal(first.prototypes, second.prototypes)


def test_assign_is_minus_one_below_threshold_and_before_init():
    bank = PrototypeBank(2, 3, threshold=0.6)
    embeddings = F.normalize(torch.tensor([[1.0, 0.1, 0], [0.2, 1, 0], [1, 1, 0], [0, 0, 1.0]]))
    assert torch.equal(bank.assign(embeddings), torch.full((4,), -1))
    bank.set_prototypes(torch.eye(3)[:2])
    # Similarities: 0.995 | 0.981 | 0.707 (tie, first wins) | 0: below 0.6.
    assert torch.equal(bank.assign(embeddings), torch.tensor([0, 1, 0, -1]))
    bank.threshold = 0.75
    assert torch.equal(bank.assign(embeddings), torch.tensor([0, 1, -1, -1]))


def test_relation_is_same_cluster_and_never_for_unassigned():
    points, labels, centres = clusters(num=3, per=20)
    bank = PrototypeBank(3, 16, threshold=0.8)
    bank.init_from(points)
    anchors, candidates = points[:15], points[15:]
    outlier = F.normalize(centres.sum(0, keepdim=True))  # cosine 0.58 to every centre
    relation = bank.relation(torch.cat([anchors, outlier]), torch.cat([candidates, outlier]))
    expected = labels[:15].unsqueeze(1) == labels[15:].unsqueeze(0)
    assert relation.shape == (16, 46) and relation.dtype == torch.bool
    assert torch.equal(relation[:15, :45], expected)
    assert not relation[15].any() and not relation[:, 45].any()


def reference_update(prototypes, anchors, threshold, momentum):
    """The update in float64, anchor by anchor: m_z = 1 - (1 - m)·s, combined order-free."""
    prototypes, anchors = prototypes.double(), F.normalize(anchors.double(), dim=1)
    result = prototypes.clone()
    for k in range(len(prototypes)):
        keep, pulled, total = 1.0, torch.zeros_like(prototypes[k]), 0.0
        for z in anchors:
            similarities = prototypes @ z
            if similarities.argmax() != k or similarities[k] < threshold:
                continue
            weight = (1 - momentum) * max(float(similarities[k]), 0.0)
            keep *= 1 - weight
            pulled += weight * z
            total += weight
        if total > 0:
            mixed = keep * prototypes[k] + (1 - keep) * pulled / total
            result[k] = mixed / mixed.norm()
    return result


def update_error(anchors, prototypes, threshold, momentum):
    """Bound on the absolute error of float32 prototypes after ``update`` against
    ``reference_update``, with ``n`` the most anchors any prototype takes (in float64).

    An anchor's weight (1 − m)·s errs by (1 − m) times its similarity's error (a dot product
    of re-normalised anchors); a weight moves the mix ``m_k·p + (1 − m_k)·c`` by at most twice
    the largest distance of unit vectors (2); ``m_k``'s log1p and exp round once per anchor.
    The mix has a norm ≥ ``m_k ≥ mⁿ`` (similarities ≥ 0 keep ``c`` on ``p``'s side), and
    normalising it doubles its relative error.
    """
    similarity, nearest = (F.normalize(anchors.double()) @ prototypes.double().T).max(dim=1)
    n = int(torch.bincount(nearest[similarity >= threshold]).max())
    dim = anchors.shape[1]
    weights = 4 * (1 - momentum) * n * (dot_error(dim) + normalize_error(dim))
    mix = weights + n * TRANSCENDENTAL + 4 * EPS32
    return 2 * mix / momentum**n + normalize_error(dim)


def test_update_follows_its_formula_and_keeps_unit_norm():
    torch.manual_seed(0)
    bank = PrototypeBank(5, 8, threshold=0.3, momentum=0.9)
    bank.set_prototypes(F.normalize(torch.randn(5, 8)))
    near = bank.prototypes[torch.tensor([0, 0, 1, 3, 3, 3])] + 0.4 * torch.randn(6, 8)
    anchors = torch.cat([F.normalize(near), F.normalize(torch.randn(4, 8))])
    before = bank.prototypes.clone()
    assigned = set(bank.assign(anchors).tolist()) - {-1}
    bank.update(anchors)
    expected = reference_update(before, anchors, 0.3, 0.9)
    error = update_error(anchors, before, 0.3, 0.9)
    torch.testing.assert_close(bank.prototypes.double(), expected, rtol=0, atol=error)
    unit = torch.ones(5)
    torch.testing.assert_close(
        bank.prototypes.norm(dim=1), unit, rtol=0, atol=2 * normalize_error(8)
    )
    assert {0, 1, 3} <= assigned and len(assigned) < 5
    for k in range(5):  # moved iff some anchor was assigned to it
        assert torch.equal(bank.prototypes[k], before[k]) == (k not in assigned)


def test_one_anchor_is_the_papers_momentum_step():
    bank = PrototypeBank(2, 2, threshold=0.0, momentum=0.8)
    bank.set_prototypes(torch.eye(2))
    z = F.normalize(torch.tensor([[3.0, 1.0]]))
    bank.update(z)
    s = float(z[0, 0])  # similarity to p_0
    m_z = 1 - 0.2 * s
    z64 = z[0].double()
    expected = F.normalize(
        m_z * torch.tensor([1.0, 0.0], dtype=torch.float64) + (1 - m_z) * z64, dim=0
    )
    error = update_error(z, torch.eye(2), 0.0, 0.8)
    torch.testing.assert_close(bank.prototypes[0].double(), expected, rtol=0, atol=error)
    assert torch.equal(bank.prototypes[1], torch.tensor([0.0, 1.0]))


def test_update_is_independent_of_anchor_order():
    points, _, _ = clusters(num=3, per=10, noise=0.3)
    bank = PrototypeBank(3, 16, threshold=0.2)
    bank.init_from(points[:15])
    other = PrototypeBank(3, 16, threshold=0.2)
    other.load_state_dict(bank.state_dict())
    bank.update(points[15:])
    other.update(points[15:].flip(0))
    # Only the three sums over the n = 15 anchors change order (n roundings each, of weights
    # summing to at most n·(1 − m)); the rest is the same elementwise float32 arithmetic.
    # Updating anchor by anchor instead would move the prototypes by 5e-5 when reversed.
    n, momentum = 15, 0.99
    error = 2 * 4 * n * EPS32 * (1 - momentum) * n / momentum**n
    torch.testing.assert_close(bank.prototypes, other.prototypes, rtol=0, atol=error)
    assert not torch.equal(bank.prototypes, PrototypeBank(3, 16).prototypes)


def test_initialised_flag_follows_a_loaded_state_dict():
    points, _, _ = clusters(num=3, per=10)
    bank, fresh = PrototypeBank(3, 16), PrototypeBank(3, 16)
    bank.init_from(points)
    restored = PrototypeBank(3, 16)
    restored.load_state_dict(bank.state_dict())
    assert restored.is_initialized and torch.equal(restored.assign(points), bank.assign(points))
    restored.load_state_dict(fresh.state_dict())
    assert not restored.is_initialized and (restored.assign(points) == -1).all()


def test_count_in_use_counts_distinct_assigned_prototypes():
    bank = PrototypeBank(5, 2)
    count = bank.count_in_use(torch.tensor([3, -1, 3, 0]), torch.tensor([-1, 0, 4]))
    assert count.dtype == torch.long and count.item() == 3  # prototypes 0, 3 and 4
    assert bank.count_in_use(torch.full((4,), -1)).item() == 0


def test_update_before_init_changes_nothing():
    bank = PrototypeBank(3, 4)
    bank.update(torch.randn(5, 4))
    assert torch.equal(bank.prototypes, torch.zeros(3, 4)) and not bank.is_initialized


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_prototypes": 0}, r"num_prototypes=0; valid: an integer >= 1"),
        ({"threshold": 1.5}, r"threshold=1.5; valid: a cosine similarity in \[-1, 1\]"),
        ({"threshold": -1.01}, r"threshold=-1.01; valid"),
        ({"momentum": 1.0}, r"momentum=1.0; valid: 0 <= momentum < 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PrototypeBank(**{"num_prototypes": 4, "dim": 8, **kwargs})


def test_too_few_embeddings_to_cluster_are_refused():
    with pytest.raises(ConfigError, match="num_prototypes=4 but only 3 embeddings"):
        PrototypeBank(4, 8).init_from(torch.randn(3, 8))


def test_kmeans_with_duplicate_points_still_gives_k_unit_prototypes():
    points = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    bank = PrototypeBank(3, 2)
    bank.init_from(points)
    torch.testing.assert_close(
        bank.prototypes.norm(dim=1), torch.ones(3), rtol=0, atol=2 * normalize_error(2)
    )
    assignment = bank.assign(points)
    assert len(set(assignment[:5].tolist())) == 1 and len(set(assignment[5:].tolist())) == 1
    assert assignment[0] != assignment[5]
    torch.testing.assert_close(bank.prototypes[assignment[0]], points[0])
    torch.testing.assert_close(bank.prototypes[assignment[5]], points[5])


def near_ties(prototypes, seed):
    """Unit embeddings halfway between two prototypes, nudged by ~1e-3 towards either: their
    two best similarities differ by less than bf16 resolves near 0.7."""
    generator = torch.Generator().manual_seed(seed)
    pairs = torch.randint(len(prototypes), (64, 2), generator=generator)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    nudge = 2e-3 * torch.rand(len(pairs), 1, generator=generator)
    mixed = (0.5 + nudge) * prototypes[pairs[:, 0]] + (0.5 - nudge) * prototypes[pairs[:, 1]]
    return F.normalize(mixed + 1e-4 * torch.randn(mixed.shape, generator=generator), dim=1)


def test_assignment_and_update_are_float32_exact_under_bf16_autocast():
    bank = PrototypeBank(8, 32, threshold=0.3, momentum=0.9)
    bank.set_prototypes(F.normalize(torch.randn(8, 32, generator=torch.Generator().manual_seed(0))))
    embeddings = near_ties(bank.prototypes, seed=1)
    similarities64 = embeddings.double() @ bank.prototypes.double().T
    similarity64, assignment64 = similarities64.max(dim=1)
    # The ties are near, but float32 still decides them: every two best similarities (and
    # the threshold) lie more than two float32 errors apart.
    best_two = similarities64.topk(2, dim=1).values
    assert (best_two[:, 0] - best_two[:, 1] > 2 * dot_error(32)).all()
    assert ((similarity64 - 0.3).abs() > 2 * dot_error(32)).all()
    before = bank.prototypes.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        similarity, assignment = bank.similarities(embeddings)
        assigned = bank.assign(embeddings)
    # bf16 similarities are ~2e-3 off and tie or swap the two best prototypes.
    torch.testing.assert_close(similarity.double(), similarity64, rtol=0, atol=dot_error(32))
    assert torch.equal(assignment, assignment64)
    assert torch.equal(assigned, torch.where(similarity64 >= 0.3, assignment64, -1))
    assert similarity.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bank.update(embeddings)
    expected = reference_update(before, embeddings, 0.3, 0.9)
    error = update_error(embeddings, before, 0.3, 0.9)
    torch.testing.assert_close(bank.prototypes.double(), expected, rtol=0, atol=error)


def test_kmeans_under_bf16_autocast_is_a_float64_lloyd_fixed_point():
    points, _, _ = clusters(num=6, per=1000, dim=8, noise=0.5, seed=2)  # overlapping
    bank = PrototypeBank(6, 8, kmeans_iterations=100, kmeans_restarts=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bank.init_from(points)
    # The ~20 points within bf16's resolution of a tie, assigned by a bf16 matmul, would
    # move the prototypes by ~1e-3; float32 k-means gives what it gives outside autocast.
    plain = PrototypeBank(6, 8, kmeans_iterations=100, kmeans_restarts=1)
    plain.init_from(points)
    assert torch.equal(bank.prototypes, plain.prototypes)
    # Converged: each prototype is the normalised mean of the points nearest to it in
    # float64, where no point is within two float32 errors of a tie.
    points64, prototypes64 = points.double(), bank.prototypes.double()
    similarities = points64 @ prototypes64.T
    best_two = similarities.topk(2, dim=1).values
    assert (best_two[:, 0] - best_two[:, 1] > 2 * dot_error(8)).all()
    nearest = similarities.argmax(dim=1)
    sums = torch.zeros_like(prototypes64).index_add_(0, nearest, points64)
    # A sum of n unit vectors errs by n roundings of Σ‖x‖₁ ≤ n·√8 (whatever the order),
    # which normalising turns into twice that over the sum's norm.
    n, norms = torch.bincount(nearest)[:, None], sums.norm(dim=1, keepdim=True)
    error = n * EPS32 * n * 8**0.5 / norms + normalize_error(8)
    assert_within(prototypes64, F.normalize(sums, dim=1), error)


def test_greedy_kmeans_plus_plus_recovers_six_separated_clusters_for_every_seed():
    # 6 random directions (cosines up to 0.35), every point at least 0.36 more similar to
    # its own centre than to any other. Plain k-means++ put two seeds in one cluster and
    # none in another, in all 3 restarts, for 3 of these 30 seeds.
    generator = torch.Generator().manual_seed(15)
    centres = F.normalize(torch.randn(6, 32, generator=generator), dim=1)
    labels = torch.arange(6).repeat_interleave(60)
    points = F.normalize(centres[labels] + 0.1 * torch.randn(360, 32, generator=generator))
    for seed in range(30):
        bank = PrototypeBank(6, 32, threshold=-1.0, seed=seed)
        bank.init_from(points)
        assignment = bank.assign(points)
        match = assignment[::60]  # the prototype of each cluster's first point
        assert sorted(match.tolist()) == list(range(6)), f"seed {seed}"
        assert torch.equal(assignment, match[labels]), f"seed {seed}"


def test_a_float64_bank_assigns_and_updates_in_float64():
    # Under 64-true precision the bank and the embeddings are float64: they once met in a
    # float32 product and failed ("expected m1 and m2 to have the same dtype").
    torch.manual_seed(2)
    bank = PrototypeBank(5, 8, threshold=0.3, momentum=0.9).double()
    bank.set_prototypes(F.normalize(torch.randn(5, 8, dtype=torch.float64)))
    near = bank.prototypes[torch.tensor([0, 0, 1, 3])] + 0.4 * torch.randn(4, 8).double()
    anchors = F.normalize(near)
    before = bank.prototypes.clone()
    assert (bank.assign(anchors) >= 0).all()
    bank.update(anchors)
    assert bank.prototypes.dtype == torch.float64
    expected = reference_update(before, anchors, 0.3, 0.9)
    torch.testing.assert_close(bank.prototypes, expected, rtol=0, atol=1e-14)
