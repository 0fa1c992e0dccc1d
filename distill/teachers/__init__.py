"""Teachers from anywhere: distill's own runs, torchvision, timm, and the checkpoints of other
projects (official MoCo v1/v2/v3, DINO, SwAV, lightly, solo-learn), each fed its own inputs.

A method with a teacher takes a ``teacher:`` specification (``TeacherSpec``) and asks this
package for the network::

    spec = TeacherSpec.from_config(teacher).resolve_embedding("logits", ("logits",), "KD")
    teacher = build_teacher(spec, num_classes=10)        # builds; reads nothing yet
    self.teacher, self.teacher_inputs, self.teacher_weights = (
        teacher.network, teacher.inputs, teacher.weights)

and ``distill.methods.teacher_hooks.TeacherHooks`` does the rest at the right moments: the
student's data statistics go to ``teacher_inputs`` at setup, the weights are read at the
start of a run (``TeacherWeights.load_unless_given``, which logs one ``LoadReport``), and a
frozen teacher with ``in_checkpoint: false`` stays out of the student's checkpoints.
"""

from distill.teachers.build import Teacher, build_momentum_teacher, build_teacher
from distill.teachers.inputs import TeacherInputs
from distill.teachers.network import TeacherNetwork, frozen_forward
from distill.teachers.report import LoadReport
from distill.teachers.spec import TeacherConfig, TeacherSpec
from distill.teachers.weights import TeacherWeights

__all__ = [
    "LoadReport",
    "Teacher",
    "TeacherConfig",
    "TeacherInputs",
    "TeacherNetwork",
    "TeacherSpec",
    "TeacherWeights",
    "build_momentum_teacher",
    "build_teacher",
    "frozen_forward",
]
