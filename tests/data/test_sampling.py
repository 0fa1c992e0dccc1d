import pytest
import torch
from tests_support import ColourDataModule

from distill.data import TwoViews
from distill.data.sampling import SeededSampler, sample_seed


def test_sample_seeds_are_distinct_and_deterministic():
    seeds = {sample_seed(0, epoch, index) for epoch in range(3) for index in range(500)}
    assert len(seeds) == 1500 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(7, 2, 3) == sample_seed(7, 2, 3) != sample_seed(8, 2, 3)


def batches(data, epochs=2):
    """Every training batch of ``epochs`` epochs, with ``set_epoch`` as Lightning calls it."""
    loader = data.train_dataloader()
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out += [(torch.cat(views), indices) for views, _, indices in loader]
    return out


def test_batches_do_not_depend_on_workers_or_their_persistence():
    make = lambda **kw: ColourDataModule(batch_size=8, views=TwoViews(blur_prob=0), **kw)  # noqa: E731
    reference = batches(make(num_workers=0))
    for data in (make(num_workers=2, persistent_workers=True), make(num_workers=1)):
        for (views, indices), (expected, expected_indices) in zip(
            batches(data), reference, strict=True
        ):
            assert torch.equal(indices, expected_indices)
            assert torch.equal(views, expected)
    # Each epoch has its own order and its own augmentations.
    first, second = reference[0], reference[len(reference) // 2]
    assert not torch.equal(first[1], second[1])


def test_sampler_takes_epoch_and_consumed_samples_from_its_position():
    data = ColourDataModule(batch_size=8)
    data.setup("fit")
    plain = SeededSampler(data.train_set, num_replicas=1, rank=0, seed=3)
    plain.set_epoch(1)
    full = list(plain)
    position = [(1, 0)]
    sampler = SeededSampler(data.train_set, 1, 0, seed=3, position=lambda: position[0])
    assert list(sampler) == full
    position[0] = (1, 16)  # a fit resumed after two batches of 8
    assert list(sampler) == full[16:] and len(sampler) == len(full)


def test_ranks_share_the_epoch_order_and_split_it():
    data = ColourDataModule(batch_size=8)
    data.setup("fit")
    ranks = [SeededSampler(data.train_set, num_replicas=2, rank=r, seed=0) for r in (0, 1)]
    items = [list(s) for s in ranks]
    indices = sorted(i for rank in items for _, i in rank)
    assert indices == list(range(len(data.train_set)))
    one = dict(SeededSampler(data.train_set, num_replicas=1, rank=0, seed=0))
    assert all(one[seed] == index for rank in items for seed, index in rank)


def test_a_mid_epoch_position_carries_over_to_another_world_size_with_the_same_global_batch():
    # A position counted in samples over all ranks is the same sample on 1 rank of batch 8 as
    # on 2 ranks of batch 4: each global batch is the uninterrupted one.
    data = ColourDataModule()
    data.setup("fit")
    one = [i for _, i in SeededSampler(data.train_set, 1, 0, seed=5, position=lambda: (2, 3 * 8))]
    two = [
        [i for _, i in SeededSampler(data.train_set, 2, r, seed=5, position=lambda: (2, 3 * 8))]
        for r in (0, 1)
    ]
    assert [i for pair in zip(*two, strict=True) for i in pair] == one


@pytest.mark.parametrize("world, trained", [(4, 8), (4, 6), (2, 8), (1, 8), (3, 17), (4, 0)])
def test_the_rest_of_an_epoch_is_shared_among_any_number_of_ranks(world, trained):
    # 30 samples; ``trained`` of the epoch's order were trained (by any ranks and batches).
    data = ColourDataModule(per_class=6)
    data.setup("fit")
    plain = SeededSampler(data.train_set, 1, 0, seed=5)
    plain.set_epoch(2)
    order = [i for _, i in plain]
    shares = [
        [i for _, i in SeededSampler(data.train_set, world, r, 5, position=lambda: (2, trained))]
        for r in range(world)
    ]
    padding = -(30 - trained) % world
    assert {len(share) for share in shares} == {(30 - trained + padding) // world}
    # Rank-strided as DistributedSampler strides a whole epoch, padded from the order's start.
    strided = [i for row in zip(*shares, strict=True) for i in row]
    assert strided == order[trained:] + order[:padding]
    if trained % world == 0:  # the world that trained it: DistributedSampler's own order
        for rank, share in enumerate(shares):
            sampler = SeededSampler(data.train_set, world, rank, seed=5)
            sampler.set_epoch(2)
            whole = [i for _, i in sampler]
            assert share == whole[trained // world :]
