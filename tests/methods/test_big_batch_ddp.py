"""One optimiser step on 2 and 4 CPU DDP ranks equals one process's step on the whole batch.

For every method, ranks that each read B/world rows of a global batch of B (rank 0's rows
first) must leave the state one process leaves after a step on the B rows: the same
parameters (so DDP's mean of the gradients is the big batch's gradient, with no
world-size factor off), and the same queues (MoCo, ReKD), memory banks and ``Z`` (CRD),
DINO center and EMA teacher, ReKD prototypes. Every rank holds exactly the same state.

The networks are small ViTs with MLP heads (ddp_big_batch_worker.py): no batch norm, so a
sample's outputs do not depend on the samples it is batched with, and the comparison tests
the methods' losses and state updates, not batch statistics. The runs differ only in how
the batch is split, hence in the order of float64 sums (the worker runs in 64-true
precision, losses and state updates included): NETWORK64_TOL bounds that, and any coupling
of samples left per rank (RKD's relations computed on a rank's rows only, a gradient off by
the world size) moves the updates by far more (checked: the updates are 1e4 times the
tolerance).

The single-process reference runs once per method, in this process; the ranks run every
method one after the other in one launch per world size (starting the processes is most
of the cost).
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from tests_support import NETWORK64_TOL, launch_ddp

from distill import backbones
from distill.methods import Supervised

WORKER = Path(__file__).with_name("ddp_big_batch_worker.py")
GLOBAL_BATCH = 8
METHODS = ["supervised", "kd", "rkd", "crd", "dino", "moco", "rekd"]

# What one step must change besides the student's weights, by method (state entry prefixes).
MOVED_STATE = {
    "supervised": [],
    "kd": [],
    "rkd": [],
    "crd": ["crd.student_memory.rows", "crd.teacher_memory.rows", "crd.normalizers"],
    "dino": ["dino_loss.center", "teacher.head.layers.0.weight"],
    "moco": ["student.queue.keys", "student.key_backbone.vit.conv_proj.weight"],
    "rekd": [
        "student.queue.keys",
        "teacher.queue.keys",
        "teacher.queue.labels",
        "prototypes.prototypes",
        "teacher.key_head.layers.0.weight",
    ],  # fmt: skip
}


def load_worker():
    spec = importlib.util.spec_from_file_location("ddp_big_batch_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker


@pytest.fixture(scope="module")
def worker():
    """The worker module, its micro ViT registered for this file's tests only."""
    worker = load_worker()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(backbones._REGISTRY, worker.VIT_NAME, worker.vit_micro)
        yield worker


@pytest.fixture(scope="module")
def runs(tmp_path_factory, worker):
    """The folder of the runs' results, with the teachers' checkpoint (a random ViT)."""
    folder = tmp_path_factory.mktemp("big_batch")
    torch.manual_seed(4)
    vit = Supervised(backbone=worker.VIT_NAME, backbone_kwargs=worker.VIT)
    torch.save({"state_dict": vit.state_dict()}, folder / "teacher.ckpt")
    return folder


@pytest.fixture(scope="module")
def single_process(runs, worker):
    """The one-process result of a method, computed once, in this process."""
    results = {}

    def result(method: str) -> dict:
        if method not in results:
            worker.one_step(str(runs), method, GLOBAL_BATCH, str(runs / "teacher.ckpt"))
            results[method] = torch.load(runs / f"{method}_rank0_of1.pt")
        return results[method]

    return result


@pytest.fixture(scope="module")
def ranks(runs):
    """Every rank's result of a method on ``world`` ranks; one launch per world size."""
    launched = set()

    def results(method: str, world: int) -> list[dict]:
        if world not in launched:
            launched.add(world)
            launch_ddp(WORKER, [runs, GLOBAL_BATCH, runs / "teacher.ckpt", *METHODS], world)
        return [torch.load(runs / f"{method}_rank{r}_of{world}.pt") for r in range(world)]

    return results


def assert_float64_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Equal within NETWORK64_TOL (floating state) or exactly (pointers, labels, flags)."""
    if not expected.is_floating_point():
        assert torch.equal(actual, expected), name
        return
    tol = NETWORK64_TOL
    message = lambda detail: f"{name}: {detail}"  # noqa: E731
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=message)


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.multiprocess)])
@pytest.mark.parametrize("method", METHODS)
def test_one_step_on_ranks_equals_one_step_on_the_whole_batch(ranks, single_process, method, world):
    ranks = ranks(method, world)
    single = single_process(method)
    assert single["world"] == 1 and all(rank["world"] == world for rank in ranks)
    after = ranks[0]["after"]
    for rank in ranks[1:]:  # every rank holds the same state, to the bit
        assert rank["after"].keys() == after.keys()
        for name, value in rank["after"].items():
            assert torch.equal(value, after[name]), name
    # The ranks started where the single process did, and ended where it did.
    assert after.keys() == single["after"].keys()
    for name, value in single["before"].items():
        assert torch.equal(ranks[0]["before"][name], value), name
    for name, value in single["after"].items():
        assert_float64_close(after[name], value, name)
    # The step did move the weights, by far more than the tolerance, and the method's state.
    before = single["before"]
    updates = [
        (value - before[name]).abs().max()
        for name, value in single["after"].items()
        if name.startswith("student.") and value.is_floating_point()
    ]
    assert max(updates) > 1e4 * NETWORK64_TOL
    for name in MOVED_STATE[method]:
        assert not torch.equal(single["after"][name], before[name]), name
