"""Feature distillation across architectures: FitNets (Romero et al. 2015) and SimReg (Navaneet
et al. 2021) on the final embedding, and a dense variant on the last feature map."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from distill.arguments import (
    MODEL,
    require_choice,
    require_each,
    require_int,
    require_non_negative,
    require_positive,
)
from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.losses import feature_loss, kd_loss
from distill.losses.classification import labelled_cross_entropy
from distill.methods.base import Method
from distill.methods.teacher_hooks import TeacherHooks
from distill.modules import Classifier
from distill.modules.projector import FeatureMapProjector, embedding_projector
from distill.teachers import TeacherConfig, TeacherSpec, build_teacher

#: ``teacher_backbone``'s default; another value with ``teacher`` gives the teacher twice.
DEFAULT_TEACHER_BACKBONE = "resnet20"


def feature_teacher_spec(
    teacher: TeacherConfig | None,
    backbone: str,
    checkpoint: str | None,
    backbone_kwargs: dict | None,
    kd_weight: float,
) -> TeacherSpec:
    """The frozen teacher's spec: ``teacher``, or the short form (``teacher_backbone``,
    ``teacher_checkpoint``, ``teacher_backbone_kwargs``). It is read by its backbone's
    features, with its classifier's logits too when KD needs them (``kd_weight > 0``).

    Raises:
        ConfigError: Both forms, no weights (a frozen random teacher teaches nothing), or
            KD with a teacher read by its features alone.
    """
    spec = TeacherSpec.from_arguments(
        teacher,
        dict(teacher_backbone=backbone, teacher_checkpoint=checkpoint,
             teacher_backbone_kwargs=backbone_kwargs),
        dict(teacher_backbone=DEFAULT_TEACHER_BACKBONE),
    )  # fmt: skip
    if kd_weight and spec.embedding not in ("auto", "logits"):
        raise ConfigError(
            f"{MODEL}.kd_weight={kd_weight} matches the teacher's logits, but "
            f"{spec.embedding_key}={spec.embedding!r} reads its features alone: set it to "
            "logits or auto (a teacher with a classifier of num_classes classes), or kd_weight: 0"
        )
    allowed = ("logits",) if kd_weight else ("backbone", "logits")
    spec = spec.resolve_embedding(allowed[0], allowed, "FeatureKD")
    if not spec.weights:
        raise ConfigError(
            f"{spec.weights_key} is required: the teacher is frozen, and a frozen random "
            "teacher teaches nothing. Give a trained run, e.g. the run directory of a "
            "Supervised run (runs/cifar10-5k/supervised_resnet20_seed0), a checkpoint file, "
            "or a torchvision, timm or other project's weights file (model.init_args.teacher)."
        )
    return spec


class FeatureKD(TeacherHooks, Method):
    """Feature distillation: the student's features, through a learned projector ``P``,
    regress a frozen teacher's; jointly with cross-entropy on the labelled samples.

    ``L = β·d(P(f_s(x)), f_t(x)) + γ·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``.

    ``level: embedding``: ``f`` is the pooled penultimate embedding ``[B, D]`` and ``P`` a
    linear layer (FitNets' regressor), SimReg's 4-layer MLP head, or none (equal widths).
    ``level: dense``: ``f_t`` is the teacher's last feature map (a timm ViT's patch tokens on
    its patch grid, a convolutional teacher's last map), ``f_s`` the student's last map
    before pooling, and ``P`` a 1x1 convolution with batch norm followed by a bilinear resize
    to the teacher's grid; ``d`` is averaged over every token. ``d`` is ``mse`` (mean squared
    error over entries) or ``cosine`` (``1 − cos`` per vector; SimReg's normalised MSE / 2).
    The projector trains with the student and is not part of it: ``distill export`` writes
    the student's backbone alone. ``γ·CE`` counts the labelled samples only (``-1``: none).

    The teacher is given by ``teacher`` (``distill.teachers.TeacherSpec``: a distill run,
    torchvision, timm, or another project's checkpoint, each fed its own inputs: a timm
    ViT's statistics and the image size it was built for) or by the short form
    ``teacher_backbone`` + ``teacher_checkpoint``. It is frozen, in eval mode, and runs
    under inference mode; its classifier is read only for KD on logits (``α > 0``), which
    needs it over the student's classes.

    Reference settings: FitNets' hint weight ``β = 100`` with MSE (RepDistiller, on CIFAR-100
    intermediate maps); SimReg distils without labels (``γ = 0``), its MLP and ``cosine`` at
    ``β = 2`` (its ``2 − 2·cos``), ImageNet recipe in configs/feature/imagenet_*.yaml.

    Args:
        student_backbone: Backbone name of the student.
        teacher_backbone: Short form: the teacher's architecture, a distill backbone name,
            ``torchvision:<model>`` or ``timm:<model>``.
        teacher_checkpoint: Short form: the teacher's weights (a run directory, a checkpoint
            or a weights file; see ``distill.teachers.TeacherSpec``).
        num_classes: Classes of the student's head; must match the DataModule.
        level: ``embedding`` or ``dense``.
        metric: ``mse`` or ``cosine``.
        projector: ``linear``, ``mlp`` (embedding only) or ``identity`` (equal widths).
        feature_weight: ``β``.
        ce_weight: ``γ``.
        kd_weight: ``α``.
        temperature: KD temperature ``T``.
        student_backbone_kwargs: Extra student backbone arguments.
        teacher_backbone_kwargs: Short form: extra teacher backbone (or ``timm.create_model``)
            arguments.
        teacher: The teacher's specification (instead of the short form): architecture,
            weights, network, embedding, mean, std, image_size, in_checkpoint, kwargs.
        **kwargs: Optimisation arguments of ``Method``.
    """

    def __init__(
        self,
        student_backbone: str = "resnet8",
        teacher_backbone: str = DEFAULT_TEACHER_BACKBONE,
        teacher_checkpoint: str | None = None,
        num_classes: int = 100,
        level: Literal["embedding", "dense"] = "embedding",
        metric: Literal["mse", "cosine"] = "mse",
        projector: Literal["linear", "mlp", "identity"] = "linear",
        feature_weight: float = 1.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        student_backbone_kwargs: dict | None = None,
        teacher_backbone_kwargs: dict | None = None,
        teacher: TeacherConfig | None = None,
        **kwargs,
    ) -> None:
        require_int(f"{MODEL}.num_classes", num_classes, 2)
        require_choice(f"{MODEL}.level", level, ("embedding", "dense"))
        require_choice(f"{MODEL}.metric", metric, ("mse", "cosine"))
        require_choice(f"{MODEL}.projector", projector, ("linear", "mlp", "identity"))
        require_each(
            require_non_negative, MODEL, feature_weight=feature_weight, ce_weight=ce_weight,
            kd_weight=kd_weight,
        )  # fmt: skip
        require_positive(f"{MODEL}.temperature", temperature)
        if level == "dense" and projector == "mlp":
            raise ConfigError(
                f"{MODEL}.projector='mlp' is for level: embedding; with level: dense the "
                "projector is linear (a 1x1 convolution and batch norm) or identity"
            )
        spec = feature_teacher_spec(
            teacher, teacher_backbone, teacher_checkpoint, teacher_backbone_kwargs, kd_weight
        )
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.num_classes = num_classes
        self.level, self.metric = level, metric
        self.feature_weight, self.ce_weight, self.kd_weight = feature_weight, ce_weight, kd_weight
        self.temperature = temperature
        student = create_backbone(student_backbone, **(student_backbone_kwargs or {}))
        self.student = Classifier(student, num_classes)
        built = build_teacher(spec, num_classes=num_classes)
        self.teacher, self.teacher_inputs = built.network, built.inputs
        self.teacher_weights = built.weights
        self._check_teacher(spec.architecture, projector)
        if level == "dense":
            widths = (self.student.num_features, self.teacher.feature_map_features)
            self.projector = FeatureMapProjector(*widths, identity=projector == "identity")
        else:
            widths = (self.student.num_features, self.teacher.num_features)
            self.projector = embedding_projector(*widths, projector)
        self.init_classification_metrics(num_classes)

    def _check_teacher(self, name: str, projector: str) -> None:
        """Refuses a student and teacher this level and projector cannot pair."""
        if self.level == "dense":
            for role, network in (("student", self.student), ("teacher", self.teacher)):
                if not network.has_feature_map:
                    what = self.hparams.student_backbone if role == "student" else name
                    raise ConfigError(
                        f"{MODEL}.level='dense' needs the {role}'s last feature map, but "
                        f"{what!r} has none (a ViT's patch tokens come from a timm: teacher; "
                        "distill's convolutional backbones have one)"
                    )
        teacher = self.teacher.num_features
        if self.level == "dense":
            teacher = self.teacher.feature_map_features
        student = self.student.num_features
        if projector == "identity" and student != teacher:
            raise ConfigError(
                f"{MODEL}.projector='identity' needs the student's and the teacher's features "
                f"of one width, but the student's have {student} and the teacher {name!r}'s "
                f"{teacher}; use projector: linear"
            )

    def forward(self, images: Tensor) -> Tensor:
        return self.student(images)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.projector]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def setup(self, stage: str) -> None:
        super().setup(stage)  # the teacher's inputs (TeacherHooks)
        self.check_num_classes(self.num_classes)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        student, logits = self.student_outputs(images)
        teacher, teacher_logits = self.teacher_outputs(images)
        if self.level == "dense":
            projected = self.projector(student, tuple(teacher.shape[-2:]))
        else:
            projected = self.projector(student)
        terms = {
            "feature": feature_loss(projected, teacher, self.metric),
            "ce": labelled_cross_entropy(logits, targets),
        }
        loss = self.feature_weight * terms["feature"] + self.ce_weight * terms["ce"]
        if self.kd_weight:
            terms["kd"] = kd_loss(logits, teacher_logits, self.temperature)
            loss = loss + self.kd_weight * terms["kd"]
        self.log_terms({"loss": loss, **terms})
        return loss

    def student_outputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The student's distilled features (embedding ``[B, D]`` or last map ``[B, D, h, w]``)
        and its logits; its embedding goes to ``step_features`` for online probes."""
        if self.level == "embedding":
            with self.keep_step_features(len(images), "student"):
                return self.student.forward_features(images)
        feature_map, embedding, logits = self.student.forward_dense(images)
        self.step_features["student"] = embedding.detach()
        return feature_map, logits

    @torch.no_grad()
    def teacher_outputs(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """The frozen teacher's features (as ``student_outputs``) and logits (``None``
        without KD), from its own inputs (``TeacherNetwork`` feeds them)."""
        if self.level == "embedding":
            return self.teacher.forward_features(images)
        feature_map, _, logits = self.teacher.forward_dense(images)
        return feature_map, logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "test")
