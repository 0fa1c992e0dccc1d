"""A fit interrupted mid-epoch on some number of CPU DDP ranks resumes on another: the epoch
goes on with every sample it had not trained, once; the state buffers (queues, memory banks,
DINO's centre, ReKD's prototypes, EMA teachers) carry on from the checkpoint on every rank;
the schedule continues from the checkpoint's optimiser step."""

from pathlib import Path

import pytest
import torch
from tests_support import ColourDataModule, launch_ddp, load_worker

from distill.data.sampling import SeededSampler
from distill.methods import Supervised

WORKER = Path(__file__).with_name("topology_worker.py")
SAMPLES = 40  # ColourDataModule(per_class=8)
pytestmark = pytest.mark.multiprocess


def fit(method, out_dir, phase, world, batch_size, stop_after=0, ckpt_path=None) -> list[dict]:
    """The worker's fit on ``world`` ranks (one: in this process); what each rank saved."""
    args = [method, out_dir, phase, batch_size, stop_after, *([ckpt_path] if ckpt_path else [])]
    if world > 1:
        launch_ddp(WORKER, args, world=world)
    else:
        worker = load_worker(WORKER)
        if ckpt_path is None:
            worker.main(*map(str, args))
        else:  # every resume here is of a 4-rank checkpoint, and the report names the change
            change = r"world size \(trainer.devices x trainer.num_nodes\): 4 -> 1"
            with pytest.warns(UserWarning, match=change):
                worker.main(*map(str, args))
    return [torch.load(Path(out_dir) / f"{phase}_rank{r}.pt") for r in range(world)]


def trained(ranks: list[dict]) -> list[int]:
    return [index for rank in ranks for index in rank["indices"]]


def epoch_order() -> list[int]:
    """The epoch's permutation of the samples (seed 0, epoch 0), the same at any world size."""
    data = ColourDataModule(per_class=8)
    data.setup("fit")
    return [index for _, index in SeededSampler(data.train_set, 1, 0, seed=0)]


def check_resumed(first: list[dict], resumed: list[dict], checkpoint: dict) -> None:
    """What holds for every method resumed on another world size."""
    # The epoch's samples: each exactly once over the interrupted part and the resumed one.
    assert sorted(trained(first) + trained(resumed)) == list(range(SAMPLES))
    # The checkpoint's whole state is loaded on every rank, whatever the world size.
    for rank in resumed:
        for name, value in checkpoint["state_dict"].items():
            assert torch.equal(rank["start"][name], value), name
    # The schedule goes on from the checkpoint's optimiser step and lr, counting the epoch's
    # steps of this world size (batches of 2); every resumed batch is one step.
    world = resumed[0]["world"]
    for rank in resumed:
        assert rank["start_step"] == checkpoint["global_step"]
        lr = checkpoint["optimizer_states"][0]["param_groups"][0]["lr"]
        assert rank["start_lr"] == lr
        assert rank["end_step"] - rank["start_step"] == len(rank["indices"]) // 2
        assert rank["end_lr"] == pytest.approx(rank["scheduled_lr"], rel=1e-12)
        assert rank["total_steps"] == SAMPLES // (2 * world)


@pytest.fixture
def teacher_checkpoint(tmp_path):
    torch.manual_seed(3)
    torch.save({"state_dict": Supervised(backbone="resnet14", num_classes=5).state_dict()},
               tmp_path / "teacher.ckpt")  # fmt: skip


