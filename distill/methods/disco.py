"""Gao et al. 2022, "DisCo: Remedying Self-supervised Learning on Lightweight Models with
Distilled Contrastive Learning"."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from distill.arguments import (
    MODEL,
    require_each,
    require_non_negative,
    require_positive,
    require_positive_int,
    require_probability,
)
from distill.backbones import create_backbone
from distill.losses.contrastive import info_nce
from distill.losses.disco import consistency_loss
from distill.methods.frozen_teacher import FrozenTeacherMethod
from distill.methods.moco import KeyQueueStep
from distill.modules.momentum_encoder import MomentumEncoder, two_views
from distill.teachers import TeacherConfig


class DisCo(KeyQueueStep, FrozenTeacherMethod):
    """DisCo: MoCo-v2 plus the frozen teacher's final embedding as a target for the student's.

    ``L = InfoNCE(q₁, k₂, queue) + w·(‖q₁ − t₁‖² + ‖q₂ − t₂‖²)``, batch means, where
    ``q_v = normalise(g_q(f_q(x_v)))`` is the student's query encoder's final embedding of
    view ``v`` (both views go through it), ``k₂`` the key of view 2 and ``t_v`` the frozen
    teacher's L2-normalised final embedding of the same view (``distill.losses.disco``).
    The MoCo-v2 part is ``distill.methods.MoCo``'s: the key encoder is the query encoder's
    EMA (after each optimiser step), the keys of every rank replace the oldest ones in the
    queue, shuffle-BN keeps keys from their queries' batch statistics; ``symmetric`` uses
    both views as queries. The student's embedding has the width of the teacher's; its head
    hidden width is ``proj_hidden_dim`` (DisCo widens it to 2048 against the "distilling
    bottleneck"). The teacher (``FrozenTeacherMethod``) is frozen and in eval mode (the
    official code leaves it in training mode, normalising with each batch's statistics);
    of a MoCo checkpoint its query encoder is taken, as the official ``teacher_encoder_q``.

    The official code (Yuting-Gao/DisCo-pytorch, ``DisCo/main.py``) weights both terms 1 but
    sums the squared error over each GPU's batch (``MSELoss(reduction='sum')``, 8 GPUs x 32
    images) while InfoNCE is a mean; with the per-image distance here its weight is the
    images per GPU, ``w = 32``, the default. Reference settings (ImageNet): MoCo-v2 ResNet-50
    teacher (128-d head output), students EfficientNet-B0, ResNet-18/34, MobileNet-V3; head
    hidden 2048 → 128, ``τ = 0.2``, ``m = 0.999``, queue 65536, SGD lr 0.03, batch 256,
    momentum 0.9, weight decay 1e-4, cosine, 200 epochs, asymmetric loss.

    Args:
        student_backbone: Backbone name of the student (``self.student.backbone``).
        student_backbone_kwargs: Extra student backbone arguments.
        proj_hidden_dim: Hidden width of the student's MLP head.
        queue_size: Number of queued keys.
        temperature: ``τ`` of InfoNCE.
        key_momentum: ``m`` of the key encoder.
        symmetric: Use both views as queries (mean of the two InfoNCE losses).
        shuffle_bn: ``auto`` (``ranks`` under DDP, else ``split``), ``split``, ``ranks``, ``off``.
        bn_groups: Batch-norm groups of ``split``.
        consistency_weight: ``w``; 0 is MoCo-v2.
        teacher_backbone: Short form: backbone name of the teacher.
        teacher_checkpoint: Short form: the teacher's weights (see ``FrozenTeacherMethod``).
        teacher_embedding: The teacher space taught: its MoCo ``head`` output or its
            ``backbone`` features (see ``FrozenTeacherMethod``).
        teacher: The teacher's specification (``distill.teachers.TeacherSpec``), instead of
            the short form; its weights are required.
        **kwargs: The teacher's other arguments (``teacher_backbone_kwargs``,
            ``teacher_proj_hidden_dim``, ``teacher_proj_dim``; see ``FrozenTeacherMethod``) and
            the optimisation arguments of ``Method``.
    """

    def __init__(
        self,
        student_backbone: str = "resnet18",
        teacher_backbone: str = "resnet50",
        student_backbone_kwargs: dict | None = None,
        proj_hidden_dim: int | None = 2048,
        queue_size: int = 65536,
        temperature: float = 0.2,
        key_momentum: float = 0.999,
        symmetric: bool = False,
        shuffle_bn: Literal["auto", "split", "ranks", "off"] = "auto",
        bn_groups: int = 8,
        consistency_weight: float = 32.0,
        teacher_checkpoint: str | None = None,
        teacher_embedding: Literal["head", "backbone"] = "head",
        teacher: TeacherConfig | None = None,
        **kwargs,
    ) -> None:
        require_each(require_positive_int, MODEL, queue_size=queue_size)
        if proj_hidden_dim is not None:
            require_positive_int(f"{MODEL}.proj_hidden_dim", proj_hidden_dim)
        require_positive(f"{MODEL}.temperature", temperature)
        require_probability(f"{MODEL}.key_momentum", key_momentum)
        require_non_negative(f"{MODEL}.consistency_weight", consistency_weight)
        super().__init__(
            teacher_backbone=teacher_backbone, teacher_checkpoint=teacher_checkpoint,
            teacher_embedding=teacher_embedding, teacher=teacher, **kwargs,
        )  # fmt: skip
        self.save_hyperparameters(ignore=["optimizer"])
        self.temperature = temperature
        self.key_momentum = key_momentum
        self.symmetric = symmetric
        self.consistency_weight = consistency_weight
        self.student = MomentumEncoder(
            create_backbone(student_backbone, **(student_backbone_kwargs or {})),
            proj_hidden_dim, self.teacher.num_features, queue_size,
            shuffle_bn=shuffle_bn, bn_groups=bn_groups,
        )  # fmt: skip
        self._pending_keys: Tensor | None = None

    def training_step(self, batch, batch_idx: int) -> Tensor:
        views, _ = two_views(batch)
        size = len(views[0])
        with self.keep_step_features(size, "student", "teacher"):  # view 1's
            queries, keys = self.student.queries_and_keys(views, self.symmetric)
            # Symmetric queries are view 1's then view 2's; else view 2 goes through f_q too.
            second = queries[size:] if self.symmetric else self.student.queries(views[1])
            teacher = [self.teacher_embeddings(view) for view in views]
        contrastive = info_nce(queries, keys, self.student.queue.keys, self.temperature)
        student = [queries[:size], second]
        consistency = sum(map(consistency_loss, student, teacher))
        loss = contrastive + self.consistency_weight * consistency
        self.log_terms({"loss": loss, "contrastive": contrastive, "consistency": consistency})
        self._pending_keys = keys
        return loss
