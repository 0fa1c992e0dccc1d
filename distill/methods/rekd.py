"""Zheng, Wang, Yuan 2022, "Boosting Contrastive Learning with Relation Knowledge Distillation"."""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from distill.arguments import (
    MODEL,
    require_choice,
    require_each,
    require_int,
    require_number,
    require_positive,
    require_positive_int,
)
from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.losses.contrastive import info_nce, relation_contrastive_loss
from distill.methods.base import Method
from distill.methods.teacher_hooks import TeacherHooks
from distill.modules.distributed import gather_rows
from distill.modules.momentum_encoder import MomentumEncoder, two_views
from distill.modules.prototypes import PrototypeBank
from distill.teachers import TeacherConfig, TeacherSpec, build_momentum_teacher, frozen_forward


class ReKD(TeacherHooks, Method):
    """ReKD: a heterogeneous teacher mines semantic relations for a lightweight student.

    Teacher and student are MoCo-v2 encoders (query network, EMA key network, queue). In the
    teacher's embedding space a ``PrototypeBank`` assigns each embedding to a prototype
    (``Q(e) = argmax_k ⟨e, p_k⟩`` if ``≥ Θ``, else ``-1``). The student learns

    ``L_s = (1 − λ)·InfoNCE(q, k⁺, queue) + λ·L_rel``, ``L_rel = -(1/|P|) Σ_{c ∈ P} log p(c)``,

    the relation-wise contrast of ``../shared/METHODS.md``: ``p`` is the softmax of ``q``
    against ``{k⁺} ∪ queue`` and the positive set ``P`` is its own key plus every queued key
    ``u_j`` with ``Q(z) = Q(u_j^t) ≠ -1`` (``z`` the teacher's detached embedding of the
    anchor image, ``u_j^t`` the teacher's key in slot ``j``: both queues take the keys of
    the same images, so slot ``j`` holds the same image in each). ``λ = 1`` is the relation
    loss alone, ``λ = 0`` exactly MoCo-v2; with no positive mined ``L_rel`` is InfoNCE, so
    ``L_s`` is InfoNCE for every ``λ``. The total is ``L = L_s + InfoNCE_teacher`` (no
    teacher term when it is frozen); the relation carries no gradient to the teacher.

    The teacher is online (trained from scratch with the student, as in the paper) or
    initialised from its weights (``teacher``, a ``distill.teachers.TeacherSpec``, or the
    short form ``teacher_checkpoint``: a MoCo, ReKD or Supervised run, an official MoCo, DINO
    or other project's checkpoint, a state dict) and then trained on or frozen, the setting
    of SEED and DisCo: a momentum encoder's query and key encoders both come from the file
    (``distill.teachers.network.fill_momentum_encoder``). The weights are read at the start
    of a fit (or a validation) that does not restore a checkpoint: a resumed run,
    ``distill eval`` and ``distill export`` take the teacher from the run's own checkpoint
    (``distill.teachers.TeacherWeights``). A frozen teacher stays in eval mode and runs
    under ``torch.inference_mode``; with ``teacher_embedding: backbone`` it relates images
    by its backbone features (for a checkpoint without a trained MoCo head; with ``head``, a
    file without one is refused, never given a random head). ``relation: labels`` relates
    images by their true labels instead: an oracle, a diagnostic upper bound, never a
    self-supervised result.

    The paper does not say which teacher encoder gives the anchor embedding ``z``. By
    default (``anchor_embedding: key``) it is the teacher's key of the anchor image, from
    the key encoder that also made the queued candidates and the k-means prototypes: early
    in training the EMA key encoder lags far behind the query encoder, so query anchors
    would fall below ``Θ`` for every prototype and mine nothing.

    The bank is initialised by spherical k-means on the teacher's queue the first time the
    queue is full after ``prototype_init_step`` optimiser steps; until then no positive is
    mined. After each step the prototypes move towards the teacher's anchor embeddings
    (``PrototypeBank.update``), the key encoders follow their query encoders and both
    queues take the step's keys, all from every rank's keys and embeddings, so each rank
    holds the same state.

    Reference settings (ImageNet, 200 epochs): ResNet-50 teacher; ResNet-18, MobileNetV2,
    EfficientNet-B0 students; MoCo-v2 recipe for both (``τ = 0.2``, ``m = 0.999``, queue
    65536, SGD lr 0.03, batch 256, cosine). The paper's ``K``, ``Θ``, ``λ`` and the exact
    similarity-based prototype momentum are not known to us; the defaults below are our
    choice: ``K = 4096``, ``Θ = 0.5``, ``λ = 1``, base momentum 0.99.

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
        shuffle_bn: Shuffle-BN of both key encoders: ``auto``, ``split``, ``ranks``, ``off``.
        bn_groups: Batch-norm groups of ``split``.
        relation_weight: ``λ`` in ``[0, 1]``.
        relation: ``teacher`` (prototypes in the teacher's space) or ``labels`` (oracle).
        num_prototypes: ``K``, at most ``queue_size``.
        threshold: ``Θ``, a cosine similarity in ``[-1, 1]``.
        prototype_momentum: Base momentum of the prototype update.
        prototype_init_step: Optimiser steps before the bank may be initialised.
        kmeans_iterations: Lloyd iterations of the initial spherical k-means.
        kmeans_restarts: k-means runs; the best is kept.
        anchor_embedding: The teacher embedding of the anchor that is assigned to a
            prototype and updates the bank: its ``key`` (default) or its ``query``.
        teacher_checkpoint: Short form: initial teacher weights (``None``: random, online).
        teacher_frozen: Keep the teacher fixed (needs its weights).
        teacher_embedding: The teacher space of the relation: its MoCo ``head`` output or
            its ``backbone`` features (needs ``teacher_frozen``); with ``teacher``, its
            ``embedding`` says it.
        teacher: The teacher's specification (instead of ``teacher_backbone``,
            ``teacher_checkpoint``, ``teacher_backbone_kwargs``, ``teacher_embedding``).
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
        shuffle_bn: Literal["auto", "split", "ranks", "off"] = "auto",
        bn_groups: int = 8,
        relation_weight: float = 1.0,
        relation: Literal["teacher", "labels"] = "teacher",
        num_prototypes: int = 4096,
        threshold: float = 0.5,
        prototype_momentum: float = 0.99,
        prototype_init_step: int = 0,
        kmeans_iterations: int = 20,
        kmeans_restarts: int = 3,
        anchor_embedding: Literal["key", "query"] = "key",
        teacher_checkpoint: str | None = None,
        teacher_frozen: bool = False,
        teacher_embedding: Literal["head", "backbone"] = "head",
        teacher: TeacherConfig | None = None,
        **kwargs,
    ) -> None:
        check_arguments(
            num_prototypes=num_prototypes, queue_size=queue_size, proj_dim=proj_dim,
            proj_hidden_dim=proj_hidden_dim, temperature=temperature, key_momentum=key_momentum,
            relation_weight=relation_weight, threshold=threshold,
            prototype_momentum=prototype_momentum, prototype_init_step=prototype_init_step,
            kmeans_iterations=kmeans_iterations, kmeans_restarts=kmeans_restarts,
            relation=relation, anchor_embedding=anchor_embedding,
        )  # fmt: skip
        spec = teacher_spec(teacher, teacher_backbone, teacher_checkpoint,
                            teacher_backbone_kwargs, teacher_embedding, teacher_frozen)  # fmt: skip
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.anchor_embedding = anchor_embedding
        self.temperature = temperature
        self.key_momentum = key_momentum
        self.symmetric = symmetric
        self.relation_weight = relation_weight
        self.relation = relation
        self.prototype_init_step = prototype_init_step
        self.teacher_frozen = teacher_frozen
        self.student = MomentumEncoder(
            create_backbone(student_backbone, **(student_backbone_kwargs or {})),
            proj_hidden_dim, proj_dim, queue_size, shuffle_bn=shuffle_bn, bn_groups=bn_groups,
        )  # fmt: skip
        built = build_momentum_teacher(
            spec, teacher_frozen, proj_hidden_dim, proj_dim, queue_size, shuffle_bn, bn_groups
        )
        self.teacher, self.teacher_inputs = built.network, built.inputs
        self.teacher_weights = built.weights
        self.prototypes = PrototypeBank(
            num_prototypes, self.teacher.out_dim, threshold, prototype_momentum,
            kmeans_iterations, kmeans_restarts,
        )  # fmt: skip
        self._pending: tuple[Tensor, ...] | None = None
        self._mined_precision: Tensor | None = None

    def forward(self, images: Tensor) -> Tensor:
        """Student backbone features ``[B, D]``."""
        return self.student.backbone(images)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student] if self.teacher_frozen else [self.student, self.teacher]

    def train(self, mode: bool = True) -> ReKD:
        """As ``nn.Module.train``, except that a frozen teacher stays in eval mode."""
        super().train(mode)
        if self.teacher_frozen:
            self.teacher.eval()
        return self

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher] if self.teacher_frozen else []

    def on_fit_start(self) -> None:
        super().on_fit_start()  # the teacher's weights (TeacherHooks)
        if self.relation == "labels":
            rank_zero_warn(
                "ReKD relation=labels: positives are mined from the true labels (an oracle "
                "upper bound for diagnostics), so this run is not self-supervised"
            )

    def teacher_embeddings(self, views: list[Tensor]) -> tuple[Tensor | None, Tensor, Tensor]:
        """The teacher's queries (``None`` when frozen), keys and (detached) anchors."""
        if not self.teacher_frozen:
            queries, keys = self.teacher.queries_and_keys(views, self.symmetric)
            anchors = keys if self.anchor_embedding == "key" else queries
            return queries, keys, anchors.detach()
        order = [1, 0] if self.symmetric else [1]
        keys = frozen_forward(lambda: torch.cat([self.teacher.keys(views[v]) for v in order]))
        anchors = keys
        if self.anchor_embedding == "query":
            anchors = frozen_forward(lambda: torch.cat([self.teacher(views[1 - v]) for v in order]))
        return None, keys, anchors

    def training_step(self, batch, batch_idx: int) -> Tensor:
        views, targets = two_views(batch)
        with self.keep_step_features(len(views[0]), "student", "teacher"):  # query views
            teacher_q, teacher_k, anchors = self.teacher_embeddings(views)
            student_q, student_k = self.student.queries_and_keys(views, self.symmetric)
        targets = targets.repeat(len(anchors) // len(targets))
        positives, terms = self.mine_positives(anchors, targets)
        queue, tau, weight = self.student.queue.keys, self.temperature, self.relation_weight
        terms["student_instance"] = info_nce(student_q, student_k, queue, tau)
        terms["student_relation"] = relation_contrastive_loss(
            student_q, student_k, queue, positives, tau
        )
        loss = (1 - weight) * terms["student_instance"] + weight * terms["student_relation"]
        terms["student"] = loss
        if teacher_q is not None:
            terms["teacher_moco"] = info_nce(teacher_q, teacher_k, self.teacher.queue.keys, tau)
            loss = loss + terms["teacher_moco"]
        # mined_precision is NaN until a labelled pair is mined, which is no failed loss.
        self.log_terms({"loss": loss, **terms}, unwatched={"mined_precision"})
        self._pending = (student_k, teacher_k, anchors, targets)
        return loss

    @torch.no_grad()
    def mine_positives(self, anchors: Tensor, targets: Tensor) -> tuple[Tensor, dict]:
        """The relation ``[B, Q]`` of anchors to the queue's slots, and its diagnostics.

        All false until the bank is initialised. With ``relation: teacher`` labels
        (``targets``, the queued labels) only enter the diagnostic ``mined_precision``: the
        fraction of mined (anchor, slot) pairs, both labelled, of the same class; a step that
        mined no such pair keeps the last value (NaN before the first). Every diagnostic is
        computed at a fixed size, without reading anything back to the host.
        """
        queue = self.teacher.queue
        if not self.prototypes.is_initialized:
            return torch.zeros(
                len(anchors), len(queue), dtype=torch.bool, device=anchors.device
            ), {}
        valid = queue.valid()
        labelled = (targets >= 0).unsqueeze(1) & (queue.labels >= 0).unsqueeze(0) & valid
        same_class = targets.unsqueeze(1) == queue.labels.unsqueeze(0)
        anchor_q = self.prototypes.assign(anchors)
        candidate_q = self.prototypes.assign(queue.keys)
        if self.relation == "labels":
            positives = same_class & labelled
        else:
            positives = PrototypeBank.relation_of(anchor_q, candidate_q) & valid
        in_use = self.prototypes.count_in_use(anchor_q, candidate_q.masked_fill(~valid, -1))
        mined = positives & labelled
        count = mined.sum()
        precision = (mined & same_class).sum() / count.clamp_min(1)
        if self._mined_precision is None:
            self._mined_precision = torch.full_like(precision, math.nan)
        self._mined_precision = torch.where(count > 0, precision, self._mined_precision)
        return positives, {
            "prototypes_in_use": in_use.float(),
            "unassigned_fraction": (anchor_q < 0).float().mean(),
            "mined_positives": positives.sum(dim=1).float().mean(),
            "mined_precision": self._mined_precision,
        }

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.batch_skipped():  # nonfinite_loss: skip; its keys and anchors may be NaN
            return
        if self.optimizer_stepped():
            self.student.update_key_encoder(self.key_momentum)
            if not self.teacher_frozen:
                self.teacher.update_key_encoder(self.key_momentum)
        # Gathered from all ranks; both queues take the same images in the same slots.
        views = 2 if self.symmetric else 1  # symmetric: both pairings' keys, stacked
        student_k, teacher_k, anchors, targets = gather_rows(self, *self._pending, views=views)
        self.prototypes.update(anchors)
        self.student.queue.enqueue(student_k)
        self.teacher.queue.enqueue(teacher_k, targets)
        ready = self.global_step >= self.prototype_init_step and self.teacher.queue.is_full
        if ready and not self.prototypes.is_initialized:
            self.prototypes.init_from(self.teacher.queue.keys)
            # k-means on equal queues gives equal banks only up to floating-point ties:
            # rank 0's bank is the one every rank keeps.
            if self.trainer.world_size > 1:
                bank = self.trainer.strategy.broadcast(self.prototypes.prototypes, src=0)
                self.prototypes.set_prototypes(bank)
        self._pending = None

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing: k-NN and linear-probe callbacks evaluate at the end of validation."""


def check_arguments(**args) -> None:
    """Raises ``ConfigError`` for ReKD arguments outside their valid ranges or combinations."""
    sizes = ("num_prototypes", "queue_size", "proj_dim", "kmeans_restarts")
    require_each(require_positive_int, MODEL, **{name: args[name] for name in sizes})
    if args["proj_hidden_dim"] is not None:
        require_positive_int(f"{MODEL}.proj_hidden_dim", args["proj_hidden_dim"])
    require_int(f"{MODEL}.prototype_init_step", args["prototype_init_step"], 0)
    require_int(f"{MODEL}.kmeans_iterations", args["kmeans_iterations"], 0)
    require_positive(f"{MODEL}.temperature", args["temperature"])
    require_number(f"{MODEL}.threshold", args["threshold"], -1.0, 1.0)  # a cosine similarity
    # 1 would freeze the prototypes at their k-means initialisation.
    require_number(
        f"{MODEL}.prototype_momentum", args["prototype_momentum"], 0.0, 1.0, high_open=True
    )
    if args["num_prototypes"] > args["queue_size"]:
        raise ConfigError(
            f"model.init_args.num_prototypes={args['num_prototypes']} exceeds queue_size="
            f"{args['queue_size']}; valid: 1 <= num_prototypes <= queue_size (k-means "
            "clusters the teacher's queue)"
        )
    for name, valid in (
        ("key_momentum", "a number in [0, 1]"),
        ("relation_weight", "a number in [0, 1] (the mix (1 - λ)·InfoNCE + λ·relation loss)"),
    ):
        if not 0.0 <= args[name] <= 1.0:
            raise ConfigError(f"{MODEL}.{name}={args[name]!r}; valid: {valid}")
    for name, choices in (
        ("anchor_embedding", ("key", "query")),
        ("relation", ("teacher", "labels")),
    ):
        require_choice(f"{MODEL}.{name}", args[name], choices)


def teacher_spec(
    teacher: TeacherConfig | None,
    backbone: str,
    checkpoint: str | None,
    backbone_kwargs: dict | None,
    embedding: str,
    frozen: bool,
) -> TeacherSpec:
    """ReKD's teacher spec (``teacher``, or the short form), checked for what cannot work.

    Raises:
        ConfigError: Both forms, a frozen teacher without weights, or an online teacher that
            would relate images by its backbone features.
    """
    require_choice(f"{MODEL}.teacher_embedding", embedding, ("head", "backbone"))
    spec = TeacherSpec.from_arguments(
        teacher,
        dict(teacher_backbone=backbone, teacher_checkpoint=checkpoint,
             teacher_backbone_kwargs=backbone_kwargs, teacher_embedding=embedding),
        dict(teacher_backbone="resnet50", teacher_embedding="head"),
        embedding_key=f"{MODEL}.teacher_embedding",
    ).resolve_embedding(embedding, ("head", "backbone"), "ReKD")  # fmt: skip
    if frozen and not spec.weights:
        raise ConfigError(
            f"{MODEL}.teacher_frozen=true needs {spec.weights_key} (a frozen random teacher "
            "relates nothing)"
        )
    if spec.embedding == "backbone" and not frozen:
        raise ConfigError(
            f"{spec.embedding_key}=backbone needs teacher_frozen=true: an online teacher "
            "learns through its MoCo head, whose space then holds the relation"
        )
    return spec
