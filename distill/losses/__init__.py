"""Loss functions: pure functions of tensors (thin modules only where state must live)."""

from distill.losses.at import at_loss
from distill.losses.contrastive import info_nce, relation_contrastive_loss
from distill.losses.crd import CRDLoss, nce_loss
from distill.losses.dino import DINOLoss, dino_loss
from distill.losses.dist import dist_loss
from distill.losses.dkd import dkd_loss, dkd_warmup
from distill.losses.feature import feature_loss
from distill.losses.kd import kd_loss
from distill.losses.pkt import pkt_loss
from distill.losses.rkd import rkd_angle_loss, rkd_distance_loss
from distill.losses.sp import sp_loss
from distill.losses.vid import VIDLoss, vid_loss

__all__ = [
    "CRDLoss",
    "DINOLoss",
    "VIDLoss",
    "at_loss",
    "dino_loss",
    "dist_loss",
    "dkd_loss",
    "dkd_warmup",
    "feature_loss",
    "info_nce",
    "kd_loss",
    "nce_loss",
    "pkt_loss",
    "relation_contrastive_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "sp_loss",
    "vid_loss",
]
