"""The litdata side of ``StreamingDataModule``; imported only when it is used (``litdata`` is
the optional ``stream`` extra).

Training iterates litdata's ``StreamingDataset``: chunks are assigned to ranks and loader
workers and shuffled by litdata (``seed``, epoch), every rank gets the same number of full
batches under DDP, and ``StreamingDataLoader`` counts what it yielded. distill adds the
views, seeded per sample by (seed, epoch, index) as ``distill.data.sampling`` seeds every
DataModule's, and the position: an epoch starts where Lightning's loop counters say
(``ViewDataModule.resume_position``), so a fit resumed from a mid-epoch checkpoint trains
exactly the rest of the epoch, with the views it would have had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch.utils.data import Dataset, default_collate

from distill.data.sampling import sample_seed, seeded_rngs
from distill.data.shards import decode


class ShardDataset(Dataset):
    """The samples of a shard folder as ``(RGB image, target)``, by position in the shards
    (litdata's random access): the map-style dataset of the validation and evaluation
    loaders, which read it in order, chunk after chunk (``ShardRows`` gives their rows).

    Args:
        location: The shard folder or remote URL.
        info: Its ``distill.json`` (classes, size, targets).
        cache_dir: litdata's cache of remote chunks (``None``: litdata's default).
        max_cache_size: litdata's cache budget (``None``: litdata's default).
    """

    def __init__(
        self, location: str, info: dict, cache_dir: str | None, max_cache_size: str | None
    ) -> None:
        self.location = location
        self.classes = list(info["classes"])
        self.targets = list(info["targets"])  # by row
        self.rows = list(info["rows"])  # by position in the shards
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self._rows: StreamingDataset | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        if self._rows is None:  # opened in the process that reads (a loader worker)
            self._rows = StreamingDataset(
                self.location, cache_dir=self.cache_dir, max_cache_size=self.max_cache_size
            )
        item = self._rows[index]
        return decode(item["image"], self.location, index), item["target"]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rows": None}


class ViewStream(StreamingDataset):
    """litdata's training stream of a shard folder, yielding ``(views, target, index)``.

    ``views`` is what the recipe's transform makes of the image (for a batched
    ``HostViews``: the sample prepared, its views made per batch by ``ViewCollate``),
    drawn under ``sample_seed(view_seed, epoch, index)``: litdata counts epochs from 1,
    distill from 0.

    Args:
        location: The shard folder or remote URL.
        views: The training transform (``ViewRecipe.build``).
        view_seed: The run's data seed.
        **kwargs: ``litdata.StreamingDataset``'s arguments (shuffle, drop_last, seed, cache).
    """

    def __init__(self, location: str, views: Callable, view_seed: int, **kwargs) -> None:
        super().__init__(location, **kwargs)
        self.location = location
        self.views = views
        self.view_seed = view_seed

    def __getitem__(self, index):
        item = super().__getitem__(index)
        row = int(item["index"])
        image = decode(item["image"], self.location, row)
        prepare = getattr(self.views, "prepare", self.views)
        with seeded_rngs(sample_seed(self.view_seed, self.current_epoch - 1, row)):
            views = prepare(image)
        return views, int(item["target"]), row


class ViewCollate:
    """A batch of ``ViewStream`` samples as ``[views, targets [B], indices [B]]``: a batched
    transform (``HostViews``) makes the batch's views at once, as ``IndexedDataset`` does."""

    def __init__(self, views: Callable) -> None:
        self.views = views

    def __call__(self, samples: list[tuple]) -> list:
        if not hasattr(self.views, "prepare"):
            return default_collate(samples)
        prepared, targets, indices = zip(*samples, strict=True)
        return [self.views.apply(list(prepared)), torch.tensor(targets), torch.tensor(indices)]


class StreamingTrainLoader(StreamingDataLoader):
    """litdata's ``StreamingDataLoader``, started at the fit's position in its epoch.

    ``position()``, asked when iteration starts, gives the epoch and the batches of it
    already trained (``ViewDataModule.resume_position``). A new epoch starts afresh as
    litdata epoch ``epoch + 1``. A resumed one continues from litdata's own state, which
    Lightning saved in the checkpoint (``state_dict``) and restored (``load_state_dict``),
    once it is checked to be at that position; a checkpoint without it (written by another
    DataModule) gets litdata's state made for the position. An epoch interrupted after its
    last batch yields nothing. The state restored from an end-of-epoch checkpoint is not
    used: the epoch and the position are the loop's, so an epoch cut short
    (``limit_train_batches``) is not continued by the next.

    Args:
        dataset: The ``ViewStream``.
        position: ``() -> (epoch, batches trained in it)``; ``None``: litdata's own epochs.
        **kwargs: ``StreamingDataLoader``'s arguments.
    """

    def __init__(
        self,
        dataset: ViewStream,
        position: Callable[[], tuple[int, int]] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.position = position
        self._checkpoint_state: dict | None = None

    def __iter__(self) -> Iterator:
        if self.position is not None and not self._start(*self.position()):
            return
        yield from super().__iter__()

    def load_state_dict(self, state: dict) -> None:
        """Keeps the checkpoint's litdata state for ``_start`` (the position decides)."""
        self._checkpoint_state = state

    def _start(self, epoch: int, batches: int) -> bool:
        """Sets litdata's loader at ``batches`` into ``epoch``; ``False`` if none is left."""
        samples = batches * self.batch_size
        saved, self._checkpoint_state = self._checkpoint_state, None
        if batches and samples >= len(self.dataset):
            return False  # interrupted after the epoch's last batch
        if not batches:
            self.restore = False  # a fresh epoch: litdata resets its state
            self.current_epoch = epoch  # and counts this one as epoch + 1
            return True
        if saved is None or (saved["current_epoch"], saved["num_samples_yielded"]) != (
            epoch + 1,
            samples,
        ):
            self.dataset.current_epoch = epoch + 1
            state = self.dataset.state_dict(samples, self.num_workers, self.batch_size)
            workers = max(1, self.num_workers)
            saved = {
                "dataset": state,
                "current_epoch": epoch + 1,
                "num_samples_yielded": samples,
                "latest_worker_idx": (batches - 1) % workers,
            }
        super().load_state_dict(saved)
        return True
