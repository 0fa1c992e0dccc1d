"""One LightningModule per method."""

from distill.methods.base import Method
from distill.methods.supervised import Supervised

__all__ = ["Method", "Supervised"]
