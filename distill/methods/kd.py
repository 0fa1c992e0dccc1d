"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from distill.arguments import MODEL, require_non_negative, require_positive
from distill.losses import kd_loss
from distill.methods.distillation import TeacherStudent


class KD(TeacherStudent):
    """Knowledge distillation with soft targets.

    ``L = γ·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``.
    Reference CIFAR-100 settings (CRD paper, RepDistiller): ``T = 4``, ``γ = 0.1``,
    ``α = 0.9``; the teacher is frozen and in eval mode.

    Args:
        temperature: Softening temperature ``T``.
        kd_weight: Weight ``α`` of the soft-target term.
        ce_weight: Weight ``γ`` of the cross-entropy on labels.
        **kwargs: ``TeacherStudent`` arguments (backbones, the teacher, num_classes,
            optimisation).
    """

    teacher_reads: ClassVar[tuple[str, ...]] = ("logits",)  # KD matches logits

    def __init__(
        self, temperature: float = 4.0, kd_weight: float = 0.9, ce_weight: float = 0.1, **kwargs
    ) -> None:
        require_positive(f"{MODEL}.temperature", temperature)
        require_non_negative(f"{MODEL}.kd_weight", kd_weight)
        super().__init__(ce_weight=ce_weight, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.temperature = temperature
        self.kd_weight = kd_weight

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        logits, teacher_logits = self.student_and_teacher_logits(images)
        ce = F.cross_entropy(logits, targets)
        kd = kd_loss(logits, teacher_logits, self.temperature)
        loss = self.ce_weight * ce + self.kd_weight * kd
        self.log_terms({"loss": loss, "ce": ce, "kd": kd})
        return loss
