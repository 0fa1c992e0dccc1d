"""Ahn et al. 2019, "Variational Information Distillation for Knowledge Transfer"."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.arguments import MODEL, require_int, require_non_negative, require_number
from distill.errors import ConfigError
from distill.losses import VIDLoss
from distill.methods.stage_distillation import StageDistillation, StagePairs

#: ``VIDLoss``'s floor under the variances (RepDistiller's ``eps``).
MIN_VARIANCE = 1e-5


class VID(StageDistillation):
    """Variational information distillation: each teacher stage is modelled as a Gaussian
    around a regression of the student's, with a learned per-channel variance; the student,
    the regressors and the variances minimise its negative log-likelihood, jointly with
    cross-entropy.

    ``L = γ·CE(y, s) + β·Σ_pairs 0.5·mean(log σ²_c + (f_t − μ(f_s))² / σ²_c)
    + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`` (``distill.losses.VIDLoss``: ``μ`` three 1x1
    convolutions, ``σ²_c = softplus(·) + 1e-5``; a larger map is pooled to its pair's size).
    The regressors and variances train with the student and are dropped at export.
    Reference CIFAR-100 settings (RepDistiller ``train_student.py --distill vid -a 0 -b 1``):
    one ``VIDLoss`` per stage after the stem, ``feat[1:-1]``, summed; ``β = 1``, ``γ = 1``,
    ``α = 0``, initial variance 5.

    Args:
        vid_weight: ``β``.
        init_variance: ``σ²`` at the start.
        image_size: The side of the training images, on which a dry run measures the
            stages' channels.
        stages: Stage pairs (default: ``feat[1:-1]`` of both, paired in order).
        kd_weight: ``α``.
        **kwargs: ``StageDistillation`` arguments (temperature, ce_weight, backbones, the
            teacher, num_classes, optimisation).
    """

    def __init__(
        self,
        vid_weight: float = 1.0,
        init_variance: float = 5.0,
        image_size: int = 32,
        stages: list[list[str]] | None = None,
        kd_weight: float = 0.0,
        **kwargs,
    ) -> None:
        require_non_negative(f"{MODEL}.vid_weight", vid_weight)
        require_number(f"{MODEL}.init_variance", init_variance, MIN_VARIANCE, low_open=True)
        require_int(f"{MODEL}.image_size", image_size, 1)
        super().__init__(stages=stages, kd_weight=kd_weight, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.vid_weight = vid_weight
        student_shapes, teacher_shapes = self.paired_shapes(image_size)
        for pair, student, teacher in zip(
            self.stage_pairs, student_shapes, teacher_shapes, strict=True
        ):
            if len(student) != 3 or len(teacher) != 3:
                raise ConfigError(
                    f"{MODEL}.stages: VID pairs feature maps (C, h, w), but stage pair "
                    f"{list(pair)} gives {student} and {teacher}"
                )
        self.vid = nn.ModuleList(
            VIDLoss(student[0], teacher[0], init_variance=init_variance, min_variance=MIN_VARIANCE)
            for student, teacher in zip(student_shapes, teacher_shapes, strict=True)
        )

    @classmethod
    def default_stages(cls, student: list[str], teacher: list[str]) -> StagePairs:
        return cls.inner_pairs(student, teacher)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.vid]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        student, logits, teacher, teacher_logits = self.paired_stages(images)
        information = torch.stack(
            [vid(s, t) for vid, s, t in zip(self.vid, student, teacher, strict=True)]
        )
        return self.total_loss(
            logits, targets, teacher_logits, "vid", self.vid_weight, information.sum()
        )