@pytest.mark.parametrize("method", ["moco", "dino", "crd", "rekd"])
def test_state_and_data_order_carry_over_from_four_ranks_to_two_and_one(
    tmp_path, teacher_checkpoint, method
):
    first = fit(method, tmp_path, "first", world=4, batch_size=2, stop_after=1)
    assert len(trained(first)) == 8
    ckpt_path = tmp_path / "first" / "last.ckpt"
    checkpoint = torch.load(ckpt_path, weights_only=False)
    saved = checkpoint["state_dict"]
    for world in (2, 1):
        resumed = fit(method, tmp_path, f"on{world}", world, batch_size=2, ckpt_path=ckpt_path)
        check_resumed(first, resumed, checkpoint)
        end = resumed[0]["end"]
        for rank in resumed[1:]:  # the state stays the same on every rank
            for name, value in end.items():
                if "running_" not in name and "num_batches" not in name:
                    assert torch.equal(rank["end"][name], value), name
        later = set(trained(resumed))
        if method == "crd":  # the bank rows of the samples trained after the resume moved
            for bank in ("crd.student_memory.rows", "crd.teacher_memory.rows"):
                moved = (end[bank] != saved[bank]).any(dim=1).nonzero().flatten().tolist()
                assert sorted(moved) == sorted(later), bank
        if method in ("moco", "rekd"):  # the queue went on from its pointer
            for queue in ["student.queue"] + (["teacher.queue"] if method == "rekd" else []):
                pointer, size = int(saved[f"{queue}.pointer"]), len(saved[f"{queue}.keys"])
                keys_per_sample = pointer // 8  # the first part's keys from an empty queue
                expected = (pointer + keys_per_sample * len(later)) % size
                assert int(end[f"{queue}.pointer"]) == expected
                written = {(pointer + i) % size for i in range(keys_per_sample * len(later))}
                for row in range(size):
                    same = torch.equal(end[f"{queue}.keys"][row], saved[f"{queue}.keys"][row])
                    assert same == (row not in written), (queue, row)
        if method == "rekd":
            assert bool(end["prototypes.initialized"])
            assert not torch.equal(end["prototypes.prototypes"], saved["prototypes.prototypes"])
        if method == "dino":
            assert not torch.equal(end["dino_loss.center"], saved["dino_loss.center"])
            # The lr scaled by the first run's 8 samples per step stays so (the message says).
            assert [rank["base_lr"] for rank in resumed] == [0.1 * 8 / 256] * world
        teacher = [n for n in saved if n.startswith(("teacher.", "student.key_"))]
        if method in ("moco", "dino", "rekd"):  # the EMA teacher (MoCo's key encoder) moved on
            weights = [n for n in teacher if n.endswith("weight")]
            assert weights and any(not torch.equal(end[n], saved[n]) for n in weights)


def test_supervised_data_order_from_four_ranks_to_two_with_the_same_global_batch_and_one(
    tmp_path,
):
    first = fit("supervised", tmp_path, "first", world=4, batch_size=2, stop_after=1)
    ckpt_path = tmp_path / "first" / "last.ckpt"
    checkpoint = torch.load(ckpt_path, weights_only=False)
    # Two ranks of batch 4: the steps of the uninterrupted run, each with its 8 samples.
    two = fit("supervised", tmp_path, "on2", 2, batch_size=4, ckpt_path=ckpt_path)
    assert sorted(trained(first) + trained(two)) == list(range(SAMPLES))
    order = epoch_order()
    assert set(trained(first)) == set(order[:8])
    steps = [
        set(two[0]["indices"][s : s + 4]) | set(two[1]["indices"][s : s + 4]) for s in (0, 4, 8, 12)
    ]
    assert steps == [set(order[8 * s : 8 * s + 8]) for s in range(1, 5)]
    assert [r["end_step"] for r in two] == [5, 5] and two[0]["total_steps"] == 5
    one = fit("supervised", tmp_path, "on1", 1, batch_size=2, ckpt_path=ckpt_path)
    check_resumed(first, one, checkpoint)
    assert one[0]["indices"] == order[8:]


@pytest.mark.parametrize("world", [1, 2])
def test_supervised_data_order_from_fewer_ranks_to_four(tmp_path, world):
    first = fit("supervised", tmp_path, "first", world, batch_size=2, stop_after=4 // world)
    ckpt_path = tmp_path / "first" / "last.ckpt"
    checkpoint = torch.load(ckpt_path, weights_only=False)
    four = fit("supervised", tmp_path, "on4", 4, batch_size=2, ckpt_path=ckpt_path)
    check_resumed(first, four, checkpoint)
    order = epoch_order()
    for rank, saved in enumerate(four):  # every 4th sample of the rest of the order
        assert saved["indices"] == order[8 + rank :: 4]
