"""``StreamingDataModule``: ImageFolder splits streamed from shards (``distill stream-convert``)
by Lightning's ``litdata``, for data sets that do not fit one disk.

Importable without litdata; building one without it is one ``ConfigError`` naming
``pip install -e '.[stream]'``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from distill.data.arguments import DATA, require_numbers
from distill.data.base import IndexedDataset, ViewDataModule
from distill.data.sampling import ignore_stop_signals
from distill.data.shards import join, read_sidecar, require_litdata
from distill.errors import ConfigError


class ShardRows(IndexedDataset):
    """``IndexedDataset`` over shards read in their order (``ShardDataset``), whose index is
    each sample's row in the split, as ``ImageFolderDataModule``'s: evaluation features,
    gathered and sorted by index, come in the folder's order. For un-batched transforms."""

    def __getitems__(self, items: list[int]) -> list[tuple]:
        rows = self.dataset.rows
        samples = super().__getitems__(items)
        return [(image, target, rows[position]) for image, target, position in samples]


class StreamingDataModule(ViewDataModule):
    """Train and val splits as litdata shards, local or in object storage (s3://, gs://, ...).

    The samples, their classes and their rows are those of ``ImageFolderDataModule`` on the
    folder the shards were converted from, and every view recipe (host and ``DeviceViews``)
    gives a sample the same views for the same (seed, epoch, index). What differs is the
    training order, which is litdata's: each epoch the shard files are shuffled and dealt
    to the ranks and their loader workers, and each worker reads its files in turn,
    shuffling the samples within blocks of 256 of a file (litdata's
    ``item_shuffle_window``); the order depends on the number of ranks, loader workers and
    the batch size. Under DDP every rank takes the same number of full batches (the last
    samples that do not fill one batch on every rank are left out that epoch). A fit
    resumed from a checkpoint written mid-epoch continues exactly where the epoch stopped
    (litdata's loader state is in the checkpoint); training loader workers are not
    persistent. Validation, k-NN and linear probes read the shards in their order (file
    after file), each sample carrying its row in the split as index, so features sorted by
    index are in the folder's order.

    Args:
        data_dir: Root of the shard folders; ``train_dir``/``val_dir`` are relative to it
            (absolute paths and URLs are used as they are).
        train_dir: Training shards (``distill stream-convert --split train``).
        val_dir: Validation shards (labelled, un-augmented).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        cache_dir: Where litdata keeps the chunks of remote shards (``None``: its default).
        max_cache_size: litdata's budget for that cache, e.g. "100GB" (``None``: its default).
        **kwargs: The other ``ViewDataModule`` arguments (batch_size, views, image_size, ...).
    """

    def __init__(
        self,
        data_dir: str = ".",
        train_dir: str = "train",
        val_dir: str = "val",
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        require_litdata(f"{DATA} (distill.data.StreamingDataModule)")
        require_numbers(f"{DATA}.mean", mean, 3)  # one per RGB channel
        require_numbers(f"{DATA}.std", std, 3, low=0.0, low_open=True)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self.train_dir = join(data_dir, train_dir)
        self.val_dir = join(data_dir, val_dir)
        self._info = {
            key: read_sidecar(path, f"{DATA}.{key}", cache_dir)
            for key, path in (("train_dir", self.train_dir), ("val_dir", self.val_dir))
        }
        self.classes = self._info["train_dir"]["classes"]
        if len(self.classes) < 2:
            raise ConfigError(
                f"{DATA}.train_dir: the shards {self.train_dir!r} have {len(self.classes)} "
                f"class(es); k-NN, linear probes and classification need two or more"
            )
        if self._info["val_dir"]["classes"] != self.classes:
            raise ConfigError(
                f"{DATA}.val_dir: the classes of {self.val_dir!r} "
                f"({', '.join(self._info['val_dir']['classes'])}) differ from those of "
                f"{self.train_dir!r} ({', '.join(self.classes)}); convert both splits of one "
                f"ImageFolder root"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _shards(self, key: str) -> Dataset:
        from distill.data.stream_loader import ShardDataset

        path = {"train_dir": self.train_dir, "val_dir": self.val_dir}[key]
        return ShardDataset(path, self._info[key], self.cache_dir, self.max_cache_size)

    def train_dataset(self) -> Dataset:
        return self._shards("train_dir")

    def val_dataset(self) -> Dataset:
        return self._shards("val_dir")

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        super().setup(stage)
        self.train_eval_set = ShardRows(self.train_eval_set.dataset, self.train_eval_set.transform)
        self.val_set = ShardRows(self.val_set.dataset, self.val_set.transform)

    def train_targets(self) -> torch.Tensor:
        """Labels ``[N]`` of the training shards in row order (from ``distill.json``)."""
        return torch.tensor(self._info["train_dir"]["targets"], dtype=torch.long)

    def continue_epoch(self, trainer, checkpoint: dict) -> None:
        """Refuses to continue an epoch in another batching than the checkpoint's: litdata's
        loader state (where each rank and loader worker stands in its shards) holds only for
        the batch size and world size that wrote it (``ViewDataModule.continue_epoch``
        re-expresses the position for the folder DataModules instead)."""
        loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        epochs = loop.get("epoch_progress", {}).get("current", {})
        batches = loop.get("epoch_loop.batch_progress", {}).get("current", {}).get("processed")
        saved, world = self._checkpoint_batching, trainer.world_size
        if not batches or epochs.get("started") == epochs.get("processed") or saved is None:
            return  # between epochs, or not a fit's checkpoint
        if tuple(saved) != (self.batch_size, world):
            raise ConfigError(
                f"--ckpt_path {trainer.ckpt_path} was written in the middle of epoch "
                f"{epochs['processed']} with data.init_args.batch_size={saved[0]} on "
                f"{saved[1]} process(es); this fit has data.init_args.batch_size="
                f"{self.batch_size} on {world}, and StreamingDataModule continues an epoch "
                f"only in the batching that began it (litdata's loader state is per rank "
                f"and worker): resume with batch_size={saved[0]} on {saved[1]} process(es) "
                f"(trainer.devices x trainer.num_nodes), or from a checkpoint written at an "
                f"epoch's end"
            )

    def train_dataloader(self) -> DataLoader:
        """litdata's loader of the training shards, started at the fit's position."""
        from distill.data.stream_loader import StreamingTrainLoader, ViewCollate, ViewStream

        # Lightning's caution that an IterableDataset's length may count samples twice over
        # loader workers: litdata deals each worker its own samples, and counts them.
        warnings.filterwarnings(
            "ignore",
            message=r"Your `IterableDataset` has `__len__` defined",
            module=r"lightning\.pytorch\.utilities\.data",
        )
        self.setup("fit")
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        views = self.train_set.transform
        stream = ViewStream(
            self.train_dir,
            views,
            self.seed,
            shuffle=True,
            seed=self.seed,
            # Under DDP a rank with a batch fewer than the others would hang the collectives.
            drop_last=self.drop_last or world > 1,
            cache_dir=self.cache_dir,
            max_cache_size=self.max_cache_size,
        )
        position = None
        if trainer is not None:

            def position() -> tuple[int, int]:
                return self.resume_position(trainer)

        return StreamingTrainLoader(
            stream,
            position,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=ignore_stop_signals if self.num_workers else None,
            generator=self._generator(),
            collate_fn=ViewCollate(views),
        )
