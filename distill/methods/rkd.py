"""Park et al. 2019, "Relational Knowledge Distillation"."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from distill.errors import ConfigError
from distill.losses import rkd_angle_loss, rkd_distance_loss
from distill.methods.distillation import TeacherStudent


class RKD(TeacherStudent):
    """Relational knowledge distillation on penultimate embeddings.

    ``L = γ·CE(y, s) + β·(w_D·L_D + w_A·L_A)`` with the distance-wise ``L_D`` and
    angle-wise ``L_A`` losses of ``distill.losses`` (each the mean Huber loss over all
    pairs, resp. triplets, as the reference computes it). Modes ``D``, ``A`` and ``DA``
    (both). Reference weights ``w_D = 25``, ``w_A = 50`` apply to raw pooled features
    (RepDistiller, mdistiller); the RKD authors' CIFAR script L2-normalises first
    (``normalize: true``).

    Args:
        mode: Which relations to transfer: ``D``, ``A`` or ``DA``.
        distance_weight: ``w_D``.
        angle_weight: ``w_A``.
        rkd_weight: ``β``, on the sum of the relational terms.
        normalize: L2-normalise embeddings before computing relations.
        ce_weight: ``γ``.
        **kwargs: ``TeacherStudent`` arguments.
    """

    def __init__(
        self,
        mode: Literal["D", "A", "DA"] = "DA",
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        rkd_weight: float = 1.0,
        normalize: bool = False,
        ce_weight: float = 1.0,
        **kwargs,
    ) -> None:
        if mode not in ("D", "A", "DA"):
            raise ConfigError(f"model.init_args.mode={mode!r}; valid: D, A, DA")
        super().__init__(ce_weight=ce_weight, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.mode = mode
        self.distance_weight = distance_weight if "D" in mode else 0.0
        self.angle_weight = angle_weight if "A" in mode else 0.0
        self.rkd_weight = rkd_weight
        self.normalize = normalize

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        student_emb, logits, teacher_emb, _ = self.student_and_teacher(images)
        if self.normalize:
            student_emb, teacher_emb = F.normalize(student_emb), F.normalize(teacher_emb)
        terms = {"ce": F.cross_entropy(logits, targets)}
        relational = logits.new_zeros(())
        if self.distance_weight:
            terms["rkd_distance"] = rkd_distance_loss(student_emb, teacher_emb)
            relational = relational + self.distance_weight * terms["rkd_distance"]
        if self.angle_weight:
            terms["rkd_angle"] = rkd_angle_loss(student_emb, teacher_emb)
            relational = relational + self.angle_weight * terms["rkd_angle"]
        loss = self.ce_weight * terms["ce"] + self.rkd_weight * relational
        self.log_terms({"loss": loss, **terms})
        return loss
