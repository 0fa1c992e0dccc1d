"""Any ImageFolder tree (``<dir>/<class>/<image>``): ImageNet, ImageNet-100, cifar10-5k."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Literal

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from distill.data.arguments import DATA, require_numbers
from distill.data.base import ViewDataModule
from distill.data.images import load_rgb
from distill.data.scan import find_bad_images
from distill.data.tree import class_folders, image_files
from distill.errors import ConfigError

log = logging.getLogger(__name__)
#: How many bad files a message lists by name.
SHOWN = 5


class ImageFolderSplit(ImageFolder):
    """torchvision's ImageFolder over a listed split that counts every file once.

    Two paths to one file in a class are one sample (with a warning); one file in two
    classes is refused, as is an empty class folder.

    Args:
        root: The split folder.
        key: What names it in error messages: the DataModule argument
            (``data.init_args.train_dir``) or the command-line option.
        listed: ``{class: [(path, real path), ...]}`` of the split (``split_images``).
    """

    def __init__(self, root: str, key: str, listed: dict[str, list[tuple[str, str]]]) -> None:
        self.key = key
        self.listed = listed
        super().__init__(root, loader=load_rgb)
        del self.listed  # the real paths are no sample's business (ImageNet: 1.3 M strings)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(self.listed)
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], *args, **kwargs):
        owners: dict[str, tuple[str, str]] = {}  # real path -> (first path, its class)
        samples, duplicates, conflicts = [], [], []
        for name, target in class_to_idx.items():
            if not self.listed[name]:
                raise ConfigError(
                    f"{self.key}: class folder {os.path.join(directory, name)!r} "
                    f"of split {directory!r} is empty: it holds no {'/'.join(IMG_EXTENSIONS)} "
                    f"file (hidden files are ignored). Add images, or remove the class folder "
                    f"from every split."
                )
            for path, real in self.listed[name]:
                owner = owners.setdefault(real, (path, name))
                if owner[0] == path:
                    samples.append((path, target))
                elif owner[1] == name:
                    duplicates.append(f"{path!r} is {owner[0]!r}")
                else:
                    conflicts.append(f"{path!r} in {name!r} is {owner[0]!r} in {owner[1]!r}")
        if conflicts:
            raise ConfigError(
                f"{self.key}: {len(conflicts)} image file(s) of {directory!r} "
                f"are in two class folders, so each would be trained with two labels: "
                f"{_first(conflicts)}. Keep each file in one class folder (remove the link "
                f"or copy in the wrong one)."
            )
        if duplicates:
            log.warning(
                "%s: %d image file(s) of %s are reached by more than one path "
                "in their class folder and count once (e.g. %s)",
                self.key, len(duplicates), directory, duplicates[0],
            )  # fmt: skip
        return samples

    def drop(self, paths: set[str]) -> None:
        """Leaves the files ``paths`` out of the samples; a class left empty is refused.

        Raises:
            ConfigError: Every image of a class is among ``paths``.
        """
        self.samples = [sample for sample in self.samples if sample[0] not in paths]
        self.imgs = self.samples
        self.targets = [target for _, target in self.samples]
        emptied = sorted(set(self.classes) - {self.classes[target] for target in self.targets})
        if emptied:
            raise ConfigError(
                f"{self.key}: no image of class folder(s) {', '.join(emptied)} "
                f"of {self.root!r} can be read, so the split has no sample of them. Repair the "
                f"files, or remove the class folder from every split."
            )


def split_images(
    split: str, classes: list[str]
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
    """``{class: [(path, real path), ...]}`` of the images of ``split`` (``tree.image_files``)
    and ``{path: reason}`` of its links that cannot be followed."""
    listed, broken = {}, {}
    for name in classes:
        files, links = image_files(os.path.join(split, name), [os.path.realpath(split)])
        listed[name] = files
        broken.update(links)
    return listed, broken


def _first(items: list[str]) -> str:
    """The first ``SHOWN`` of ``items`` and how many more there are."""
    more = len(items) - SHOWN
    return "; ".join(items[:SHOWN]) + (f"; and {more} more" if more > 0 else "")


def report_broken(broken: dict[str, str], skip: bool) -> None:
    """Raises naming the links (and unreadable folders) of ``broken``, or warns that they are
    left out when ``skip``.

    Args:
        broken: ``{path: reason}`` from ``distill.data.tree``, of both splits.
        skip: ``on_bad_image=skip``: warn instead of raising.
    """
    if not broken:
        return
    listing = _first([f"{path!r} {reason}" for path, reason in broken.items()])
    if not skip:
        raise ConfigError(
            f"{len(broken)} link(s) in the image folders (data.init_args.train_dir, val_dir) "
            f"cannot be followed: {listing}. Remove or repair the link(s), or set "
            f"data.init_args.on_bad_image=skip to leave them out."
        )
    log.warning(
        "leaving out %d link(s) in the image folders that cannot be followed "
        "(data.init_args.on_bad_image=skip): %s",
        len(broken), listing,
    )  # fmt: skip


def _listing(bad: dict[str, str]) -> str:
    return _first([f"{path!r} ({reason})" for path, reason in bad.items()])


def _warn_shared(train: dict[str, list], val: dict[str, list]) -> None:
    """Warns when files of the listed split ``val`` are also in ``train``: validation would
    then measure memory rather than recognition."""
    train_paths = {real: path for files in train.values() for path, real in files}
    shared = [
        f"{path!r} is {train_paths[real]!r}"
        for files in val.values()
        for path, real in files
        if real in train_paths
    ]
    if shared:
        log.warning(
            "%d image file(s) of data.init_args.val_dir are also in data.init_args.train_dir "
            "(e.g. %s): validation metrics then overstate how well unseen images are "
            "recognised. Keep each file in one split.",
            len(shared), shared[0],
        )  # fmt: skip


class ImageFolderDataModule(ViewDataModule):
    """Train and val ImageFolder trees with the same class sub-folders.

    ``train_dir`` and ``val_dir`` are taken relative to ``data_dir`` (absolute paths are
    used as they are). Normalisation defaults to ImageNet's statistics. Hidden files and
    folders (``.ipynb_checkpoints``) are ignored. A split needs at least two class folders.
    Links are followed once: one that points to nothing, into a loop of links or back to a
    folder that holds it is named (``distill.data.tree``). A file reached by two paths is one
    sample; one file in two classes of a split is refused, and one in both splits is warned
    about. At setup every image file is checked (see ``distill.data.scan``), so a corrupt,
    truncated or unsupported file is named before training rather than hours into it.

    Args:
        data_dir: Root folder; ``train_dir``/``val_dir`` are relative to it.
        train_dir: Training tree.
        val_dir: Validation tree (labelled, un-augmented).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        verify_images: Setup check of every file: "header" (cheap, catches truncation),
            "decode" (decodes every file) or "off".
        on_bad_image: "error" stops naming the files that fail the check and the links that
            cannot be followed; "skip" leaves them out with a warning.
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
        require_numbers("data.init_args.mean", mean, 3)  # one per RGB channel
        require_numbers("data.init_args.std", std, 3, low=0.0, low_open=True)
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
        self.classes, broken = class_folders(self.train_dir)
        val_classes, val_broken = class_folders(self.val_dir)
        report_broken({**broken, **val_broken}, on_bad_image == "skip")
        if len(self.classes) < 2:
            raise ConfigError(
                f"data.init_args.train_dir: {self.train_dir!r} has {len(self.classes)} class "
                f"folder(s) ({', '.join(self.classes) or 'none'}); expected <class>/<image> "
                f"files in at least 2 class folders: k-NN, linear probes and classification "
                f"need two classes or more."
            )
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
            (train, broken), (val, val_broken) = (
                split_images(path, self.classes) for path in (self.train_dir, self.val_dir)
            )
            report_broken({**broken, **val_broken}, self.on_bad_image == "skip")
            splits = {
                "train_dir": ImageFolderSplit(self.train_dir, f"{DATA}.train_dir", train),
                "val_dir": ImageFolderSplit(self.val_dir, f"{DATA}.val_dir", val),
            }
            _warn_shared(train, val)
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
