"""What teacher→student methods share: a frozen teacher, a student classifier, CE on labels.

Not a method itself: ``KD``, ``DKD``, ``DIST``, ``RKD``, ``PKT``, ``CRD`` and the methods on
stages (``StageDistillation``) subclass it and add their own term.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from distill.arguments import MODEL, require_int, require_non_negative
from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.losses import kd_loss
from distill.methods.base import Method
from distill.methods.teacher_hooks import TeacherHooks
from distill.modules import Classifier
from distill.teachers import TeacherConfig, TeacherSpec, build_teacher

#: ``teacher_backbone``'s default; another value with ``teacher`` gives the teacher twice.
DEFAULT_TEACHER_BACKBONE = "resnet32x4"


class TeacherStudent(TeacherHooks, Method):
    """A frozen ``self.teacher`` and a trained ``self.student`` (backbone + linear head).

    The teacher is given by ``teacher`` (``distill.teachers.TeacherSpec``: a distill run,
    torchvision, timm, or another project's checkpoint, each fed its own inputs), or by the
    short form ``teacher_backbone`` + ``teacher_checkpoint`` for distill's own runs. It is a
    ``distill.teachers.TeacherNetwork``: a classifier by default (``embedding: logits``);
    ``embedding: backbone`` (or ``head``) takes a file without a classifier, for methods that
    read embeddings (RKD, PKT and CRD without KD).

    Its weights are read at the start of a fit (or a validation) that does not restore a
    checkpoint; a student's checkpoint holds its teacher (unless ``in_checkpoint: false``),
    so resuming, ``distill eval`` and ``distill export`` never read the teacher's file
    (``distill.teachers.TeacherWeights``). Outside a trainer, call
    ``model.teacher_weights.load()`` before using the teacher.

    Args:
        student_backbone: Backbone name of the student.
        teacher_backbone: Short form: backbone name of the teacher.
        teacher_checkpoint: Short form: a ``Supervised`` run directory (its
            ``trainer.default_root_dir``: the ``last.ckpt`` of its newest finished run is
            loaded, see ``distill.modules.weights.resolve_checkpoint``), a checkpoint file
            (its ``student.*`` weights) or a state dict of the teacher classifier.
        num_classes: Number of classes; must match the DataModule.
        ce_weight: Weight γ of the student's cross-entropy on labels.
        student_backbone_kwargs: Extra student backbone arguments.
        teacher_backbone_kwargs: Short form: extra teacher backbone arguments.
        teacher: The teacher's specification (instead of the short form): architecture,
            weights, network, embedding, mean, std, image_size, in_checkpoint, kwargs.
        **kwargs: Optimisation arguments of ``Method`` (optimizer, lr_schedule, ...).
    """

    #: The teacher embeddings the method can read (``teacher.embedding``).
    teacher_reads: ClassVar[tuple[str, ...]] = ("logits", "backbone", "head")
    #: ``α``, the weight of ``add_ce_and_kd``'s KD term: none unless the method sets one
    #: (``set_kd_term``).
    kd_weight: float = 0.0

    def __init__(
        self,
        student_backbone: str = "resnet8x4",
        teacher_backbone: str = DEFAULT_TEACHER_BACKBONE,
        teacher_checkpoint: str | None = None,
        num_classes: int = 100,
        ce_weight: float = 1.0,
        student_backbone_kwargs: dict | None = None,
        teacher_backbone_kwargs: dict | None = None,
        teacher: TeacherConfig | None = None,
        **kwargs,
    ) -> None:
        require_int(f"{MODEL}.num_classes", num_classes, 2)
        require_non_negative(f"{MODEL}.ce_weight", ce_weight)
        spec = TeacherSpec.from_arguments(
            teacher,
            dict(teacher_backbone=teacher_backbone, teacher_checkpoint=teacher_checkpoint,
                 teacher_backbone_kwargs=teacher_backbone_kwargs),
            dict(teacher_backbone=DEFAULT_TEACHER_BACKBONE),
        ).resolve_embedding("logits", self.teacher_reads, type(self).__name__)  # fmt: skip
        if not spec.weights:
            raise ConfigError(
                f"{spec.weights_key} is required: a trained teacher, e.g. the run directory of a "
                "Supervised run (runs/cifar10-5k/supervised_resnet20, its newest finished "
                "last.ckpt), a checkpoint file or a state dict of the classifier."
            )
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ce_weight = ce_weight
        student = create_backbone(student_backbone, **(student_backbone_kwargs or {}))
        self.student = Classifier(student, num_classes)
        built = build_teacher(spec, num_classes=num_classes)
        self.teacher, self.teacher_inputs = built.network, built.inputs
        self.teacher_weights = built.weights
        self.init_classification_metrics(num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.student(images)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.check_num_classes(self.num_classes)

    def set_kd_term(self, kd_weight: float, temperature: float) -> None:
        """Gives ``add_ce_and_kd`` its KD term: weight ``α = kd_weight`` (0: none), temperature
        ``T = temperature``.

        Raises:
            ConfigError: ``kd_weight > 0`` with a teacher read without its classifier
                (``teacher.embedding: backbone`` or ``head``), which has no logits to match.
        """
        if kd_weight and self.teacher.num_classes is None:
            raise ConfigError(
                f"{MODEL}.kd_weight={kd_weight} matches the teacher's logits, but the teacher "
                f"reads its {self.teacher.embedding} (teacher.embedding): set it to logits "
                "(a teacher with a classifier), or kd_weight: 0"
            )
        self.kd_weight = kd_weight
        self.temperature = temperature

    def student_and_teacher_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's logits; their embeddings go to ``step_features``
        for online probes."""
        with self.keep_step_features(len(images), "student", "teacher"):
            return self.student(images), self.teacher(images)

    def student_and_teacher(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Embeddings and logits: ``(student_emb, student_logits, teacher_emb, teacher_logits)``
        (``teacher_logits`` is None for a teacher without a classifier)."""
        student_emb, student_logits = self.student.forward_features(images)
        teacher_emb, teacher_logits = self.teacher.forward_features(images)
        return student_emb, student_logits, teacher_emb, teacher_logits

    def total_loss(
        self,
        logits: Tensor,
        targets: Tensor,
        teacher_logits: Tensor | None,
        name: str,
        weight: float,
        term: Tensor,
    ) -> Tensor:
        """``γ·CE + weight·term + α·KD`` (KD only with ``α > 0``): ``add_ce_and_kd`` of one
        term, logged as ``train/<name>``."""
        return self.add_ce_and_kd(logits, targets, teacher_logits, weight * term, {name: term})

    def add_ce_and_kd(
        self,
        logits: Tensor,
        targets: Tensor,
        teacher_logits: Tensor | None,
        distillation: Tensor,
        terms: dict[str, Tensor | float],
    ) -> Tensor:
        """``γ·CE(y, s) + distillation + α·KD(s, t)``: ``distillation`` is the method's weighted
        term, KD is there only with ``α > 0`` (``set_kd_term``). Logs each term (``ce``, the
        method's ``terms``, ``kd``) as ``train/<name>`` and the sum as ``train/loss``."""
        terms = {"ce": F.cross_entropy(logits, targets), **terms}
        loss = self.ce_weight * terms["ce"] + distillation
        if self.kd_weight:
            terms["kd"] = kd_loss(logits, teacher_logits, self.temperature)
            loss = loss + self.kd_weight * terms["kd"]
        self.log_terms({"loss": loss, **terms})
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "test")
