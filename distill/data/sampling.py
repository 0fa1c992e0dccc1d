"""Training samples that are a function of (seed, epoch, index): exact resume with any workers.

With PyTorch's defaults, the augmentation of a sample depends on which worker drew it and
on everything that worker drew before; persistent workers carry their random streams from
epoch to epoch, so a run resumed from a checkpoint draws other crops than the one it
continues, and a mid-epoch resume replays the epoch's first batches. Here the shuffle is a
function of (seed, epoch), as in ``DistributedSampler``, and every sample carries its own
augmentation seed, a function of (seed, epoch, index), so the data a step sees does not
depend on the number of workers, on their persistence or on an interruption.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads nearby integers apart


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` in ``epoch`` (splitmix64 of the three)."""
    value = (seed * _MIX + epoch) * _MIX + index
    value &= (1 << 64) - 1
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (value ^ (value >> 31)) >> 1


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """torch (CPU), Python and NumPy random generators seeded with ``seed``, restored after."""
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


class SeededSampler(DistributedSampler):
    """``DistributedSampler`` (one replica too) yielding ``(augmentation seed, index)`` pairs.

    The order is ``DistributedSampler``'s shuffle of (``seed``, epoch), the same permutation
    at every world size. ``position()``, asked when iteration starts, gives the epoch and how
    many samples of that permutation, counted over all ranks, were already trained on
    (non-zero when a fit resumes from a checkpoint written mid-epoch, whose epoch then
    continues instead of replaying its first batches); without it, the epoch is the one
    ``set_epoch`` set. The rest of the permutation is shared among the ranks as
    ``DistributedSampler`` shares a whole one: every ``num_replicas``-th sample, padded from
    the permutation's start to a multiple of ``num_replicas`` so that all ranks get as many.
    At the world size that trained the first part this is ``DistributedSampler``'s own order
    without its first samples; at another, every sample not trained yet comes once, plus
    up to ``num_replicas - 1`` repeats of the epoch's first samples (the padding a
    ``DistributedSampler`` adds to any epoch). (Lightning calls ``set_epoch`` too, but a
    resumed fit with worker processes starts iterating before that call.) As a
    ``DistributedSampler`` it stays in place under DDP.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int,
        rank: int,
        seed: int,
        position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.position = position

    def __iter__(self) -> Iterator[tuple[int, int]]:
        trained = 0
        if self.position is not None:
            epoch, trained = self.position()
            self.set_epoch(epoch)
        for index in self.remaining(trained):
            yield sample_seed(self.seed, self.epoch, index), index

    def remaining(self, trained: int) -> list[int]:
        """This rank's share of the epoch's permutation after its first ``trained`` samples."""
        if not trained:
            return list(super().__iter__())
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)  # DistributedSampler's permutation
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        rest = order[trained:]
        padding = -len(rest) % self.num_replicas
        rest += (order * math.ceil(padding / len(order)))[:padding]
        return rest[self.rank :: self.num_replicas]


class LazyDataLoader(DataLoader):
    """A ``DataLoader`` whose iteration starts at the first ``next()``, not at ``iter()``.

    Lightning creates the training iterator when it first sizes the data (for the lr
    schedule's step count), before a resumed fit has restored its loop state; worker processes
    would draw that epoch's first indices then, with the wrong epoch. Deferring the start
    lets ``SeededSampler`` read the restored position.
    """

    def __iter__(self) -> Iterator:
        return _Deferred(super().__iter__)


class ResumableDataLoader(LazyDataLoader):
    """The training loader over a ``SeededSampler``: a ``LazyDataLoader`` Lightning knows to be
    resumable mid-epoch.

    Lightning warns on every mid-epoch resume ("your dataloader is not resumable") unless
    each training loader has ``state_dict`` and ``load_state_dict``. This one resumes
    exactly without a state of its own: ``SeededSampler`` reads the position from the
    ``ViewDataModule``, which keeps it with Lightning's loop state (``continue_epoch``). Its
    state is the batching Lightning's batch counters count in, saved for inspection.
    """

    def state_dict(self) -> dict[str, int]:
        return {"batch_size": self.batch_size, "num_replicas": self.sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: the position is Lightning's own loop state (see the class)."""


class _Deferred:
    def __init__(self, start: Callable[[], Iterator]) -> None:
        self._start, self._iterator = start, None

    def __iter__(self) -> _Deferred:
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


def fit_position(trainer) -> tuple[int, int]:
    """(epoch, batches already trained in it) of a fit, read when the epoch's first batch is
    drawn (for a resumed fit: from its restored loop state)."""
    epochs = trainer.fit_loop.epoch_progress.current
    batches = trainer.fit_loop.epoch_loop.batch_progress.current
    mid_epoch = epochs.started > epochs.processed
    return epochs.processed, batches.completed if mid_epoch else 0


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGINT and SIGTERM (sent to a whole process group by
    Ctrl-C or a scheduler) are left to the main process, which stops after the current step
    and writes a checkpoint; a worker killed first would fail the run without one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
