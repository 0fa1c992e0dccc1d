"""The DataModule every dataset shares: view recipes, indexed samples, evaluation loaders."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from distill.data.arguments import DATA, require_int
from distill.data.device_views import Canvas
from distill.data.sampling import (
    LazyDataLoader,
    ResumableDataLoader,
    SeededSampler,
    fit_position,
    ignore_stop_signals,
    seeded_rngs,
)
from distill.data.views import SupervisedViews, ViewRecipe, eval_transform
from distill.errors import ConfigError


class IndexedDataset(Dataset):
    """Wraps a ``(image, target)`` dataset to return ``(transform(image), target, index)``.

    The index is the sample's row in the dataset, which CRD's memory banks and ReKD's queues
    address; unlabelled samples keep the target ``-1``. An item ``(seed, index)`` (from
    ``SeededSampler``) applies the transform with the random generators seeded by ``seed``.
    A batched transform (``prepare`` per sample, ``apply`` per batch, as ``HostViews``) is
    prepared under each sample's seed and applied to the loader's whole batch at once
    (``__getitems__``, which PyTorch's DataLoader calls with a batch's items); the views it
    returns are already collated, and the DataModule's loaders (``collate``) keep them so.
    """

    def __init__(self, dataset: Dataset, transform: Callable | None = None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]):
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[int | tuple[int, int]]) -> list[tuple]:
        batched = hasattr(self.transform, "prepare")
        images, targets, indices = [], [], []
        for item in items:
            seed, index = item if isinstance(item, tuple) else (None, item)
            image, target = self.dataset[index]
            if self.transform is not None:
                prepare = self.transform.prepare if batched else self.transform
                with seeded_rngs(seed) if seed is not None else contextlib.nullcontext():
                    image = prepare(image)
            images.append(image)
            targets.append(-1 if target is None else int(target))
            indices.append(index)
        if not batched:
            return list(zip(images, targets, indices, strict=True))
        views = self.transform.apply(images)
        samples = [
            ([view[i] for view in views] if isinstance(views, list) else views[i], target, index)
            for i, (target, index) in enumerate(zip(targets, indices, strict=True))
        ]
        return CollatedSamples(samples, [views, torch.tensor(targets), torch.tensor(indices)])


class CollatedSamples(list):
    """A batch's samples (what a DataLoader's ``collate_fn`` receives) with their collated
    batch attached, for ``collate`` to pass on without stacking the views a second time."""

    def __init__(self, samples: list[tuple], batch: list) -> None:
        super().__init__(samples)
        self.batch = batch


def collate(samples: list) -> list:
    """``default_collate``, or the batch ``IndexedDataset`` already collated."""
    return samples.batch if isinstance(samples, CollatedSamples) else default_collate(samples)


#: Attributes naming where a DataModule's samples come from (the ones it has).
_FOLDERS = ("data_dir", "train_dir", "val_dir")


def recipe_settings(recipe: ViewRecipe, key: str = "views") -> dict[str, object]:
    """``{key: class name, key.init_args.<argument>: value, ...}`` of a view recipe, nested
    recipes (``DeviceViews``) included; values are plain Python (lists for sequences)."""
    settings: dict[str, object] = {key: type(recipe).__name__}
    for name, value in vars(recipe).items():
        if name.startswith("_"):
            continue
        if isinstance(value, ViewRecipe):
            settings.update(recipe_settings(value, f"{key}.init_args.{name}"))
        elif isinstance(value, list | tuple):
            settings[f"{key}.init_args.{name}"] = list(value)
        elif value is None or isinstance(value, bool | int | float | str):
            settings[f"{key}.init_args.{name}"] = value
        else:
            settings[f"{key}.init_args.{name}"] = repr(value)
    return settings


def require_views(views: ViewRecipe) -> None:
    """Raises unless the recipe ``views`` makes at least one view (when it lists them)."""
    try:
        specs = views.specs()
    except NotImplementedError:  # a recipe with a transform of its own lists no specs
        return
    if not specs:
        raise ConfigError(
            f"{DATA}.views: {type(views).__name__} makes no view; valid: a recipe with one "
            f"view or more (SupervisedViews, TwoViews, MultiCropViews)"
        )


class ViewDataModule(L.LightningDataModule):
    """Base DataModule: subclasses only say where the images come from.

    The training order and every sample's augmentation are functions of the run's seed, the
    epoch and the sample (``distill.data.sampling``), kept in the checkpoint with the position
    in the epoch, so a resumed fit sees the data an uninterrupted one would, whatever
    ``num_workers`` and ``persistent_workers`` (and from a mid-epoch checkpoint too).

    Every batch is ``(views, targets, indices)``: ``views`` is a tensor ``[B, C, H, W]`` for
    the ``SupervisedViews`` recipe and a list of such tensors (globals first) for multi-view
    recipes; ``targets`` is ``[B]`` (``-1`` when unlabelled) and ``indices`` ``[B]`` the
    dataset rows. Validation and the un-augmented training set (``train_eval_dataloader``,
    used for k-NN feature banks and offline probes) yield a single un-augmented tensor.

    The constructor checks every number (``batch_size`` >= 1, ``num_workers`` >= 0, sizes
    >= 1): a bad one is a ``ConfigError`` naming its key before anything runs.

    Args:
        data_dir: Root folder of the dataset.
        batch_size: Training batch size per device.
        num_workers: Data-loading worker processes per device.
        pin_memory: Pin host memory (useful on GPU).
        persistent_workers: Keep workers alive between epochs (when ``num_workers > 0``).
        views: Training view recipe; defaults to ``SupervisedViews`` at ``image_size``.
        image_size: Evaluation image size (centre crop).
        eval_resize: Resize before the evaluation centre crop (``None``: ``image_size``).
        eval_batch_size: Batch size of the evaluation loaders.
        drop_last: Drop the last incomplete training batch.
    """

    #: Per-channel normalisation of the dataset.
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        views: ViewRecipe | None = None,
        image_size: int = 32,
        eval_resize: int | None = None,
        eval_batch_size: int = 256,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        require_int(f"{DATA}.batch_size", batch_size, 1)
        require_int(f"{DATA}.num_workers", num_workers, 0)
        require_int(f"{DATA}.image_size", image_size, 1)
        if eval_resize is not None:
            require_int(f"{DATA}.eval_resize", eval_resize, 1)
        require_int(f"{DATA}.eval_batch_size", eval_batch_size, 1)
        if views is not None:
            require_views(views)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.views = views if views is not None else SupervisedViews(crop_size=image_size)
        self.image_size = image_size
        self.eval_resize = eval_resize
        self.eval_batch_size = eval_batch_size
        self.drop_last = drop_last
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
        #: (batch size, world size) of the checkpoint a fit resumes from (``load_state_dict``).
        self._checkpoint_batching: tuple[int, int] | None = None
        #: (epoch, samples of its order trained over all ranks) the checkpoint recorded.
        self._checkpoint_position: tuple[int, int] | None = None
        #: (epoch, samples trained, Lightning's batch count) where a resumed fit continues an
        #: epoch (``continue_epoch``).
        self._resumed_at: tuple[int, int, int] | None = None
        self.train_set: IndexedDataset | None = None
        self.train_eval_set: IndexedDataset | None = None
        self.val_set: IndexedDataset | None = None

    # Subclasses provide the raw (PIL image, target) datasets.
    @property
    def num_classes(self) -> int:
        """Number of classes of the labelled splits."""
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        """The raw training split (the one the method trains on)."""
        raise NotImplementedError

    def train_eval_dataset(self) -> Dataset:
        """The raw labelled training split used as k-NN bank; defaults to ``train_dataset``."""
        return self.train_dataset()

    def val_dataset(self) -> Dataset:
        """The raw labelled validation split."""
        raise NotImplementedError

    def train_targets(self) -> torch.Tensor:
        """Labels ``[N]`` of the training set in index order (-1 where unlabelled)."""
        self.setup("fit")
        dataset = self.train_set.dataset
        for name in ("targets", "labels"):
            values = getattr(dataset, name, None)
            if values is not None:
                return torch.as_tensor(np.asarray(values), dtype=torch.long)
        return torch.tensor([self.train_set.dataset[i][1] for i in range(len(dataset))])

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        evaluation = eval_transform(self.image_size, self.mean, self.std, self.eval_resize)
        train = self.train_dataset()
        self.train_set = IndexedDataset(train, self.views.build(self.mean, self.std))
        self.train_eval_set = IndexedDataset(self.train_eval_dataset(), evaluation)
        self.val_set = IndexedDataset(self.val_dataset(), evaluation)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool, **kw):
        seeded = isinstance(kw.get("sampler"), SeededSampler)
        return (ResumableDataLoader if seeded else LazyDataLoader)(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            worker_init_fn=ignore_stop_signals if self.num_workers else None,
            generator=self._generator(),
            collate_fn=collate,
            **kw,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        drop_last = self.drop_last and len(self.train_set) > self.batch_size
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        position = None
        if trainer is not None:

            def position() -> tuple[int, int]:
                return self._epoch_position(trainer)

        sampler = SeededSampler(self.train_set, world, rank, self.seed, position)
        return self._loader(self.train_set, self.batch_size, False, drop_last, sampler=sampler)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Makes the views of a ``DeviceViews`` batch on the device it was moved to."""
        views, *rest = batch
        if not isinstance(views, Canvas):
            return batch
        views = self.views.apply(views, self.mean, self.std)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:  # e.g. bf16-true: the views get the inputs' precision
            views = trainer.precision_plugin.convert_input(views)
        return (views, *rest)

    def _generator(self) -> torch.Generator:
        # Loaders draw their workers' base seeds from this, not from torch's global generator,
        # whose stream (shuffle-BN permutations, CRD negatives) then does not depend on how
        # often loaders were created.
        return torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict:
        """The data seed, so a resumed fit shuffles and augments as the interrupted one; the
        epoch and how many samples of its order were trained over all ranks, where a
        resumed fit continues it; and the batching (batch size, world size) Lightning's
        batch counters count in."""
        trainer = getattr(self, "trainer", None)
        world_size = trainer.world_size if trainer is not None else 1
        state = {"seed": self.seed, "batch_size": self.batch_size, "world_size": world_size}
        if trainer is not None:
            state["epoch_position"] = list(self._trained(trainer))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.seed = state.get("seed", self.seed)
        if "batch_size" in state:  # checkpoints from before it was saved have no check
            self._checkpoint_batching = (state["batch_size"], state["world_size"])
        if "epoch_position" in state:  # saved since resumes may change the batching
            self._checkpoint_position = tuple(state["epoch_position"])

    def _trained(self, trainer) -> tuple[int, int]:
        """(epoch, samples of its order trained so far over all ranks), as a checkpoint
        written now records it: Lightning's batches of this epoch, each of this fit's
        batch size x world size, after those its resumed checkpoint had trained."""
        epochs = trainer.fit_loop.epoch_progress.current
        epoch = epochs.processed
        if epochs.started == epochs.processed:
            return epoch, 0  # between epochs
        # ``processed``: in ``on_train_batch_end`` the batch is trained but not yet completed.
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        per_batch = self.batch_size * trainer.world_size
        if self._resumed_at is not None and self._resumed_at[0] == epoch:
            _, samples, resumed_batches = self._resumed_at
            return epoch, samples + (batches - resumed_batches) * per_batch
        return epoch, batches * per_batch

    def _epoch_position(self, trainer) -> tuple[int, int]:
        """``SeededSampler``'s position: (epoch, samples of its order already trained over all
        ranks), read when the epoch's first batch is drawn."""
        epoch, batches = fit_position(trainer)
        if self._resumed_at is not None and self._resumed_at[0] == epoch:
            return epoch, self._resumed_at[1]
        if batches:  # resumed mid-epoch by a fit in which ``continue_epoch`` was not called
            self._check_resumed_batches(trainer, epoch, batches)
        return epoch, batches * self.batch_size * trainer.world_size

    def continue_epoch(self, trainer, checkpoint: dict) -> None:
        """Has a fit resumed from a mid-epoch ``checkpoint`` continue its epoch in this fit's
        batching; ``MethodCheckpoint`` calls it before Lightning restores its loops.

        The epoch goes on after the samples of its order the checkpoint's run trained, over
        any world size and batch size (``SeededSampler``). Lightning counts the epoch in
        batches: the checkpoint's count is re-expressed in this fit's batches, as the
        epoch's batches minus those left, so that the epoch ends after its last sample
        (neither cut short nor left to run out), with its end-of-epoch validation. The
        batching unchanged, the count is the checkpoint's.

        Args:
            trainer: The resuming fit's trainer.
            checkpoint: The loaded checkpoint; its fit loop's batch counters are changed in
                place.
        """
        loop = (checkpoint.get("loops") or {}).get("fit_loop")
        if not loop or self._checkpoint_batching is None:
            return  # not a fit's checkpoint, or one from before the batching was saved
        epochs = loop["epoch_progress"]["current"]
        progress = loop["epoch_loop.batch_progress"]
        batches = progress["current"]["processed"]
        if epochs["started"] == epochs["processed"] or not batches:
            return  # between epochs
        epoch = epochs["processed"]
        if self._checkpoint_position is not None and self._checkpoint_position[0] == epoch:
            trained = self._checkpoint_position[1]
        else:  # saved before positions were: its batches were all of its batching
            trained = batches * math.prod(self._checkpoint_batching)
        self.setup("fit")
        world = trainer.world_size
        whole = self._batches(math.ceil(len(self.train_set) / world))
        left = self._batches(math.ceil(max(len(self.train_set) - trained, 0) / world))
        counted = whole - left
        for counters in (progress["total"], progress["current"]):
            for key in ("ready", "started", "processed", "completed"):
                counters[key] += counted - batches
        self._resumed_at = (epoch, trained, counted)
        saved_batch_size, saved_world = self._checkpoint_batching
        if (saved_batch_size, saved_world) != (self.batch_size, world):
            rank_zero_info(
                f"epoch {epoch} continues after the {trained} of its {len(self.train_set)} "
                f"training samples that {saved_world} process(es) with batches of "
                f"{saved_batch_size} trained; the {max(len(self.train_set) - trained, 0)} left "
                f"are shared among {world} process(es) with batches of {self.batch_size}: "
                f"{left} batch(es) each, counted as batches {counted + 1}-{whole} of "
                f"{whole} of the epoch"
            )

    def _batches(self, samples: int) -> int:
        """Training batches of a rank's ``samples`` (as ``train_dataloader`` batches them)."""
        drop_last = self.drop_last and len(self.train_set) > self.batch_size
        return samples // self.batch_size if drop_last else math.ceil(samples / self.batch_size)

    def resume_position(self, trainer) -> tuple[int, int]:
        """(epoch, batches of it already trained) of ``trainer``'s fit, read when the epoch's
        first batch is drawn; a fit resumed mid-epoch is checked to count in the batches of
        its checkpoint (``_check_resumed_batches``)."""
        epoch, batches = fit_position(trainer)
        if batches:  # a fit resumed mid-epoch: the checkpoint counted its batches
            self._check_resumed_batches(trainer, epoch, batches)
        return epoch, batches

    def _check_resumed_batches(self, trainer, epoch: int, batches: int) -> None:
        """Refuses to continue an epoch whose first ``batches`` were of another global batch,
        in a fit that did not call ``continue_epoch`` (one without ``MethodCheckpoint``).

        The position is counted in batches; with the checkpoint's samples per step (batch
        size x world size) it is the right sample, as when the world size changes and the
        batch size with it. Otherwise a part of the epoch would be trained twice or never.
        """
        world = trainer.world_size
        saved = self._checkpoint_batching
        if saved is None or saved[0] * saved[1] == self.batch_size * world:
            return
        batch_size, world_size = saved
        raise ConfigError(
            f"--ckpt_path {trainer.ckpt_path} was written in the middle of epoch {epoch}, after "
            f"{batches} batch(es) of {batch_size} samples on {world_size} process(es) "
            f"({batch_size * world_size} per step); this fit has data.init_args.batch_size="
            f"{self.batch_size} on {world} process(es) ({self.batch_size * world} per step), "
            f"and no distill.callbacks.MethodCheckpoint to continue the epoch in its batches, "
            f"so it cannot continue at the sample where it stopped. Add that callback, or "
            f"finish the epoch with data.init_args.batch_size={batch_size} on {world_size} "
            f"process(es) (trainer.devices x trainer.num_nodes) and --trainer.max_epochs "
            f"{epoch + 1}, then resume from that run's last.ckpt with the new batch size"
        )

    def settings(self) -> dict[str, object]:
        """What decides the training samples and their batches, by ``data.init_args`` key:
        the batch size, the data folders and the view recipe (class and arguments). A resumed
        fit reports those that differ from its checkpoint's (``distill.resume``)."""
        folders = {key: getattr(self, key) for key in _FOLDERS if hasattr(self, key)}
        return {"batch_size": self.batch_size, **folders, **recipe_settings(self.views)}

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.val_set, self.eval_batch_size, False, False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def eval_dataloader(self, split: str, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Un-augmented loader of ``split`` ('train' or 'val'), sharded when ``world_size > 1``.

        Evaluation callbacks iterate it themselves, so under DDP they pass their rank and
        gather the features; samples carry their index so duplicates from padding can be
        dropped after the gather.
        """
        self.setup("validate")
        datasets = {"train": self.train_eval_set, "val": self.val_set}
        if split not in datasets:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        dataset = datasets[split]
        sampler = None
        if world_size > 1:
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=False)
        # Worker processes are not kept: these loaders are built anew at each evaluation.
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=ignore_stop_signals if self.num_workers else None,
            generator=self._generator(),
        )

    def train_eval_dataloader(self) -> DataLoader:
        """Un-augmented training set with labels and indices (k-NN banks, offline probes)."""
        return self.eval_dataloader("train")
