"""STL-10: 96x96 images, a large unlabelled split for self-supervised training."""

from __future__ import annotations

import os
from typing import Literal

from torch.utils.data import Dataset
from torchvision.datasets import STL10

from distill.data.base import ViewDataModule
from distill.errors import ConfigError

_FILES = {
    "train": ["train_X.bin", "train_y.bin"],
    "unlabeled": ["unlabeled_X.bin"],
    "test": ["test_X.bin", "test_y.bin"],
}


TRAIN_SPLITS = ("unlabeled", "train", "train+unlabeled")


class _STL10Files(STL10):
    """torchvision's STL-10 that checks the split's files exist instead of hashing them."""

    def _check_integrity(self) -> bool:
        splits = self.split.split("+") + ["test"]
        names = [name for split in splits for name in _FILES[split]]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, n)) for n in names)


class STL10DataModule(ViewDataModule):
    """STL-10 (5,000 labelled train, 100,000 unlabelled, 8,000 test images; 10 classes).

    Self-supervised methods train on ``train_split='unlabeled'`` (or ``'train+unlabeled'``;
    unlabelled samples have target -1); the k-NN bank and probes use the labelled train
    split, and val is the test split. Supervised training needs ``train_split='train'``.

    Args:
        data_dir: Folder holding ``stl10_binary/``.
        train_split: Split the method trains on.
        download: Download the archive (2.5 GB) if it is missing.
        image_size: Evaluation image size (STL-10 images are 96 px).
        **kwargs: The other ``ViewDataModule`` arguments (batch_size, views, ...).
    """

    mean = (0.4467, 0.4398, 0.4066)
    std = (0.2603, 0.2566, 0.2713)

    def __init__(
        self,
        data_dir: str = "data/stl10",
        train_split: Literal["unlabeled", "train", "train+unlabeled"] = "unlabeled",
        download: bool = False,
        image_size: int = 96,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, image_size=image_size, **kwargs)
        if train_split not in TRAIN_SPLITS:
            raise ConfigError(
                f"data.init_args.train_split={train_split!r}; valid: {', '.join(TRAIN_SPLITS)}"
            )
        self.train_split = train_split
        self.download = download
        needed = {"train", "test", *train_split.split("+")}
        missing = [
            name
            for split in sorted(needed)
            for name in _FILES[split]
            if not os.path.isfile(os.path.join(data_dir, STL10.base_folder, name))
        ]
        if missing and not download:
            raise ConfigError(
                f"STL-10 not found: data.init_args.data_dir={data_dir!r} lacks "
                f"{', '.join(f'stl10_binary/{m}' for m in missing)}. Put torchvision's "
                f"extracted archive there or set data.init_args.download=true (needs "
                f"internet access)."
            )

    @property
    def num_classes(self) -> int:
        return 10

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            _STL10Files(self.data_dir, split=self.train_split, download=True)
        except Exception as error:  # network errors come in many types
            raise ConfigError(
                f"Downloading STL-10 into {self.data_dir!r} (data.init_args.data_dir) failed: "
                f"{error}. Without internet access, extract stl10_binary.tar.gz into that "
                f"folder and set data.init_args.download=false."
            ) from error

    def train_dataset(self) -> Dataset:
        return _STL10Files(self.data_dir, split=self.train_split)

    def train_eval_dataset(self) -> Dataset:
        return _STL10Files(self.data_dir, split="train")

    def val_dataset(self) -> Dataset:
        return _STL10Files(self.data_dir, split="test")
