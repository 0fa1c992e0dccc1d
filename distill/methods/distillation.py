"""What teacher→student methods share: a frozen teacher, a student classifier, CE on labels.

Not a method itself: ``KD``, ``RKD`` and ``CRD`` subclass it and add their own term.
"""

from __future__ import annotations

from torch import Tensor, nn

from distill.arguments import MODEL, require_int, require_non_negative
from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.methods.base import Method
from distill.modules import Classifier, FrozenTeacher
from distill.modules.teacher import TeacherWeights


class TeacherStudent(Method):
    """A frozen ``self.teacher`` and a trained ``self.student``, both backbone + linear head.

    The teacher's weights are read from ``teacher_checkpoint`` at the start of a fit (or a
    validation) that does not restore a checkpoint; a student's checkpoint holds its
    teacher, so resuming, ``distill eval`` and ``distill export`` never read the teacher's
    file (``distill.modules.teacher.TeacherWeights``). Outside a trainer, call
    ``model.teacher_weights.load()`` before using the teacher.

    Args:
        student_backbone: Backbone name of the student.
        teacher_backbone: Backbone name of the teacher.
        teacher_checkpoint: A ``Supervised`` run directory (its ``trainer.default_root_dir``:
            the ``last.ckpt`` of its newest finished run is loaded, see
            ``distill.modules.weights.resolve_checkpoint``), a ``Supervised`` checkpoint file
            (its ``student.*`` weights) or a state dict of the teacher classifier.
        num_classes: Number of classes; must match the DataModule.
        ce_weight: Weight γ of the student's cross-entropy on labels.
        student_backbone_kwargs: Extra student backbone arguments.
        teacher_backbone_kwargs: Extra teacher backbone arguments.
        **kwargs: Optimisation arguments of ``Method`` (optimizer, lr_schedule, ...).
    """

    def __init__(
        self,
        student_backbone: str = "resnet8x4",
        teacher_backbone: str = "resnet32x4",
        teacher_checkpoint: str | None = None,
        num_classes: int = 100,
        ce_weight: float = 1.0,
        student_backbone_kwargs: dict | None = None,
        teacher_backbone_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        require_int(f"{MODEL}.num_classes", num_classes, 2)
        require_non_negative(f"{MODEL}.ce_weight", ce_weight)
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ce_weight = ce_weight
        student = create_backbone(student_backbone, **(student_backbone_kwargs or {}))
        self.student = Classifier(student, num_classes)
        if not teacher_checkpoint:
            raise ConfigError(
                "model.init_args.teacher_checkpoint is required: a trained teacher, e.g. the "
                "run directory of a Supervised run (runs/cifar10-5k/supervised_resnet20, its "
                "newest finished last.ckpt), a checkpoint file or a state dict of the classifier."
            )
        self.teacher = FrozenTeacher(teacher_backbone, num_classes, teacher_backbone_kwargs)
        self.teacher_weights = TeacherWeights(self.teacher, teacher_checkpoint)
        self.init_classification_metrics(num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.student(images)

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

    def student_and_teacher(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Embeddings and logits: ``(student_emb, student_logits, teacher_emb, teacher_logits)``."""
        student_emb, student_logits = self.student.forward_features(images)
        teacher_emb, teacher_logits = self.teacher.forward_features(images)
        return student_emb, student_logits, teacher_emb, teacher_logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "test")
