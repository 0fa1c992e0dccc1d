"""Zagoruyko & Komodakis 2017, "Paying More Attention to Attention: Improving the Performance
of Convolutional Neural Networks via Attention Transfer"."""

from __future__ import annotations

from torch import Tensor

from distill.arguments import MODEL, require_non_negative
from distill.losses import at_loss
from distill.methods.stage_distillation import StageDistillation, StagePairs


class AT(StageDistillation):
    """Attention transfer: the student's spatial attention maps match the teacher's at
    several stages, jointly with cross-entropy.

    ``L = γ·CE(y, s) + β·Σ_j mean (Q_s^j − Q_t^j)² + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``
    with ``Q^j`` the channel mean of ``f_j²``, flattened and L2-normalised per sample
    (``distill.losses.at_loss``; a larger map is pooled to its pair's size). Nothing is
    learned besides the student. Reference CIFAR-100 settings (RepDistiller
    ``train_student.py --distill attention -a 0 -b 1000``): every stage after the stem,
    ``feat[1:-1]`` (``stage1`` ... ``stage3`` of a CIFAR ResNet or WRN, to ``stage4`` of a
    VGG), ``β = 1000`` on the sum over pairs, ``γ = 1``, ``α = 0``.

    Args:
        at_weight: ``β``.
        stages: Stage pairs (default: ``feat[1:-1]`` of both, paired in order).
        kd_weight: ``α``.
        **kwargs: ``StageDistillation`` arguments (temperature, ce_weight, backbones, the
            teacher, num_classes, optimisation).
    """

    def __init__(
        self,
        at_weight: float = 1000.0,
        stages: list[list[str]] | None = None,
        kd_weight: float = 0.0,
        **kwargs,
    ) -> None:
        require_non_negative(f"{MODEL}.at_weight", at_weight)
        super().__init__(stages=stages, kd_weight=kd_weight, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.at_weight = at_weight

    @classmethod
    def default_stages(cls, student: list[str], teacher: list[str]) -> StagePairs:
        return cls.inner_pairs(student, teacher)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        student, logits, teacher, teacher_logits = self.paired_stages(images)
        attention = at_loss(student, teacher)
        return self.total_loss(logits, targets, teacher_logits, "at", self.at_weight, attention)
