"""Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation"."""

from __future__ import annotations

import torch
from torch import Tensor

from distill.arguments import MODEL, require_non_negative
from distill.losses import sp_loss
from distill.methods.stage_distillation import StageDistillation, StagePairs
from distill.modules.distributed import gather_rows


class SP(StageDistillation):
    """Similarity-preserving distillation: the student's pairwise similarities within the
    batch match the teacher's, jointly with cross-entropy.

    ``L = γ·CE(y, s) + β·Σ_pairs ‖G̃_t − G̃_s‖_F² / B² + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``
    with ``G̃`` the row-normalised ``B × B`` Gram matrix of a stage's flattened activations
    (``distill.losses.sp_loss``; the two stages may differ in shape). Nothing is learned
    besides the student. Reference CIFAR-100 settings (RepDistiller ``train_student.py
    --distill similarity -a 0 -b 3000``): the last map before pooling, ``feat[-2]``
    (``stage3`` of a CIFAR ResNet or WRN, ``stage4`` of a VGG), ``β = 3000``, ``γ = 1``,
    ``α = 0``.

    Under DDP the similarities are those of the global batch, as on one device: every rank
    gathers all ranks' feature maps (differentiably, ``gather_rows``) and computes the term on
    them, so the update equals one process's on the concatenated batch.

    Args:
        sp_weight: ``β``.
        stages: Stage pairs (default: ``feat[-2]`` of both).
        kd_weight: ``α``.
        **kwargs: ``StageDistillation`` arguments (temperature, ce_weight, backbones, the
            teacher, num_classes, optimisation).
    """

    def __init__(
        self,
        sp_weight: float = 3000.0,
        stages: list[list[str]] | None = None,
        kd_weight: float = 0.0,
        **kwargs,
    ) -> None:
        require_non_negative(f"{MODEL}.sp_weight", sp_weight)
        super().__init__(stages=stages, kd_weight=kd_weight, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.sp_weight = sp_weight

    @classmethod
    def default_stages(cls, student: list[str], teacher: list[str]) -> StagePairs:
        return [(student[-2], teacher[-2])]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        student, logits, teacher, teacher_logits = self.paired_stages(images)
        # The Gram matrices couple the samples: per-rank ones are not the global batch's.
        pairs = [
            gather_rows(self, s, t, sync_grads=True) for s, t in zip(student, teacher, strict=True)
        ]
        similarity = torch.stack([sp_loss(s, t) for s, t in pairs])
        return self.total_loss(
            logits, targets, teacher_logits, "sp", self.sp_weight, similarity.sum()
        )
