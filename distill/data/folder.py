"""Any ImageFolder tree (``<dir>/<class>/<image>``): ImageNet, ImageNet-100, cifar10-5k."""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from distill.data.base import ViewDataModule
from distill.errors import ConfigError


def _class_folders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


class ImageFolderDataModule(ViewDataModule):
    """Train and val ImageFolder trees with the same class sub-folders.

    ``train_dir`` and ``val_dir`` are taken relative to ``data_dir`` (absolute paths are
    used as they are). Normalisation defaults to ImageNet's statistics.

    Args:
        data_dir: Root folder; ``train_dir``/``val_dir`` are relative to it.
        train_dir: Training tree.
        val_dir: Validation tree (labelled, un-augmented).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        **kwargs: The other ``ViewDataModule`` arguments (batch_size, views, image_size, ...).
    """

    def __init__(
        self,
        data_dir: str = ".",
        train_dir: str = "train",
        val_dir: str = "val",
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.train_dir = os.path.join(data_dir, train_dir)
        self.val_dir = os.path.join(data_dir, val_dir)
        for key, path in (("train_dir", self.train_dir), ("val_dir", self.val_dir)):
            if not os.path.isdir(path):
                raise ConfigError(
                    f"data.init_args.{key}: folder {path!r} does not exist (data_dir="
                    f"{data_dir!r}, working directory {os.getcwd()!r}). Point it at an "
                    f"ImageFolder tree of <class>/<image> files."
                )
        self.classes = _class_folders(self.train_dir)
        if not self.classes:
            raise ConfigError(
                f"data.init_args.train_dir: {self.train_dir!r} has no class sub-folders; "
                f"expected <class>/<image> files."
            )
        val_classes = _class_folders(self.val_dir)
        if val_classes != self.classes:
            raise ConfigError(
                f"data.init_args.val_dir: the class folders of {self.val_dir!r} "
                f"({', '.join(val_classes) or 'none'}) differ from those of "
                f"{self.train_dir!r} ({', '.join(self.classes)})."
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_dataset(self) -> Dataset:
        return ImageFolder(self.train_dir)

    def val_dataset(self) -> Dataset:
        return ImageFolder(self.val_dir)
