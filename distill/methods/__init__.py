"""One LightningModule per method."""

from distill.methods.base import Method
from distill.methods.kd import KD
from distill.methods.rkd import RKD
from distill.methods.supervised import Supervised

__all__ = ["KD", "RKD", "Method", "Supervised"]
