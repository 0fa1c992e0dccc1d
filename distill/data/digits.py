"""scikit-learn's handwritten digits as a DataModule: real images that need no download."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from distill.data.arguments import DATA
from distill.data.base import ViewDataModule
from distill.errors import ConfigError

#: scikit-learn's digits: images and classes.
DIGITS, CLASSES = 1797, 10


class DigitsDataset(Dataset):
    """The 1,797 8x8 digits of scikit-learn, upsampled to ``size`` px RGB PIL images.

    Args:
        train: Return the training split (else the validation split).
        val_fraction: Fraction of images held out for validation (stratified).
        seed: Seed of the fixed split.
        size: Output image size in pixels.
    """

    def __init__(
        self, train: bool = True, val_fraction: float = 0.2, seed: int = 0, size: int = 32
    ) -> None:
        digits = load_digits()
        # Pixel values are 0..16.
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        rows = np.arange(len(images))
        train_rows, val_rows = train_test_split(
            rows, test_size=val_fraction, random_state=seed, stratify=digits.target
        )
        rows = np.sort(train_rows if train else val_rows)
        resized = [
            np.asarray(Image.fromarray(images[i]).resize((size, size), Image.BILINEAR))
            for i in rows
        ]
        self.images = np.stack(resized)
        self.targets = digits.target[rows].astype(np.int64)
        self.classes = [str(c) for c in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        return image, int(self.targets[index])


class DigitsDataModule(ViewDataModule):
    """Handwritten digits (scikit-learn, 1,797 real images, 10 classes) at 32x32 RGB.

    The embedded default dataset: it ships with scikit-learn, so ``data_dir`` is unused. The
    train/val split (80/20, stratified) is fixed by ``split_seed``.

    Args:
        split_seed: Seed of the train/val split.
        val_fraction: Fraction of images held out for validation.
        batch_size: Training batch size per device.
        num_workers: Data-loading worker processes (0: the images are tiny and in memory).
        **kwargs: The other ``ViewDataModule`` arguments (views, image_size, ...).
    """

    mean = (0.306, 0.306, 0.306)
    std = (0.324, 0.324, 0.324)

    def __init__(
        self,
        split_seed: int = 0,
        val_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, **kwargs)
        # scikit-learn's stratified split holds out ceil(fraction * images) and needs one
        # image of each class on either side.
        held_out = math.ceil(val_fraction * DIGITS) if 0 < val_fraction < 1 else 0
        if not CLASSES <= held_out <= DIGITS - CLASSES:
            low, high = (CLASSES - 1) / DIGITS, (DIGITS - CLASSES) / DIGITS
            raise ConfigError(
                f"{DATA}.val_fraction={val_fraction!r}; valid: a number above {low:.4f} and up "
                f"to {high:.4f}, which leaves at least one image of each of the {CLASSES} "
                f"digits in both splits ({DIGITS} images)"
            )
        self.split_seed = split_seed
        self.val_fraction = val_fraction

    @property
    def num_classes(self) -> int:
        return 10

    def _split(self, train: bool) -> DigitsDataset:
        return DigitsDataset(train, self.val_fraction, self.split_seed, self.image_size)

    def train_dataset(self) -> Dataset:
        return self._split(train=True)

    def val_dataset(self) -> Dataset:
        return self._split(train=False)
