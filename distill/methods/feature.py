"""Feature distillation across architectures: FitNets (Romero et al. 2015) and SimReg (Navaneet
et al. 2021) on the final embedding, and a dense variant on the last feature map."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.arguments import (
    MODEL,
    require_choice,
    require_each,
    require_int,
    require_non_negative,
    require_positive,
    require_positive_int,
)
from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.losses import feature_loss, kd_loss
from distill.losses.classification import labelled_cross_entropy
from distill.methods.base import Method
from distill.modules import Classifier, FrozenTeacher
from distill.modules.projector import FeatureMapProjector, embedding_projector
from distill.modules.teacher import TeacherWeights
from distill.modules.timm_teacher import FrozenTimmTeacher

TIMM = "timm:"


def feature_teacher(
    backbone: str, checkpoint: str | None, num_classes: int, backbone_kwargs: dict | None = None
) -> tuple[nn.Module, TeacherWeights]:
    """The frozen teacher and what puts ``checkpoint``'s weights into it at the start of a run.

    ``backbone`` is a distill backbone name (a ``FrozenTeacher`` classifier: its checkpoint a
    ``Supervised`` run, as for KD) or ``timm:<name>`` (a ``FrozenTimmTeacher``: its checkpoint
    the timm model's state dict; ``backbone_kwargs`` go to ``timm.create_model``). Either
    gives ``forward_features``, ``forward_dense``, ``num_features`` and ``num_classes``.

    Raises:
        ConfigError: No checkpoint (a frozen random teacher teaches nothing), or a name or
            arguments that build no network.
    """
    if not checkpoint:
        raise ConfigError(
            "model.init_args.teacher_checkpoint is required: the teacher is frozen, and a "
            "frozen random teacher teaches nothing. Give a trained run, e.g. the run directory "
            "of a Supervised run (runs/cifar10-5k/supervised_resnet20_seed0), a checkpoint "
            "file, or for a timm: teacher the state dict of the timm model."
        )
    if backbone.startswith(TIMM):
        teacher = FrozenTimmTeacher(backbone.removeprefix(TIMM), backbone_kwargs)
    else:
        teacher = FrozenTeacher(backbone, num_classes, backbone_kwargs)
    return teacher, TeacherWeights(teacher, checkpoint)


class FeatureKD(Method):
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

    The teacher (``feature_teacher``) is frozen, in eval mode, and runs without gradient; a
    distill classifier (``teacher_backbone: resnet20``) or a timm model
    (``teacher_backbone: timm:vit_small_patch16_224``). ``teacher_image_size`` resizes the
    student's batch for it on the device (bilinear, antialiased); its normalisation is the
    student's. KD on logits (``α > 0``) needs the teacher's classifier over the same classes.

    Reference settings: FitNets' hint weight ``β = 100`` with MSE (RepDistiller, on CIFAR-100
    intermediate maps); SimReg distils without labels (``γ = 0``), its MLP and ``cosine`` at
    ``β = 2`` (its ``2 − 2·cos``), ImageNet recipe in configs/feature/imagenet_*.yaml.

    Args:
        student_backbone: Backbone name of the student.
        teacher_backbone: A distill backbone name or ``timm:<model name>``.
        teacher_checkpoint: The teacher's weights (required; see ``feature_teacher``).
        num_classes: Classes of the student's head; must match the DataModule.
        level: ``embedding`` or ``dense``.
        metric: ``mse`` or ``cosine``.
        projector: ``linear``, ``mlp`` (embedding only) or ``identity`` (equal widths).
        feature_weight: ``β``.
        ce_weight: ``γ``.
        kd_weight: ``α``.
        temperature: KD temperature ``T``.
        teacher_image_size: Side the student's batch is resized to for the teacher (``None``:
            as it is).
        student_backbone_kwargs: Extra student backbone arguments.
        teacher_backbone_kwargs: Extra teacher backbone (or ``timm.create_model``) arguments.
        **kwargs: Optimisation arguments of ``Method``.
    """

    def __init__(
        self,
        student_backbone: str = "resnet8",
        teacher_backbone: str = "resnet20",
        teacher_checkpoint: str | None = None,
        num_classes: int = 100,
        level: Literal["embedding", "dense"] = "embedding",
        metric: Literal["mse", "cosine"] = "mse",
        projector: Literal["linear", "mlp", "identity"] = "linear",
        feature_weight: float = 1.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        teacher_image_size: int | None = None,
        student_backbone_kwargs: dict | None = None,
        teacher_backbone_kwargs: dict | None = None,
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
        if teacher_image_size is not None:
            require_positive_int(f"{MODEL}.teacher_image_size", teacher_image_size)
        if level == "dense" and projector == "mlp":
            raise ConfigError(
                f"{MODEL}.projector='mlp' is for level: embedding; with level: dense the "
                "projector is linear (a 1x1 convolution and batch norm) or identity"
            )
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.num_classes = num_classes
        self.level, self.metric = level, metric
        self.feature_weight, self.ce_weight, self.kd_weight = feature_weight, ce_weight, kd_weight
        self.temperature = temperature
        self.teacher_image_size = teacher_image_size
        student = create_backbone(student_backbone, **(student_backbone_kwargs or {}))
        self.student = Classifier(student, num_classes)
        self.teacher, self.teacher_weights = feature_teacher(
            teacher_backbone, teacher_checkpoint, num_classes, teacher_backbone_kwargs
        )
        self._check_teacher(teacher_backbone, projector)
        widths = (self.student.num_features, self.teacher.num_features)
        if level == "dense":
            self.projector = FeatureMapProjector(*widths, identity=projector == "identity")
        else:
            self.projector = embedding_projector(*widths, projector)
        self.init_classification_metrics(num_classes)

    def _check_teacher(self, name: str, projector: str) -> None:
        """Refuses a student and teacher this level, projector and KD cannot pair."""
        student, teacher = self.student.num_features, self.teacher.num_features
        if projector == "identity" and student != teacher:
            raise ConfigError(
                f"{MODEL}.projector='identity' needs the student's and the teacher's features "
                f"of one width, but the student's have {student} and the teacher {name!r}'s "
                f"{teacher}; use projector: linear"
            )
        if self.level == "dense":
            for role, network in (("student", self.student), ("teacher", self.teacher)):
                if not network.has_feature_map:
                    raise ConfigError(
                        f"{MODEL}.level='dense' needs the {role}'s last feature map, but "
                        f"{role}_backbone has none (a ViT's patch tokens come from a timm: "
                        "teacher; distill's convolutional backbones have one)"
                    )
        if self.kd_weight and self.teacher.num_classes != self.num_classes:
            raise ConfigError(
                f"{MODEL}.kd_weight={self.kd_weight} matches the teacher's logits with the "
                f"student's {self.num_classes} classes, but the teacher {name!r} has "
                f"{self.teacher.num_classes or 'no'} classes; set kd_weight: 0, or build the "
                "teacher with its classifier (teacher_backbone_kwargs: {num_classes: ...})"
            )

    def forward(self, images: Tensor) -> Tensor:
        return self.student(images)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.projector]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def setup(self, stage: str) -> None:
        self.check_num_classes(self.num_classes)

    # After Lightning restored any checkpoint, which brings the teacher with it.
    def on_fit_start(self) -> None:
        self.teacher_weights.load_unless_given(self.trainer)
        super().on_fit_start()

    def on_validation_start(self) -> None:
        self.teacher_weights.load_unless_given(self.trainer)

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
        """The frozen teacher's features (as ``student_outputs``) and logits, no gradient."""
        images = self.teacher_inputs(images)
        if self.level == "embedding":
            return self.teacher.forward_features(images)
        feature_map, _, logits = self.teacher.forward_dense(images)
        return feature_map, logits

    def teacher_inputs(self, images: Tensor) -> Tensor:
        """The student's batch at the teacher's input size (bilinear, antialiased).

        Raises:
            ConfigError: A teacher that takes one image size only gets another.
        """
        size = self.teacher_image_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        fixed = getattr(self.teacher, "fixed_input_size", None)
        if fixed is not None and tuple(images.shape[-2:]) != fixed:
            raise ConfigError(
                f"the teacher {self.hparams.teacher_backbone!r} takes {fixed[0]}x{fixed[1]} "
                f"images, the batch has {images.shape[-2]}x{images.shape[-1]}: set "
                f"{MODEL}.teacher_image_size: {fixed[0]} (or build it for this size, "
                "teacher_backbone_kwargs: {img_size: ...})"
            )
        return images

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "test")
