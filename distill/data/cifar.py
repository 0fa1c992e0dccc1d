"""CIFAR-10 and CIFAR-100 from torchvision's python-pickle format."""

from __future__ import annotations

import os
import pickle

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100

from distill.data.base import ViewDataModule
from distill.errors import ConfigError


def _files_exist(dataset_class: type[CIFAR10], root: str) -> bool:
    names = [name for name, _ in dataset_class.train_list + dataset_class.test_list]
    names.append(dataset_class.meta["filename"])
    folder = os.path.join(root, dataset_class.base_folder)
    return all(os.path.isfile(os.path.join(folder, name)) for name in names)


class _CIFAR10Files(CIFAR10):
    """torchvision's CIFAR-10 that checks files exist instead of hashing them on every load.

    The checksums are still verified on download; skipping them afterwards keeps loading
    fast and lets tests use small files in the same format.
    """

    def _check_integrity(self) -> bool:
        return _files_exist(type(self), self.root)

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as file:
            self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _CIFAR100Files(_CIFAR10Files, CIFAR100):
    """CIFAR-100 with the same file checks as ``_CIFAR10Files``."""


class CIFAR10DataModule(ViewDataModule):
    """CIFAR-10 (50,000 train / 10,000 test images, 32x32, 10 classes); val is the test set.

    ``data_dir`` holds torchvision's extracted archive (``cifar-10-batches-py/``). With
    ``download: true`` it is fetched there first (this needs internet access).

    Args:
        data_dir: Folder holding ``cifar-10-batches-py/``.
        download: Download the archive if it is missing.
        **kwargs: The other ``ViewDataModule`` arguments (batch_size, views, ...).
    """

    dataset_class: type[CIFAR10] = _CIFAR10Files
    display_name = "CIFAR-10"
    classes_count = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(self, data_dir: str = "data/cifar10", download: bool = False, **kwargs) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        self.download = download
        if not download:
            self._require_files()

    def _require_files(self) -> None:
        base = self.dataset_class.base_folder
        if not _files_exist(self.dataset_class, os.path.expanduser(self.data_dir)):
            raise ConfigError(
                f"{self.display_name} not found: data.init_args.data_dir={self.data_dir!r} has "
                f"no complete '{base}/' folder (torchvision's extracted archive). Put it "
                f"there, point data_dir at the folder that holds it, or set "
                f"data.init_args.download=true to download it (needs internet access)."
            )

    @property
    def num_classes(self) -> int:
        return self.classes_count

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            self.dataset_class(self.data_dir, train=True, download=True)
        except Exception as error:  # network errors come in many types
            raise ConfigError(
                f"Downloading {self.display_name} into {self.data_dir!r} "
                f"(data.init_args.data_dir) failed: {error}. Without internet access, fetch "
                f"{self.dataset_class.filename} elsewhere, extract it into that folder and "
                f"set data.init_args.download=false."
            ) from error

    def train_dataset(self) -> Dataset:
        return self.dataset_class(self.data_dir, train=True)

    def val_dataset(self) -> Dataset:
        return self.dataset_class(self.data_dir, train=False)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (50,000 train / 10,000 test images, 32x32, 100 fine classes).

    ``data_dir`` holds torchvision's extracted archive (``cifar-100-python/``).

    Args:
        data_dir: Folder holding ``cifar-100-python/``.
        download: Download the archive if it is missing.
        **kwargs: The other ``ViewDataModule`` arguments (batch_size, views, ...).
    """

    dataset_class = _CIFAR100Files
    display_name = "CIFAR-100"
    classes_count = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)

    def __init__(self, data_dir: str = "data/cifar100", download: bool = False, **kwargs) -> None:
        super().__init__(data_dir=data_dir, download=download, **kwargs)
