"""What the self-supervised distillation methods share: a frozen, pretrained teacher whose
embedding space a self-supervised student learns from.

Not a method itself: ``SEED`` and ``DisCo`` subclass it. ``offline_teacher_spec`` is the one
place the teacher is specified; the methods read it only through ``teacher_embeddings``,
``self.teacher.num_features`` and ``self.teacher.backbone`` (k-NN, linear probes).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.arguments import MODEL, require_choice, require_positive_int
from distill.errors import ConfigError
from distill.methods.base import Method
from distill.methods.teacher_hooks import TeacherHooks
from distill.teachers import TeacherConfig, TeacherSpec, build_teacher

#: The short form's defaults; another value with ``teacher`` gives the teacher twice.
SHORT_FORM_DEFAULTS = dict(teacher_backbone="resnet50", teacher_embedding="head")


def offline_teacher_spec(
    teacher: TeacherConfig | None,
    backbone: str,
    checkpoint: str | None,
    backbone_kwargs: dict | None,
    embedding: str,
    method: str,
) -> TeacherSpec:
    """The frozen teacher's spec: ``teacher``, or the short form (``teacher_backbone``,
    ``teacher_checkpoint``, ``teacher_backbone_kwargs``, ``teacher_embedding``), read as
    ``embedding: head`` (the MoCo-v2 head's output) or ``backbone`` (its features).

    Raises:
        ConfigError: Both forms, no weights (a frozen random teacher teaches nothing), or
            an embedding other than ``head`` or ``backbone``.
    """
    require_choice(f"{MODEL}.teacher_embedding", embedding, ("head", "backbone"))
    spec = TeacherSpec.from_arguments(
        teacher,
        dict(teacher_backbone=backbone, teacher_checkpoint=checkpoint,
             teacher_backbone_kwargs=backbone_kwargs, teacher_embedding=embedding),
        SHORT_FORM_DEFAULTS,
        embedding_key=f"{MODEL}.teacher_embedding",
    ).resolve_embedding(embedding, ("head", "backbone"), method)  # fmt: skip
    if not spec.weights:
        raise ConfigError(
            f"{spec.weights_key} is required: the teacher is frozen, and a frozen random "
            "teacher teaches nothing. Give a trained run, e.g. the run directory of a MoCo run "
            "(runs/cifar10-5k/moco_vgg8_seed0, its newest finished last.ckpt), a checkpoint "
            "file (an official MoCo, DINO, lightly or solo-learn one too) or a state dict."
        )
    return spec


class FrozenTeacherMethod(TeacherHooks, Method):
    """A frozen ``self.teacher`` (``distill.teachers.TeacherNetwork``) and a self-supervised
    ``self.student``.

    The teacher is given by ``teacher`` (``distill.teachers.TeacherSpec``: a distill run,
    torchvision, timm, or another project's checkpoint, each fed its own inputs) or by the
    short form ``teacher_backbone`` + ``teacher_checkpoint``. Of a momentum encoder (a MoCo
    or ReKD run, an official MoCo checkpoint) the query encoder is taken unless
    ``teacher.network`` says ``key``. Its weights are read at the start of a fit (or a
    validation) that does not restore a checkpoint; a student's checkpoint holds its
    teacher (unless ``in_checkpoint: false``), so resuming, ``distill eval`` and ``distill
    export`` never read the teacher's file (``distill.teachers.TeacherWeights``). Outside a
    trainer, call ``model.teacher_weights.load()`` before using the teacher.

    Args:
        teacher_backbone: Short form: backbone name of the teacher.
        teacher_checkpoint: Short form: the teacher's weights (required): a run directory
            (the ``last.ckpt`` of its newest finished run), a checkpoint or a state-dict file.
        teacher_backbone_kwargs: Short form: extra teacher backbone arguments.
        teacher_embedding: The teacher space taught: its MoCo ``head`` output or its
            ``backbone`` features (for a checkpoint without a trained head, e.g. a supervised
            one; a ``head`` missing from the checkpoint is refused, never left random); with
            ``teacher``, its ``embedding`` says it.
        teacher_proj_hidden_dim: Hidden width of the teacher's head (``None``: its backbone's
            width); must match the checkpoint.
        teacher_proj_dim: Output width of the teacher's head; must match the checkpoint.
        teacher: The teacher's specification (instead of the short form): architecture,
            weights, network, embedding, mean, std, image_size, in_checkpoint, kwargs.
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
        teacher: TeacherConfig | None = None,
        **kwargs,
    ) -> None:
        require_positive_int(f"{MODEL}.teacher_proj_dim", teacher_proj_dim)
        if teacher_proj_hidden_dim is not None:
            require_positive_int(f"{MODEL}.teacher_proj_hidden_dim", teacher_proj_hidden_dim)
        spec = offline_teacher_spec(
            teacher, teacher_backbone, teacher_checkpoint, teacher_backbone_kwargs,
            teacher_embedding, type(self).__name__,
        )  # fmt: skip
        super().__init__(**kwargs)
        built = build_teacher(
            spec, proj_hidden_dim=teacher_proj_hidden_dim, proj_dim=teacher_proj_dim
        )
        self.teacher, self.teacher_inputs = built.network, built.inputs
        self.teacher_weights = built.weights

    def forward(self, images: Tensor) -> Tensor:
        """Student backbone features ``[B, D]``."""
        return self.student.backbone(images)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    @torch.no_grad()
    def teacher_embeddings(self, images: Tensor) -> Tensor:
        """The frozen teacher's L2-normalised embeddings ``[B, D]`` of ``images``."""
        return F.normalize(self.teacher.forward_features(images)[0], dim=1)

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing: k-NN and linear-probe callbacks evaluate at the end of validation."""
