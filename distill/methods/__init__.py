"""One LightningModule per method."""

from distill.methods.base import Method
from distill.methods.crd import CRD
from distill.methods.kd import KD
from distill.methods.rkd import RKD
from distill.methods.supervised import Supervised

__all__ = ["CRD", "KD", "RKD", "Method", "Supervised"]
