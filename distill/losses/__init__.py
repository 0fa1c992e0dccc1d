"""Loss functions: pure functions of tensors (thin modules only where state must live)."""

from distill.losses.crd import CRDLoss, nce_loss
from distill.losses.kd import kd_loss
from distill.losses.rkd import rkd_angle_loss, rkd_distance_loss

__all__ = ["CRDLoss", "kd_loss", "nce_loss", "rkd_angle_loss", "rkd_distance_loss"]
