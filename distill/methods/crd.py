"""Tian et al. 2020, "Contrastive Representation Distillation"."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from distill.arguments import (
    MODEL,
    require_choice,
    require_each,
    require_non_negative,
    require_positive,
    require_positive_int,
    require_probability,
)
from distill.errors import ConfigError
from distill.losses import CRDLoss
from distill.methods.distillation import TeacherStudent
from distill.modules.distributed import gather_rows


class CRD(TeacherStudent):
    """Contrastive representation distillation, alone or with KD.

    ``L = γ·CE(y, s) + α·KD(s, t) + β·(L_NCE(student anchor) + L_NCE(teacher anchor))``;
    the NCE terms contrast 128-d embeddings of the penultimate features with two momentum
    memory banks (``distill.losses.CRDLoss``). Reference CIFAR-100 settings (RepDistiller):
    ``γ = 1``, ``β = 0.8``, ``α = 0`` (CRD) or ``1`` (CRD+KD), ``T = 4``, ``K = 16384``
    negatives from other classes, ``τ = 0.07``, bank momentum 0.5.

    The banks hold one row per training sample, so the bank size and the labels of the
    ``other_class`` sampler come from the DataModule at ``setup``; batches must carry
    dataset indices. Banks are updated in ``on_train_batch_end`` with the embeddings the
    loss saw (as the reference does during its forward), gathered from all ranks under DDP
    so every rank holds the same banks.

    Args:
        crd_weight: ``β``.
        kd_weight: ``α`` (0 for CRD alone).
        temperature: KD temperature ``T``.
        embed_dim: Embedding and bank width.
        num_negatives: ``K``.
        nce_temperature: Critic temperature ``τ``.
        memory_momentum: Bank momentum.
        sampler: ``other_class`` (reference) or ``uniform`` (label-free).
        ce_weight: ``γ``.
        **kwargs: ``TeacherStudent`` arguments.
    """

    def __init__(
        self,
        crd_weight: float = 0.8,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        embed_dim: int = 128,
        num_negatives: int = 16384,
        nce_temperature: float = 0.07,
        memory_momentum: float = 0.5,
        sampler: Literal["uniform", "other_class"] = "other_class",
        ce_weight: float = 1.0,
        **kwargs,
    ) -> None:
        require_each(require_non_negative, MODEL, crd_weight=crd_weight, kd_weight=kd_weight)
        require_each(
            require_positive, MODEL, temperature=temperature, nce_temperature=nce_temperature
        )
        require_each(require_positive_int, MODEL, embed_dim=embed_dim, num_negatives=num_negatives)
        require_probability(f"{MODEL}.memory_momentum", memory_momentum)
        require_choice(f"{MODEL}.sampler", sampler, ("uniform", "other_class"))
        super().__init__(ce_weight=ce_weight, **kwargs)
        self.set_kd_term(kd_weight, temperature)
        self.save_hyperparameters(ignore=["optimizer"])
        self.crd_weight = crd_weight
        self.crd_options = dict(
            embed_dim=embed_dim,
            num_negatives=num_negatives,
            temperature=nce_temperature,
            memory_momentum=memory_momentum,
            sampler=sampler,
        )
        self.crd: CRDLoss | None = None
        self._pending_update: tuple[Tensor, Tensor, Tensor] | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.crd is not None:
            return
        datamodule = self.trainer.datamodule
        labels = datamodule.train_targets() if self.crd_options["sampler"] != "uniform" else None
        num_rows = len(datamodule.train_set)
        if labels is not None and (labels < 0).any():
            raise ConfigError(
                "CRD's other_class sampler needs labels, but the training set has unlabelled "
                "samples; set model.init_args.sampler: uniform"
            )
        self.crd = CRDLoss(
            self.student.backbone.num_features,
            self.teacher.num_features,
            num_rows,
            labels=labels,
            **self.crd_options,
        ).to(self.device)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.crd]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        if len(batch) < 3 or batch[2] is None:
            raise ConfigError(
                "CRD needs the dataset index of every sample: batches must be "
                "(images, targets, indices), as distill's DataModules provide"
            )
        images, targets, indices = batch
        with self.keep_step_features(len(images), "student", "teacher"):
            student_emb, logits, teacher_emb, teacher_logits = self.student_and_teacher(images)
        z_student, z_teacher = self.crd.embed(student_emb, teacher_emb)
        student_nce, teacher_nce = self.crd(
            z_student, z_teacher, indices, *self.batch_place(indices)
        )
        crd = student_nce + teacher_nce
        terms = {"crd_student": student_nce, "crd_teacher": teacher_nce, "crd": crd}
        loss = self.add_ce_and_kd(logits, targets, teacher_logits, self.crd_weight * crd, terms)
        self._pending_update = (z_student.detach(), z_teacher.detach(), indices)
        return loss

    def batch_place(self, indices: Tensor) -> tuple[int, int]:
        """This rank's offset in the global batch and the global batch size (DDP)."""
        if self.trainer.world_size <= 1:
            return 0, len(indices)
        sizes = self.all_gather(torch.tensor(len(indices), device=self.device)).flatten()
        return int(sizes[: self.trainer.global_rank].sum()), int(sizes.sum())

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.batch_skipped():  # nonfinite_loss: skip; its embeddings may be NaN
            return
        # Every micro-batch writes its own rows (banks are per sample, not per step).
        z_student, z_teacher, indices = gather_rows(self, *self._pending_update)
        self.crd.update_memory(z_student, z_teacher, indices)
        self._pending_update = None
