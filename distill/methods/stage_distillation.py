"""What the teacher→student methods on intermediate feature maps share (FitNets, AT, SP, VID):
stage pairs named in the config, and one forward of each network per step giving its stages.

RepDistiller's models return a feature list ``feat`` (``model(x, is_feat=True)``): the stem,
each stage's output, then the pooled embedding. distill's ``stage_names`` list the same maps
in the same order, so ``feat[k]`` is ``stage_names(backbone)[k]``:

- the CIFAR ResNets (``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``) and WRNs:
  ``stem, stage1, stage2, stage3, pool`` (``f0`` ... ``f4``);
- the VGGs, MobileNetV2, ``resnet18``, ``resnet50`` and ``torchvision:resnet*``:
  ``stem, stage1, ..., stage4, pool`` (``f0`` ... ``f5``);
- ``timm:`` models: the modules of timm's ``feature_info``, then ``pool``.

Each method's default pairs (``stages: null``) index that list as RepDistiller's
``train_student.py`` indexes ``feat``: FitNets ``feat[2]`` (its ``hint_layer``: ``stage2``),
AT and VID ``feat[1:-1]`` (every stage but the stem: ``stage1`` ... ``stage3`` of a CIFAR
ResNet or WRN, ``stage1`` ... ``stage4`` of a VGG), SP ``feat[-2]`` (the last map before
pooling: ``stage3``, resp. ``stage4``). All read the stages as RepDistiller does with
``preact=False``: after a stage's last ReLU (a WRN's pre-activation groups end in their
residual sum).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from distill.arguments import MODEL, items, require_non_negative, require_positive
from distill.backbones import POOL, stage_names, stage_shapes
from distill.errors import ConfigError
from distill.methods.distillation import TeacherStudent

StagePairs = list[tuple[str, str]]


class StageDistillation(TeacherStudent):
    """A ``TeacherStudent`` whose distillation term compares the feature maps of paired stages.

    ``L = γ·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + β·L_stages``.

    Each step runs the student once (its paired stages, embedding and logits) and the frozen
    teacher once (its paired stages, and its logits, read for KD), the teacher under
    inference mode and fed its own inputs (``TeacherNetwork.forward_stages``). What a method
    learns besides the student (FitNets' connectors, VID's regressors and variances) sits
    beside it, so ``distill export`` leaves it out.

    Args:
        stages: ``[[student stage, teacher stage], ...]``, names of
            ``distill.backbones.stage_names`` (``pool``, the embedding, is not a feature map);
            ``None``: the method's RepDistiller default (see the module docstring).
        kd_weight: ``α`` (RepDistiller's feature methods: 0).
        temperature: KD temperature ``T``.
        ce_weight: ``γ``.
        **kwargs: ``TeacherStudent`` arguments (backbones, the teacher, num_classes,
            optimisation).
    """

    #: A stage is read off the teacher's backbone: its head matters for KD's logits only.
    teacher_reads: ClassVar[tuple[str, ...]] = ("logits", "backbone")

    def __init__(
        self,
        stages: list[list[str]] | None = None,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
        **kwargs,
    ) -> None:
        require_non_negative(f"{MODEL}.kd_weight", kd_weight)
        require_positive(f"{MODEL}.temperature", temperature)
        super().__init__(ce_weight=ce_weight, **kwargs)
        self.set_kd_term(kd_weight, temperature)
        self.stage_pairs = self._stage_pairs(stages)

    @classmethod
    def default_stages(cls, student: list[str], teacher: list[str]) -> StagePairs:
        """The method's RepDistiller pairs, from both networks' ``stage_names`` (``feat``)."""
        raise NotImplementedError(f"{cls.__name__} names its default stage pairs")

    def _stage_pairs(self, stages: list[list[str]] | None) -> StagePairs:
        """``stages`` checked against both backbones' stage names, or the default pairs.

        Raises:
            ConfigError: A malformed list, a stage a backbone does not have (the message
                lists those it has), or a default that does not fit the backbones.
        """
        names = {}
        for role, network in (("student", self.student), ("teacher", self.teacher)):
            try:
                names[role] = stage_names(network.backbone)
            except ConfigError as error:
                raise ConfigError(f"{MODEL}.stages: the {role}'s {error}") from error
        if stages is None:
            return self.default_stages(names["student"], names["teacher"])
        pairs = [items(pair) for pair in items(stages)]
        if not pairs or any(
            len(pair) != 2 or not all(isinstance(name, str) for name in pair) for pair in pairs
        ):
            raise ConfigError(
                f"{MODEL}.stages={stages!r}; valid: a list of [student stage, teacher stage] "
                "pairs, e.g. [[stage2, stage2]], or null (the method's default)"
            )
        for index, role in enumerate(("student", "teacher")):
            maps = [name for name in names[role] if name != POOL]
            for pair in pairs:
                if pair[index] in maps:
                    continue
                why = " (pool is the embedding, not a feature map)" if pair[index] == POOL else ""
                raise ConfigError(
                    f"{MODEL}.stages: the {role} has no stage {pair[index]!r}{why}; its stages: "
                    f"{', '.join(maps)}"
                )
        return [(student, teacher) for student, teacher in pairs]

    @staticmethod
    def inner_pairs(student: list[str], teacher: list[str]) -> StagePairs:
        """RepDistiller's ``zip(feat_s[1:-1], feat_t[1:-1])``, for networks with as many
        stages (where RepDistiller's ``zip`` would drop the deeper network's last ones).

        Raises:
            ConfigError: The two have different numbers of stages.
        """
        student_inner, teacher_inner = student[1:-1], teacher[1:-1]
        if len(student_inner) != len(teacher_inner) or not student_inner:
            raise ConfigError(
                f"{MODEL}.stages: the default pairs every stage after the stem, but the "
                f"student's ({', '.join(student_inner)}) and the teacher's "
                f"({', '.join(teacher_inner)}) differ in number; name the pairs, e.g. "
                f"[[{student_inner[-1] if student_inner else 'stage1'}, "
                f"{teacher_inner[-1] if teacher_inner else 'stage1'}]]"
            )
        return list(zip(student_inner, teacher_inner, strict=True))

    def paired_shapes(self, image_size: int) -> tuple[list[tuple], list[tuple]]:
        """The paired stages' shapes ``(C, h, w)``, student's and teacher's, measured in a dry
        run on ``image_size`` inputs (the teacher on the size it is fed, if it is resized)."""
        student = stage_shapes(self.student.backbone, image_size, [s for s, _ in self.stage_pairs])
        teacher_size = self.teacher_inputs.image_size or image_size
        teacher = stage_shapes(
            self.teacher.backbone, teacher_size, [t for _, t in self.stage_pairs]
        )
        return [student[s] for s, _ in self.stage_pairs], [teacher[t] for _, t in self.stage_pairs]

    def paired_stages(
        self, images: Tensor
    ) -> tuple[list[Tensor], Tensor, list[Tensor], Tensor | None]:
        """One forward of each network: the student's paired stages (in the order of the
        pairs) and logits, the teacher's paired stages and logits (``None`` without a
        classifier). The embeddings go to ``step_features`` for online probes."""
        student_names = list(dict.fromkeys(s for s, _ in self.stage_pairs))
        teacher_names = list(dict.fromkeys(t for _, t in self.stage_pairs))
        stages, embedding, logits = self.student.forward_stages(images, student_names)
        teacher_stages, teacher_embedding, teacher_logits = self.teacher.forward_stages(
            images, teacher_names
        )
        self.step_features.update(student=embedding.detach(), teacher=teacher_embedding)
        return (
            [stages[s] for s, _ in self.stage_pairs],
            logits,
            [teacher_stages[t] for _, t in self.stage_pairs],
            teacher_logits,
        )
