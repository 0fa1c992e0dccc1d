"""DataModules and view recipes; every training batch is ``(views, targets, indices)``."""

from distill.data.base import IndexedDataset, ViewDataModule
from distill.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from distill.data.device_views import DeviceViews
from distill.data.digits import DigitsDataModule, DigitsDataset
from distill.data.folder import ImageFolderDataModule
from distill.data.stl10 import STL10DataModule
from distill.data.streaming import StreamingDataModule
from distill.data.views import MultiCropViews, SupervisedViews, TwoViews, ViewRecipe

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DeviceViews",
    "DigitsDataModule",
    "DigitsDataset",
    "ImageFolderDataModule",
    "IndexedDataset",
    "MultiCropViews",
    "STL10DataModule",
    "StreamingDataModule",
    "SupervisedViews",
    "TwoViews",
    "ViewDataModule",
    "ViewRecipe",
]
