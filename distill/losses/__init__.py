"""Loss functions: pure functions of tensors (thin modules only where state must live)."""

from distill.losses.contrastive import info_nce, relation_contrastive_loss
from distill.losses.crd import CRDLoss, nce_loss
from distill.losses.dino import DINOLoss, dino_loss
from distill.losses.feature import feature_loss
from distill.losses.kd import kd_loss
from distill.losses.rkd import rkd_angle_loss, rkd_distance_loss

__all__ = [
    "CRDLoss",
    "DINOLoss",
    "dino_loss",
    "feature_loss",
    "info_nce",
    "kd_loss",
    "nce_loss",
    "relation_contrastive_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
]
