"""Loss functions: pure functions of tensors (thin modules only where state must live)."""

from distill.losses.kd import kd_loss
from distill.losses.rkd import rkd_angle_loss, rkd_distance_loss

__all__ = ["kd_loss", "rkd_angle_loss", "rkd_distance_loss"]
