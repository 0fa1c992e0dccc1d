import math

import pytest
import torch
import torch.nn.functional as F
from tests_support import EPS32, log_softmax_error, score_error

from distill.losses import info_nce, relation_contrastive_loss

pytestmark = pytest.mark.numerics


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def reference_relation(query, key, queue, mask, tau):
    """Float64, sample by sample: -(1/|P|) Σ_{c ∈ P} log(exp(q·c/τ) / Σ_all exp(q·x/τ))."""
    total = 0.0
    for i in range(len(query)):
        q = query[i].double()
        candidates = [key[i].double()] + [u.double() for u in queue]
        scores = [math.exp(float(q @ c) / tau) for c in candidates]
        denominator = sum(scores)
        positives = [0] + [1 + j for j in range(len(queue)) if mask[i, j]]
        total += -sum(math.log(scores[p] / denominator) for p in positives) / len(positives)
    return total / len(query)


def loss_error(dim, temperature, num_candidates, batch):
    """Bound on the absolute error of a float32 contrastive loss of unit vectors against
    ``reference_relation``: its log-softmax entries' (logits up to 1/τ), then the mean of
    values up to ``|log p| ≤ 2/τ + log C`` over the positives and over the batch."""
    entries = log_softmax_error(score_error(dim, temperature), 1 / temperature, num_candidates)
    max_log_prob = 2 / temperature + math.log(num_candidates)
    return entries + (num_candidates + batch) * EPS32 * max_log_prob


def test_info_nce_matches_the_moco_formula():
    query, key, queue = unit(6, 8, seed=0), unit(6, 8, seed=1), unit(20, 8, seed=2)
    expected = reference_relation(query, key, queue, torch.zeros(6, 20, dtype=torch.bool), 0.2)
    error = loss_error(8, 0.2, 21, 6)
    assert info_nce(query, key, queue, 0.2).item() == pytest.approx(expected, abs=error)


def test_relation_loss_matches_the_supervised_contrastive_formula():
    query, key, queue = unit(6, 8, seed=3), unit(6, 8, seed=4), unit(20, 8, seed=5)
    mask = torch.rand(6, 20, generator=torch.Generator().manual_seed(6)) < 0.3
    mask[0] = False  # an anchor with no mined positive: its own key only
    mask[1] = True  # every candidate positive
    loss = relation_contrastive_loss(query, key, queue, mask, 0.1)
    expected = reference_relation(query, key, queue, mask, 0.1)
    assert loss.item() == pytest.approx(expected, abs=loss_error(8, 0.1, 21, 6))


def test_relation_loss_without_mined_positives_is_info_nce():
    query, key, queue = unit(4, 8, seed=7), unit(4, 8, seed=8), unit(10, 8, seed=9)
    empty = torch.zeros(4, 10, dtype=torch.bool)
    torch.testing.assert_close(
        relation_contrastive_loss(query, key, queue, empty, 0.2), info_nce(query, key, queue, 0.2)
    )


def test_half_precision_inputs_are_scored_in_float32():
    query, key, queue = unit(4, 8, seed=10), unit(4, 8, seed=11), unit(10, 8, seed=12)
    loss = info_nce(query.bfloat16(), key.bfloat16(), queue.bfloat16(), 0.2)
    assert loss.dtype == torch.float32
    expected = info_nce(query.bfloat16().float(), key.bfloat16().float(), queue.bfloat16().float())
    torch.testing.assert_close(loss, expected)


def test_losses_are_float32_exact_under_bf16_autocast():
    query, key, queue = unit(6, 128, seed=13), unit(6, 128, seed=14), unit(20, 128, seed=15)
    mask = torch.rand(6, 20, generator=torch.Generator().manual_seed(16)) < 0.3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        instance = info_nce(query, key, queue, 0.1)
        relation = relation_contrastive_loss(query, key, queue, mask, 0.1)
    # bf16 logits put the losses about 1e-4 off, within float32's worst case in 128
    # dimensions: what tells them apart is that autocast changes nothing, to the bit.
    assert torch.equal(instance, info_nce(query, key, queue, 0.1))
    assert torch.equal(relation, relation_contrastive_loss(query, key, queue, mask, 0.1))
    no_mined, error = torch.zeros_like(mask), loss_error(128, 0.1, 21, 6)
    assert instance.item() == pytest.approx(
        reference_relation(query, key, queue, no_mined, 0.1), abs=error
    )
    assert relation.item() == pytest.approx(
        reference_relation(query, key, queue, mask, 0.1), abs=error
    )
    assert instance.dtype == relation.dtype == torch.float32


def test_float64_inputs_are_scored_in_float64():
    # 64-true precision runs stay float64 through the loss (distill.precision's islands
    # only raise half precision): float64's rounding, 1e-15 here, not float32's 1e-6.
    query, key = unit(4, 8, seed=17).double(), unit(4, 8, seed=18).double()
    queue = unit(10, 8, seed=19).double()
    mask = torch.rand(4, 10, generator=torch.Generator().manual_seed(20)) < 0.3
    instance = info_nce(query, key, queue, 0.2)
    relation = relation_contrastive_loss(query, key, queue, mask, 0.2)
    assert instance.dtype == relation.dtype == torch.float64
    no_mined = torch.zeros_like(mask)
    expected = reference_relation(query, key, queue, no_mined, 0.2)
    assert instance.item() == pytest.approx(expected, rel=1e-12)
    expected = reference_relation(query, key, queue, mask, 0.2)
    assert relation.item() == pytest.approx(expected, rel=1e-12)
