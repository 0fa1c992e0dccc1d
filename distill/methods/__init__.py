"""One LightningModule per method."""

from distill.methods.at import AT
from distill.methods.base import Method
from distill.methods.crd import CRD
from distill.methods.dino import DINO
from distill.methods.disco import DisCo
from distill.methods.dist import DIST
from distill.methods.dkd import DKD
from distill.methods.feature import FeatureKD
from distill.methods.fitnets import FitNets
from distill.methods.kd import KD
from distill.methods.moco import MoCo
from distill.methods.pkt import PKT
from distill.methods.rekd import ReKD
from distill.methods.rkd import RKD
from distill.methods.seed import SEED
from distill.methods.sp import SP
from distill.methods.stage_distillation import StageDistillation
from distill.methods.supervised import Supervised
from distill.methods.vid import VID

__all__ = [
    "AT", "CRD", "DINO", "DIST", "DKD", "KD", "PKT", "RKD", "SEED", "SP", "VID", "DisCo",
    "FeatureKD", "FitNets", "Method", "MoCo", "ReKD", "StageDistillation", "Supervised",
]  # fmt: skip
