"""Any ImageFolder tree (``<dir>/<class>/<image>``): ImageNet, ImageNet-100, cifar10-5k."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Literal

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from distill.data.base import ViewDataModule
from distill.data.images import load_rgb
from distill.data.scan import find_bad_images
from distill.errors import ConfigError

log = logging.getLogger(__name__)
#: How many bad files a message lists by name.
SHOWN = 5


def _class_folders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: str) -> list[str]:
    """The images under ``folder`` in torchvision's order, hidden files and folders left out."""
    walked = []
    for parent, folders, names in os.walk(folder, followlinks=True):
        folders[:] = [name for name in folders if not name.startswith(".")]
        walked.append((parent, names))
    return [
        os.path.join(parent, name)
        for parent, names in sorted(walked)
        for name in sorted(names)
        if not name.startswith(".") and has_file_allowed_extension(name, IMG_EXTENSIONS)
    ]


class ImageFolderSplit(ImageFolder):
    """torchvision's ImageFolder that ignores hidden entries and names empty classes and bad files.

    Args:
        root: The split folder.
        key: The DataModule argument naming it (``train_dir``), quoted in error messages.
    """

    def __init__(self, root: str, key: str) -> None:
        self.key = key
        super().__init__(root, loader=load_rgb)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = _class_folders(directory)
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], *args, **kwargs):
        samples = []
        for name, target in class_to_idx.items():
            folder = os.path.join(directory, name)
            files = _image_files(folder)
            if not files:
                raise ConfigError(
                    f"data.init_args.{self.key}: class folder {folder!r} of split {directory!r} "
                    f"is empty: it holds no {'/'.join(IMG_EXTENSIONS)} file (hidden files are "
                    f"ignored). Add images, or remove the class folder from every split."
                )
            samples.extend((path, target) for path in files)
        return samples

    def drop(self, paths: set[str]) -> None:
        """Leaves the files ``paths`` out of the samples."""
        self.samples = [sample for sample in self.samples if sample[0] not in paths]
        self.imgs = self.samples
        self.targets = [target for _, target in self.samples]


def _listing(bad: dict[str, str]) -> str:
    shown = "; ".join(f"{path!r} ({reason})" for path, reason in list(bad.items())[:SHOWN])
    more = len(bad) - SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


class ImageFolderDataModule(ViewDataModule):
    """Train and val ImageFolder trees with the same class sub-folders.

    ``train_dir`` and ``val_dir`` are taken relative to ``data_dir`` (absolute paths are
    used as they are). Normalisation defaults to ImageNet's statistics. Hidden files and
    folders (``.ipynb_checkpoints``) are ignored. At setup every image file is checked (see
    ``distill.data.scan``), so a corrupt, truncated or unsupported file is named before
    training rather than hours into it.

    Args:
        data_dir: Root folder; ``train_dir``/``val_dir`` are relative to it.
        train_dir: Training tree.
        val_dir: Validation tree (labelled, un-augmented).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        verify_images: Setup check of every file: "header" (cheap, catches truncation),
            "decode" (decodes every file) or "off".
        on_bad_image: "error" stops at setup naming the files that fail the check; "skip"
            leaves them out with a warning.
        scan_cache_dir: Folder caching the check per file; ``None``:
            ``$XDG_CACHE_HOME/distill/image-scan`` (``~/.cache/...``).
        **kwargs: The other ``ViewDataModule`` arguments (batch_size, views, image_size, ...).
    """

    def __init__(
        self,
        data_dir: str = ".",
        train_dir: str = "train",
        val_dir: str = "val",
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        verify_images: Literal["header", "decode", "off"] = "header",
        on_bad_image: Literal["error", "skip"] = "error",
        scan_cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        for key, value, valid in (
            ("verify_images", verify_images, ("header", "decode", "off")),
            ("on_bad_image", on_bad_image, ("error", "skip")),
        ):
            if value not in valid:
                raise ConfigError(f"data.init_args.{key}={value!r}; valid: {', '.join(valid)}")
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.verify_images = verify_images
        self.on_bad_image = on_bad_image
        self.scan_cache_dir = scan_cache_dir
        self._splits: dict[str, ImageFolderSplit] | None = None
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
        return self._checked_splits()["train_dir"]

    def val_dataset(self) -> Dataset:
        return self._checked_splits()["val_dir"]

    def _checked_splits(self) -> dict[str, ImageFolderSplit]:
        """Both splits, listed and checked once."""
        if self._splits is None:
            splits = {
                "train_dir": ImageFolderSplit(self.train_dir, "train_dir"),
                "val_dir": ImageFolderSplit(self.val_dir, "val_dir"),
            }
            if self.verify_images != "off":
                self._check(list(splits.values()))
            self._splits = splits
        return self._splits

    def _check(self, splits: list[ImageFolderSplit]) -> None:
        """Raises on the files that fail the check, or leaves them out of ``splits``."""
        bad: dict[str, str] = {}
        for split in splits:
            paths = [path for path, _ in split.samples]
            bad.update(find_bad_images(split.root, paths, self.verify_images, self.scan_cache_dir))
        if not bad:
            return
        if self.on_bad_image == "error":
            raise ConfigError(
                f"{len(bad)} image file(s) cannot be read (data.init_args.verify_images="
                f"{self.verify_images}): {_listing(bad)}. Re-encode or remove them, or set "
                f"data.init_args.on_bad_image=skip to train without them."
            )
        log.warning(
            "skipping %d image file(s) that cannot be read (data.init_args.on_bad_image=skip): %s",
            len(bad), _listing(bad),
        )  # fmt: skip
        for split in splits:
            split.drop(set(bad))
