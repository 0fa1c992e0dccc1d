import math

import pytest
import torch
from torch import nn

from distill.losses.crd import CRDLoss
from distill.modules.finite import (
    STATE,
    FiniteWatch,
    all_finite,
    floating_state,
    forward_buffers,
    nonfinite_names,
)
from distill.modules.queue import KeyQueue

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_finite_finds_one_bad_element_in_any_tensor(bad, dtype):
    tensors = [torch.zeros(5, dtype=dtype), torch.ones(3, 4, dtype=dtype)]
    assert bool(all_finite(tensors))
    tensors[1][2, 1] = bad
    assert not bool(all_finite(tensors))


def test_all_finite_does_not_overflow_on_large_finite_values():
    # A sum or a 2-norm of these overflows to inf; the values themselves are finite.
    large = [torch.full((1000,), 3.0e38), torch.full((100,), -65504.0, dtype=torch.float16)]
    assert bool(all_finite(large))


def test_all_finite_skips_integers_and_empty_tensors():
    assert bool(all_finite([torch.arange(3), torch.empty(0), torch.empty(0, 4)]))
    assert bool(all_finite([]))


def test_nonfinite_names_name_exactly_the_bad_tensors():
    named = [
        ("a", torch.zeros(4)), ("b", torch.tensor([1.0, NAN])), ("empty", torch.empty(0)),
        ("count", torch.tensor(3)), ("c", torch.tensor([[INF]], dtype=torch.float16)),
    ]  # fmt: skip
    assert nonfinite_names(named) == ["b", "c"]


def test_floating_state_holds_parameters_and_floating_buffers():
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    assert [name for name, _ in floating_state(net)] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
    ]  # fmt: skip


def test_forward_buffers_are_running_statistics_and_declared_ones_not_queues_or_banks():
    net = nn.Module()
    net.norm = nn.BatchNorm2d(3)
    net.untracked = nn.BatchNorm1d(3, track_running_stats=False)
    net.queue = KeyQueue(8, 4)
    net.crd = CRDLoss(5, 6, num_rows=10, embed_dim=4, num_negatives=3, sampler="uniform")
    assert sorted(forward_buffers(net)) == [
        "crd.normalizers", "norm.num_batches_tracked", "norm.running_mean", "norm.running_var",
    ]  # fmt: skip
    assert forward_buffers(net)["norm.running_mean"] is net.norm.running_mean


def test_watch_keeps_the_first_bad_step_of_each_term_and_of_the_state():
    watch = FiniteWatch()
    weights = [torch.ones(3), torch.zeros(2)]
    for step in range(6):
        watch.observe("train/loss", torch.tensor(NAN if step >= 2 else 1.0), step)
        watch.observe("train/kd", torch.tensor(INF if step == 4 else 1.0), step)
        if step == 3:
            weights[1][0] = INF
        watch.observe_state(weights, step)
    assert watch.bad_terms() == [("train/loss", 2), (STATE, 3), ("train/kd", 4)]
    assert bool(watch.state_bad()) and bool(watch.any_bad())
    watch.forget_terms()
    assert watch.bad_terms() == [(STATE, 3)]


def test_pending_reports_terms_since_the_last_call_but_not_the_state():
    watch = FiniteWatch()
    watch.observe_state([torch.tensor([NAN])], 0)
    assert not bool(watch.pending())
    watch.observe("train/loss", torch.tensor([1.0, NAN]), 1)
    assert bool(watch.pending())
    watch.observe("train/loss", torch.tensor(1.0), 2)
    assert not bool(watch.pending())
