"""Fang et al. 2021, "SEED: Self-supervised Distillation for Visual Representation"."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import MoCoProjectionHead
from torch import Tensor

from distill.arguments import MODEL, require_positive, require_positive_int
from distill.backbones import create_backbone
from distill.losses.seed import seed_loss, seed_targets
from distill.methods.frozen_teacher import FrozenTeacherMethod
from distill.modules.distributed import gather_rows
from distill.modules.heads import MultiCropWrapper
from distill.modules.queue import KeyQueue
from distill.teachers import TeacherConfig


class SEED(FrozenTeacherMethod):
    """SEED: the student learns the frozen teacher's similarity distribution over a queue.

    For each image, ``t`` is the teacher's and ``s`` the student's L2-normalised embedding;
    the candidates are ``t`` itself and the queue ``u_1..u_Q`` of earlier teacher
    embeddings, and

    ``L = -Σ_j p^T_j log p^S_j``, ``p^T = softmax([t·t, t·u_j]/τ_t)``,
    ``p^S = softmax([s·t, s·u_j]/τ_s)`` (``distill.losses.seed``),

    the batch mean. After each step (``on_train_batch_end``) the teacher embeddings of the
    batch, gathered from every rank, replace the oldest ones in the queue, so every rank
    holds the same queue. The student is a backbone with a 2-layer MLP head (MoCo-v2's)
    whose output has the width of the teacher's embedding; ``self.student.backbone`` is
    what k-NN, linear probes and ``distill export`` take. The teacher (``FrozenTeacherMethod``)
    is frozen and in eval mode; of a MoCo checkpoint its query encoder is taken, with its
    head (``teacher_embedding: head``) or without (``backbone``, e.g. a supervised teacher).

    The paper feeds teacher and student the same single augmented view; a batch of several
    views (``TwoViews``) distils each view the same way (one loss over all of them) and
    queues all their teacher embeddings. Reference settings (ImageNet, the paper and
    jacobswan1/SEED): MoCo-v2 ResNet-50 teacher (its 128-d head output), students ResNet-18,
    EfficientNet-B0, MobileNet-V3; ``τ_s = 0.2``, ``τ_t = 0.01`` (the paper's; the code's
    default ``--distill-t`` is 1e-4), queue 65536, student head hidden = its backbone width,
    SGD lr 0.03 at batch 256, momentum 0.9, weight decay 1e-4 (the code's default), cosine,
    200 epochs.

    Args:
        student_backbone: Backbone name of the student.
        student_backbone_kwargs: Extra student backbone arguments.
        proj_hidden_dim: Hidden width of the student's head (``None``: its backbone's width).
        queue_size: ``Q``, queued teacher embeddings.
        student_temperature: ``τ_s``.
        teacher_temperature: ``τ_t``.
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
        proj_hidden_dim: int | None = None,
        queue_size: int = 65536,
        student_temperature: float = 0.2,
        teacher_temperature: float = 0.01,
        teacher_checkpoint: str | None = None,
        teacher_embedding: Literal["head", "backbone"] = "head",
        teacher: TeacherConfig | None = None,
        **kwargs,
    ) -> None:
        require_positive_int(f"{MODEL}.queue_size", queue_size)
        if proj_hidden_dim is not None:
            require_positive_int(f"{MODEL}.proj_hidden_dim", proj_hidden_dim)
        require_positive(f"{MODEL}.student_temperature", student_temperature)
        require_positive(f"{MODEL}.teacher_temperature", teacher_temperature)
        super().__init__(
            teacher_backbone=teacher_backbone, teacher_checkpoint=teacher_checkpoint,
            teacher_embedding=teacher_embedding, teacher=teacher, **kwargs,
        )  # fmt: skip
        self.save_hyperparameters(ignore=["optimizer"])
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        backbone = create_backbone(student_backbone, **(student_backbone_kwargs or {}))
        width = self.teacher.num_features  # the student's embedding is compared with the teacher's
        head = MoCoProjectionHead(
            backbone.num_features, proj_hidden_dim or backbone.num_features, width
        )
        self.student = MultiCropWrapper(backbone, head)
        self.queue = KeyQueue(queue_size, width)
        self._pending: Tensor | None = None

    def training_step(self, batch, batch_idx: int) -> Tensor:
        views = list(batch[0]) if isinstance(batch[0], list | tuple) else [batch[0]]
        with self.keep_step_features(len(views[0]), "student", "teacher"):  # the first view's
            student = F.normalize(torch.cat(self.student(views)), dim=1)
            teacher = torch.cat([self.teacher_embeddings(view) for view in views])
        loss = seed_loss(
            student, teacher, self.queue.keys, self.student_temperature, self.teacher_temperature
        )
        self.log_terms({"loss": loss, **self.teacher_diagnostics(teacher)})
        self._pending = teacher
        return loss

    @torch.no_grad()
    def teacher_diagnostics(self, teacher: Tensor) -> dict[str, Tensor]:
        """How peaked the teacher's distribution is: its entropy and the weight on itself.

        At ``τ_t → 0`` it is one-hot on the image's own embedding (entropy 0, own weight 1)
        and SEED teaches instance discrimination alone; the rest of its mass is the
        similarity structure the student is to learn.
        """
        targets = seed_targets(teacher, self.queue.keys, self.teacher_temperature)
        entropy = -(targets * targets.clamp_min(1e-30).log()).sum(dim=1).mean()
        return {"teacher_entropy": entropy, "teacher_own_weight": targets[:, 0].mean()}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.batch_skipped():  # nonfinite_loss: skip; its embeddings may be NaN
            return
        # Gathered from all ranks, so every rank queues the same embeddings in the same slots.
        views = len(batch[0]) if isinstance(batch[0], list | tuple) else 1
        (teacher,) = gather_rows(self, self._pending, views=views)
        self.queue.enqueue(teacher)
        self._pending = None
