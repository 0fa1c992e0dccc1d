"""What the self-supervised distillation methods share: a frozen, pretrained teacher whose
embedding space a self-supervised student learns from.

Not a method itself: ``SEED`` and ``DisCo`` subclass it. ``offline_teacher`` is the one
place the teacher is built; the methods read it only through ``teacher_embeddings``,
``self.teacher.num_features`` and ``self.teacher.backbone`` (k-NN, linear probes).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.arguments import MODEL, require_choice, require_positive_int
from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.methods.base import Method
from distill.modules.frozen_encoder import FrozenEncoder
from distill.modules.teacher import TeacherWeights


def offline_teacher(
    backbone: str,
    checkpoint: str | None,
    embedding: Literal["head", "backbone"] = "head",
    proj_hidden_dim: int | None = None,
    proj_dim: int = 128,
    backbone_kwargs: dict | None = None,
) -> tuple[FrozenEncoder, TeacherWeights]:
    """The frozen teacher and what puts ``checkpoint``'s weights into it, as ReKD's offline
    teacher takes them (``teacher_backbone`` + ``teacher_checkpoint``, read at fit start).

    Raises:
        ConfigError: No checkpoint (a frozen random teacher teaches nothing), or a bad
            ``teacher_embedding`` or head width.
    """
    require_choice(f"{MODEL}.teacher_embedding", embedding, ("head", "backbone"))
    require_positive_int(f"{MODEL}.teacher_proj_dim", proj_dim)
    if proj_hidden_dim is not None:
        require_positive_int(f"{MODEL}.teacher_proj_hidden_dim", proj_hidden_dim)
    if not checkpoint:
        raise ConfigError(
            "model.init_args.teacher_checkpoint is required: the teacher is frozen, and a "
            "frozen random teacher teaches nothing. Give a trained run, e.g. the run directory "
            "of a MoCo run (runs/cifar10-5k/moco_vgg8_seed0, its newest finished last.ckpt), "
            "a checkpoint file or a state dict."
        )
    network = create_backbone(backbone, **(backbone_kwargs or {}))
    teacher = FrozenEncoder(network, embedding, proj_hidden_dim, proj_dim)
    return teacher, TeacherWeights(teacher, checkpoint)


class FrozenTeacherMethod(Method):
    """A frozen ``self.teacher`` (``FrozenEncoder``) and a self-supervised ``self.student``.

    The teacher's weights are read from ``teacher_checkpoint`` at the start of a fit (or a
    validation) that does not restore a checkpoint; a student's checkpoint holds its
    teacher, so resuming, ``distill eval`` and ``distill export`` never read the teacher's
    file (``distill.modules.teacher.TeacherWeights``). Outside a trainer, call
    ``model.teacher_weights.load()`` before using the teacher.

    Args:
        teacher_backbone: Backbone name of the teacher.
        teacher_checkpoint: The teacher's weights (required): a run directory (the
            ``last.ckpt`` of its newest finished run), a checkpoint or a state-dict file of a
            MoCo, ReKD or other distill run; the query encoder of a momentum encoder is taken.
        teacher_backbone_kwargs: Extra teacher backbone arguments.
        teacher_embedding: The teacher space taught: its MoCo ``head`` output or its
            ``backbone`` features (for a checkpoint without a trained head, e.g. a supervised
            one; a ``head`` missing from the checkpoint is refused, never left random).
        teacher_proj_hidden_dim: Hidden width of the teacher's head (``None``: its backbone's
            width); must match the checkpoint.
        teacher_proj_dim: Output width of the teacher's head; must match the checkpoint.
        **kwargs: Optimisation arguments of ``Method`` (optimizer, lr_schedule, ...).
    """

    monitor = "val/knn_top1"

    def __init__(
        self,
        teacher_backbone: str = "resnet50",
        teacher_checkpoint: str | None = None,
        teacher_backbone_kwargs: dict | None = None,
        teacher_embedding: Literal["head", "backbone"] = "head",
        teacher_proj_hidden_dim: int | None = None,
        teacher_proj_dim: int = 128,
        **kwargs,
    ) -> None:
        teacher, weights = offline_teacher(
            teacher_backbone, teacher_checkpoint, teacher_embedding,
            teacher_proj_hidden_dim, teacher_proj_dim, teacher_backbone_kwargs,
        )  # fmt: skip
        super().__init__(**kwargs)
        self.teacher = teacher
        self.teacher_weights = weights

    def forward(self, images: Tensor) -> Tensor:
        """Student backbone features ``[B, D]``."""
        return self.student.backbone(images)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    # After Lightning restored any checkpoint, which brings the teacher with it.
    def on_fit_start(self) -> None:
        self.teacher_weights.load_unless_given(self.trainer)
        super().on_fit_start()

    def on_validation_start(self) -> None:
        self.teacher_weights.load_unless_given(self.trainer)

    @torch.no_grad()
    def teacher_embeddings(self, images: Tensor) -> Tensor:
        """The frozen teacher's L2-normalised embeddings ``[B, D]`` of ``images``."""
        return F.normalize(self.teacher.forward_features(images)[0], dim=1)

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing: k-NN and linear-probe callbacks evaluate at the end of validation."""
