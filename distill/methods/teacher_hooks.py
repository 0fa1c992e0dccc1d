"""The Lightning hooks of a method whose teacher comes from ``distill.teachers``."""

from __future__ import annotations

from distill.teachers import TeacherInputs, TeacherWeights


class TeacherHooks:
    """Mixed in before ``Method`` (``class KD(TeacherHooks, Method)``) by every method that
    holds ``self.teacher_weights`` and ``self.teacher_inputs`` of ``distill.teachers``.

    - ``setup``: the teacher's inputs learn the student's data statistics (the
      DataModule's ``mean`` and ``std``), so a teacher with others gets its own.
    - ``on_fit_start``, ``on_validation_start``: the teacher's weights are read unless a
      restored checkpoint brought them (after Lightning restored it).
    - ``on_save_checkpoint``, ``on_load_checkpoint``: the checkpoint records the teacher's
      spec; with ``in_checkpoint: false`` the teacher's weights stay out of it and are loaded
      (and checked) again when it is restored.
    """

    teacher_weights: TeacherWeights
    teacher_inputs: TeacherInputs

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        if mean is not None and std is not None:
            self.teacher_inputs.configure(mean, std)

    def on_fit_start(self) -> None:
        self.teacher_weights.load_unless_given(self.trainer)
        super().on_fit_start()

    def on_validation_start(self) -> None:
        self.teacher_weights.load_unless_given(self.trainer)
        super().on_validation_start()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        self.teacher_weights.on_save_checkpoint(checkpoint, "teacher.")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.teacher_weights.on_load_checkpoint(self, checkpoint, "teacher.")
