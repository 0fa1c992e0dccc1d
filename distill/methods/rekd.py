"""Zheng, Wang, Yuan 2022, "Boosting Contrastive Learning with Relation Knowledge Distillation"."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.losses.contrastive import info_nce, relation_contrastive_loss
from distill.methods.base import Method
from distill.modules.distributed import gather_rows
from distill.modules.momentum_encoder import MomentumEncoder, two_views
from distill.modules.prototypes import PrototypeBank


class ReKD(Method):
    """ReKD: an online heterogeneous teacher mines semantic relations for a lightweight student.

    Teacher and student are both MoCo-v2 encoders (query network, EMA key network, queue)
    trained together from scratch. The teacher learns only from its own InfoNCE; in its
    embedding space a ``PrototypeBank`` assigns each embedding to a prototype
    (``Q(e) = argmax_k ⟨e, p_k⟩`` if ``≥ Θ``, else ``-1``). The student learns

    ``L_s = InfoNCE(q, k⁺, queue) + λ·L_rel``, ``L_rel = -(1/|P|) Σ_{c ∈ P} log p(c)``,

    where ``p`` is the softmax of ``q`` against ``{k⁺} ∪ queue`` and the positive set ``P``
    is its own key plus every queued key ``u_j`` with ``Q(z) = Q(u_j^t) ≠ -1``: ``z`` is the
    teacher's (detached) embedding of the anchor image and ``u_j^t`` the teacher's key in
    the same slot ``j`` (both queues receive the keys of the same images, so slot ``j``
    holds the same image in each). The total is ``L = L_s + InfoNCE_teacher``; the relation
    carries no gradient to the teacher.

    The paper does not say which teacher encoder gives the anchor embedding ``z``. By
    default (``anchor_embedding: key``) it is the teacher's key of the anchor image, from
    the key encoder that also made the queued candidates and the k-means prototypes: early
    in training the EMA key encoder lags far behind the query encoder (``q·k⁺`` near 0 while
    keys are packed in a narrow cone), so query anchors would fall below ``Θ`` for every
    prototype and mine nothing. ``anchor_embedding: query`` uses the teacher's query.

    The bank is initialised by spherical k-means on the teacher's queue the first time the
    queue is full after ``prototype_init_step`` optimiser steps; until then ``L_rel`` is
    off and the student trains with InfoNCE alone. After each step the prototypes move
    towards the teacher's anchor embeddings (``PrototypeBank.update``), the key encoders
    follow their query encoders and both queues take the step's keys, all from the keys
    and embeddings of every rank, so each rank holds the same state.

    Reference settings (ImageNet, 200 epochs): ResNet-50 teacher; ResNet-18, MobileNetV2,
    EfficientNet-B0 students; MoCo-v2 recipe for both (``τ = 0.2``, ``m = 0.999``, queue
    65536, SGD lr 0.03, batch 256, cosine). The paper's ``K``, ``Θ``, ``λ`` and the exact
    similarity-based prototype momentum are not known to us; the defaults below are our
    choice: ``K = 4096`` (about 16 queued keys per prototype: over-clustering keeps the
    mined positives precise), ``Θ = 0.5``, ``λ = 1``, base momentum 0.99.

    Args:
        student_backbone: Backbone name of the student (``self.student.backbone``).
        teacher_backbone: Backbone name of the teacher (``self.teacher.backbone``).
        student_backbone_kwargs: Extra student backbone arguments.
        teacher_backbone_kwargs: Extra teacher backbone arguments.
        proj_hidden_dim: Hidden width of both MLP heads (``None``: each backbone's width).
        proj_dim: Embedding width of both (128).
        queue_size: Keys per queue (both queues have this size).
        temperature: ``τ`` of every contrast.
        key_momentum: EMA momentum of both key encoders.
        symmetric: Use both views as queries (both keys are queued).
        relation_weight: ``λ``.
        num_prototypes: ``K``, at most ``queue_size``.
        threshold: ``Θ``, a cosine similarity in ``[-1, 1]``.
        prototype_momentum: Base momentum of the prototype update.
        prototype_init_step: Optimiser steps before the bank may be initialised.
        kmeans_iterations: Lloyd iterations of the initial spherical k-means.
        kmeans_restarts: k-means runs; the best is kept.
        anchor_embedding: The teacher embedding of the anchor that is assigned to a
            prototype and updates the bank: its ``key`` (default) or its ``query``.
        **kwargs: Optimisation arguments of ``Method`` (optimizer, lr_schedule, ...).
    """

    monitor = "val/knn_top1"

    def __init__(
        self,
        student_backbone: str = "resnet18",
        teacher_backbone: str = "resnet50",
        student_backbone_kwargs: dict | None = None,
        teacher_backbone_kwargs: dict | None = None,
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        key_momentum: float = 0.999,
        symmetric: bool = False,
        relation_weight: float = 1.0,
        num_prototypes: int = 4096,
        threshold: float = 0.5,
        prototype_momentum: float = 0.99,
        prototype_init_step: int = 0,
        kmeans_iterations: int = 20,
        kmeans_restarts: int = 3,
        anchor_embedding: Literal["key", "query"] = "key",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        if num_prototypes > queue_size:
            raise ConfigError(
                f"model.init_args.num_prototypes={num_prototypes} exceeds queue_size="
                f"{queue_size}; valid: 1 <= num_prototypes <= queue_size (k-means clusters "
                "the teacher's queue)"
            )
        if not 0.0 <= key_momentum <= 1.0:
            raise ConfigError(f"model.init_args.key_momentum={key_momentum}; valid: [0, 1]")
        if anchor_embedding not in ("key", "query"):
            raise ConfigError(
                f"model.init_args.anchor_embedding={anchor_embedding!r}; valid: key, query"
            )
        self.anchor_embedding = anchor_embedding
        self.temperature = temperature
        self.key_momentum = key_momentum
        self.symmetric = symmetric
        self.relation_weight = relation_weight
        self.prototype_init_step = prototype_init_step
        self.student = MomentumEncoder(
            create_backbone(student_backbone, **(student_backbone_kwargs or {})),
            proj_hidden_dim, proj_dim, queue_size,
        )  # fmt: skip
        self.teacher = MomentumEncoder(
            create_backbone(teacher_backbone, **(teacher_backbone_kwargs or {})),
            proj_hidden_dim, proj_dim, queue_size, track_labels=True,
        )  # fmt: skip
        self.prototypes = PrototypeBank(
            num_prototypes, proj_dim, threshold, prototype_momentum,
            kmeans_iterations, kmeans_restarts,
        )  # fmt: skip
        self._pending: tuple[Tensor, ...] | None = None

    def forward(self, images: Tensor) -> Tensor:
        """Student backbone features ``[B, D]``."""
        return self.student.backbone(images)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.teacher]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        views, targets = two_views(batch)
        teacher_q, teacher_k = self.teacher.queries_and_keys(views, self.symmetric)
        student_q, student_k = self.student.queries_and_keys(views, self.symmetric)
        anchors = (teacher_k if self.anchor_embedding == "key" else teacher_q).detach()
        targets = targets.repeat(len(anchors) // len(targets))
        tau = self.temperature
        terms = {
            "teacher_moco": info_nce(teacher_q, teacher_k, self.teacher.queue.keys, tau),
            "student_instance": info_nce(student_q, student_k, self.student.queue.keys, tau),
        }
        loss = terms["teacher_moco"] + terms["student_instance"]
        if bool(self.prototypes.initialized):
            positives, diagnostics = self.mine_positives(anchors, targets)
            terms["student_relation"] = relation_contrastive_loss(
                student_q, student_k, self.student.queue.keys, positives, tau
            )
            loss = loss + self.relation_weight * terms["student_relation"]
            terms.update(diagnostics)
        self.log_terms({"loss": loss, **terms})
        self._pending = (student_k, teacher_k, anchors, targets)
        return loss

    @torch.no_grad()
    def mine_positives(self, anchors: Tensor, targets: Tensor) -> tuple[Tensor, dict]:
        """The relation ``[B, Q]`` of teacher anchors to the queue's slots, and its diagnostics.

        Labels (``targets``, the queued labels) only enter the diagnostic ``mined_precision``:
        the fraction of mined (anchor, slot) pairs, both labelled, of the same class.
        """
        queue = self.teacher.queue
        valid = queue.valid()
        anchor_q = self.prototypes.assign(anchors)
        candidate_q = self.prototypes.assign(queue.keys)
        positives = PrototypeBank.relation_of(anchor_q, candidate_q) & valid
        in_use = torch.cat([anchor_q, candidate_q[valid]]).unique()
        diagnostics = {
            "prototypes_in_use": float((in_use >= 0).sum()),
            "unassigned_fraction": (anchor_q < 0).float().mean(),
            "mined_positives": positives.sum(dim=1).float().mean(),
        }
        labelled = positives & (targets >= 0).unsqueeze(1) & (queue.labels >= 0).unsqueeze(0)
        if labelled.any():
            correct = labelled & (targets.unsqueeze(1) == queue.labels.unsqueeze(0))
            diagnostics["mined_precision"] = correct.sum() / labelled.sum()
        return positives, diagnostics

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.optimizer_stepped():
            self.student.update_key_encoder(self.key_momentum)
            self.teacher.update_key_encoder(self.key_momentum)
        # Gathered from all ranks; both queues take the same images in the same slots.
        student_k, teacher_k, anchors, targets = gather_rows(self, *self._pending)
        self.prototypes.update(anchors)
        self.student.queue.enqueue(student_k)
        self.teacher.queue.enqueue(teacher_k, targets)
        ready = self.global_step >= self.prototype_init_step and self.teacher.queue.is_full
        if ready and not bool(self.prototypes.initialized):
            self.prototypes.init_from(self.teacher.queue.keys)
        self._pending = None

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing: k-NN and linear-probe callbacks evaluate at the end of validation."""
