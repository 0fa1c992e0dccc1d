"""One LightningModule per method."""

from distill.methods.base import Method
from distill.methods.crd import CRD
from distill.methods.dino import DINO
from distill.methods.disco import DisCo
from distill.methods.dist import DIST
from distill.methods.dkd import DKD
from distill.methods.feature import FeatureKD
from distill.methods.kd import KD
from distill.methods.moco import MoCo
from distill.methods.pkt import PKT
from distill.methods.rekd import ReKD
from distill.methods.rkd import RKD
from distill.methods.seed import SEED
from distill.methods.supervised import Supervised

__all__ = [
    "CRD", "DINO", "DIST", "DKD", "KD", "PKT", "RKD", "SEED", "DisCo", "FeatureKD", "Method",
    "MoCo", "ReKD", "Supervised",
]  # fmt: skip
