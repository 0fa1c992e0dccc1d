"""Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.arguments import MODEL, require_int, require_non_negative
from distill.errors import ConfigError
from distill.losses import feature_loss
from distill.methods.stage_distillation import StageDistillation, StagePairs
from distill.modules.connectors import StageConnectors


class FitNets(StageDistillation):
    """FitNets: a student stage, through a learned regressor, regresses the teacher's (the
    hint), trained jointly with cross-entropy as RepDistiller does.

    ``L = γ·CE(y, s) + β·Σ_pairs mean (r(f_s) − f_t)² + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``.

    ``r`` is RepDistiller's ``ConvReg`` (``distill.modules.Connector`` with its ReLU): a
    convolution matching channels and resolution, batch norm, ReLU, one per stage pair; the
    regressors train with the student and are dropped at export. Reference CIFAR-100 settings
    (RepDistiller ``train_student.py --distill hint -a 0 -b 100``): one hint on ``feat[2]``
    (``stage2``, its ``hint_layer``), ``β = 100``, ``γ = 1``, ``α = 0``. FitNets' paper
    trains the hint alone first; RepDistiller, and this, train it jointly from the start.

    Args:
        hint_weight: ``β``.
        image_size: The side of the training images, on which a dry run measures the stages
            the regressors map between (a map twice, half or otherwise larger than its pair
            takes another convolution).
        stages: Stage pairs (default ``[[stage2, stage2]]``: ``feat[2]`` of both).
        kd_weight: ``α``.
        **kwargs: ``StageDistillation`` arguments (temperature, ce_weight, backbones, the
            teacher, num_classes, optimisation).
    """

    def __init__(
        self,
        hint_weight: float = 100.0,
        image_size: int = 32,
        stages: list[list[str]] | None = None,
        kd_weight: float = 0.0,
        **kwargs,
    ) -> None:
        require_non_negative(f"{MODEL}.hint_weight", hint_weight)
        require_int(f"{MODEL}.image_size", image_size, 1)
        super().__init__(stages=stages, kd_weight=kd_weight, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.hint_weight = hint_weight
        self.image_size = image_size
        try:
            self.connectors = StageConnectors.from_backbones(
                self.stage_pairs,
                self.student.backbone,
                self.teacher.backbone,
                image_size,
                teacher_image_size=self.teacher_inputs.image_size,
                relu=True,
            )
        except ConfigError as error:
            raise ConfigError(f"{MODEL}.stages: {error}") from error

    @classmethod
    def default_stages(cls, student: list[str], teacher: list[str]) -> StagePairs:
        if len(student) < 4 or len(teacher) < 4:  # feat[2] must be a map, not the embedding
            raise ConfigError(
                f"{MODEL}.stages: FitNets' default hint is the third stage (RepDistiller's "
                f"feat[2]), but the student has {', '.join(student)} and the teacher "
                f"{', '.join(teacher)}; name the pair, e.g. [[{student[-2]}, {teacher[-2]}]]"
            )
        return [(student[2], teacher[2])]

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.connectors]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        student, logits, teacher, teacher_logits = self.paired_stages(images)
        hints = self.connectors(dict(zip([s for s, _ in self.stage_pairs], student, strict=True)))
        side = images.shape[-1]
        hint = torch.stack(
            [
                self._hint_loss(h, t, pair, side)
                for h, t, pair in zip(hints, teacher, self.stage_pairs, strict=True)
            ]
        ).sum()
        return self.total_loss(logits, targets, teacher_logits, "hint", self.hint_weight, hint)

    def _hint_loss(self, hint: Tensor, teacher: Tensor, pair: tuple[str, str], side: int) -> Tensor:
        """The mean squared error of one pair; one message if its shapes do not meet, which
        happens when the regressor was built for other image sizes."""
        if hint.shape != teacher.shape:
            raise ConfigError(
                f"{MODEL}.image_size={self.image_size}: the regressor of stage pair {list(pair)} "
                f"was built for {self.image_size} px images and gives "
                f"{tuple(hint.shape[1:])} on this batch of {side} px images, while the "
                f"teacher's stage is {tuple(teacher.shape[1:])}; set image_size to the side "
                "of the training images"
            )
        return feature_loss(hint, teacher, "mse")
