"""One optimiser step on 2 and 4 CPU DDP ranks equals one process's step on the whole batch.

For Supervised, KD, RKD, CRD, DINO, MoCo, ReKD, the batch-relational SP, PKT and DIST, and
DKD, AT, VID, SEED, DisCo and symmetric MoCo and ReKD (FitNets' connectors have batch
norm), ranks that each read B/world rows of a global batch of B (rank 0's rows first)
must leave the state one process leaves after a step on the B rows: the same parameters
(so DDP's mean of the gradients is the big batch's gradient, with no world-size factor
off), and the same queues in the same slots (MoCo, ReKD, SEED, DisCo), memory banks and
``Z`` (CRD), DINO center and EMA teacher, ReKD prototypes. Every rank holds exactly the
same state.

The networks are micro ViTs with MLP heads (ddp_big_batch_worker.py): no batch norm, so a
sample's outputs do not depend on the samples it is batched with, and the comparison tests
the methods' losses and state updates, not batch statistics. The runs differ only in how
the batch is split, hence in the order of float64 sums (the worker runs in 64-true
precision, losses and state updates included): NETWORK64_TOL bounds that, and any coupling
of samples left per rank (relations of a rank's rows only, as RKD, SP, PKT and DIST had; a
gradient off by the world size; keys queued rank by rank instead of view by view, as SEED
and symmetric MoCo had) moves the state by far more (checked: the largest update is 1e4
times the tolerance).

The single-process reference runs once per method, in this process; the ranks run every
method one after the other in one launch per world size (starting the processes is most
of the cost), so there is one test per world size, which names every method that fails.
"""

from pathlib import Path

import pytest
import torch
from tests_support import NETWORK64_TOL, launch_ddp, load_worker

from distill import backbones
from distill.methods import Supervised

WORKER = Path(__file__).with_name("ddp_big_batch_worker.py")
GLOBAL_BATCH = 8
METHODS = ["supervised", "kd", "rkd", "crd", "dino", "moco", "rekd", "sp", "pkt", "dist"]
METHODS += ["dkd", "at", "vid", "seed", "disco", "moco_symmetric", "rekd_symmetric"]

# What one step must change besides the student's weights, by method (state entries).
QUEUE_STATE = ["student.queue.keys", "student.key_backbone.vit.conv_proj.weight"]
REKD_STATE = [
    *QUEUE_STATE, "teacher.queue.keys", "teacher.queue.labels", "prototypes.prototypes",
    "teacher.key_head.layers.0.weight",
]  # fmt: skip
MOVED_STATE = {
    **{method: [] for method in ("supervised", "kd", "rkd", "sp", "pkt", "dist", "dkd", "at")},
    "vid": ["vid.0.regressor.0.weight", "vid.0.raw_variance"],
    "crd": ["crd.student_memory.rows", "crd.teacher_memory.rows", "crd.normalizers"],
    "dino": ["dino_loss.center", "teacher.head.layers.0.weight"],
    "seed": ["queue.keys"],
    **{method: QUEUE_STATE for method in ("moco", "moco_symmetric", "disco")},
    **{method: REKD_STATE for method in ("rekd", "rekd_symmetric")},
}


@pytest.fixture(scope="module")
def worker():
    """The worker module, its micro ViT registered for this file's tests only."""
    worker = load_worker(WORKER)
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


def single_process(worker, runs, method: str) -> dict:
    """The one-process result of ``method``, computed in this process (once in a module)."""
    result = runs / f"{method}_rank0_of1.pt"
    if not result.exists():
        worker.one_step(str(runs), method, GLOBAL_BATCH, str(runs / "teacher.ckpt"))
    return torch.load(result)


def check_step(method: str, ranks: list[dict], single: dict) -> None:
    """The ranks' state is the same on every rank, and the single process's, after a step
    that moved the weights by far more than the tolerance, and the method's state."""
    assert single["world"] == 1 and all(rank["world"] == len(ranks) for rank in ranks)
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
    before = single["before"]
    updates = [
        (value - before[name]).abs().max()
        for name, value in single["after"].items()
        if name.startswith("student.") and value.is_floating_point()
    ]
    assert max(updates) > 1e4 * NETWORK64_TOL
    for name in MOVED_STATE[method]:
        assert not torch.equal(single["after"][name], before[name]), name


def assert_float64_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Equal within NETWORK64_TOL (floating state) or exactly (pointers, labels, flags)."""
    if not expected.is_floating_point():
        assert torch.equal(actual, expected), name
        return
    tol = NETWORK64_TOL
    message = lambda detail: f"{name}: {detail}"  # noqa: E731
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=message)


# Float64 sums in another order on each kernel choice: the 2-rank runs repeat under each
# (numerics); 4 ranks are for the multi-process step.
WORLDS = [
    pytest.param(2, marks=pytest.mark.numerics),
    pytest.param(4, marks=pytest.mark.multiprocess),
]


# One test per world size, every method in it: one launch of the ranks runs them all, and
# pytest-xdist cannot split one launch's methods over workers that would each start it.
@pytest.mark.parametrize("world", WORLDS)
def test_one_step_on_ranks_equals_one_step_on_the_whole_batch(worker, runs, world):
    launch_ddp(WORKER, [runs, GLOBAL_BATCH, runs / "teacher.ckpt", *METHODS], world)
    failures = {}
    for method in METHODS:
        ranks = [torch.load(runs / f"{method}_rank{r}_of{world}.pt") for r in range(world)]
        try:
            check_step(method, ranks, single_process(worker, runs, method))
        except AssertionError as error:
            failures[method] = str(error).splitlines()[:4]
    assert not failures, "\n".join(f"{method}: {lines}" for method, lines in failures.items())
