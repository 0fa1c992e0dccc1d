"""Learned maps from a student's feature map to a teacher's shape, trained with the student:
FitNets' regressor (Romero et al. 2015) as RepDistiller writes it (``models/util.py``,
``ConvReg``): a convolution that matches the channels, and the resolution when the two differ,
then a batch norm (and a ReLU, FitNets' setting in RepDistiller).

A method keeps its connectors beside the student (``self.connectors``), not inside its backbone:
``distill export`` writes ``student.backbone.*`` only, so they are left out of an export.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from distill.backbones import stage_shapes
from distill.errors import ConfigError


class Connector(nn.Module):
    """Convolution + batch norm (+ ReLU) from ``[B, C_s, H_s, W_s]`` to ``[B, C_t, H_t, W_t]``.

    The convolution, as RepDistiller's ``ConvReg``: 1x1 for the same resolution; 3x3 with
    stride 2 for a student map twice the teacher's; a 4x4 transposed convolution with stride 2
    for one half of it; else, for a larger student map, a ``(1 + H_s - H_t) x (1 + W_s - W_t)``
    convolution without padding. It has no bias: the batch norm after it would cancel one.

    Args:
        student_shape: ``(C_s, H_s, W_s)``, a student stage's shape (``stage_shapes``).
        teacher_shape: ``(C_t, H_t, W_t)``, the teacher stage's.
        relu: End with a ReLU (RepDistiller's FitNets regressor does; its teacher hints are
            after a ReLU too).

    Raises:
        ConfigError: Shapes that are not feature maps, or a student map smaller than the
            teacher's other than by half.
    """

    def __init__(
        self, student_shape: Sequence[int], teacher_shape: Sequence[int], relu: bool = False
    ) -> None:
        super().__init__()
        if len(student_shape) != 3 or len(teacher_shape) != 3:
            raise ConfigError(
                f"a connector maps feature maps (C, H, W); got student {tuple(student_shape)} "
                f"and teacher {tuple(teacher_shape)}"
            )
        (s_channels, s_height, s_width), (t_channels, t_height, t_width) = (
            student_shape,
            teacher_shape,
        )
        if (s_height, s_width) == (2 * t_height, 2 * t_width):
            self.conv = nn.Conv2d(s_channels, t_channels, 3, stride=2, padding=1, bias=False)
        elif (2 * s_height, 2 * s_width) == (t_height, t_width):
            self.conv = nn.ConvTranspose2d(
                s_channels, t_channels, 4, stride=2, padding=1, bias=False
            )
        elif s_height >= t_height and s_width >= t_width:
            kernel = (1 + s_height - t_height, 1 + s_width - t_width)
            self.conv = nn.Conv2d(s_channels, t_channels, kernel, bias=False)
        else:
            raise ConfigError(
                f"no connector from a student map {tuple(student_shape)} to a teacher map "
                f"{tuple(teacher_shape)}: it can shrink a map, or double it, not enlarge it "
                f"otherwise; pair stages of the same or a larger student resolution"
            )
        self.bn = nn.BatchNorm2d(t_channels)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, student_map: Tensor) -> Tensor:
        """``[B, C_s, H_s, W_s]`` -> ``[B, C_t, H_t, W_t]``."""
        return self.relu(self.bn(self.conv(student_map)))


class StageConnectors(nn.Module):
    """One ``Connector`` per (student stage, teacher stage) pair, each mapping the student
    stage to the teacher stage's shape.

    Args:
        pairs: ``(student stage, teacher stage)`` names, e.g. ``[("stage2", "stage2")]``.
        student_shapes: ``{name: (C, H, W)}`` of the student (``stage_shapes``).
        teacher_shapes: The same of the teacher.
        relu: Each connector ends with a ReLU.
        identity_when_equal: A pair whose shapes are equal gets no connector (``nn.Identity``)
            instead of one (FitNets regresses every hint, so it keeps the default, False).

    Raises:
        ConfigError: A pair naming a stage not in the shapes (the message lists those there),
            or shapes no connector maps (``Connector``).
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[str]],
        student_shapes: Mapping[str, Sequence[int]],
        teacher_shapes: Mapping[str, Sequence[int]],
        relu: bool = False,
        identity_when_equal: bool = False,
    ) -> None:
        super().__init__()
        self.pairs = [_pair(pair) for pair in pairs]
        connectors = []
        for student_stage, teacher_stage in self.pairs:
            student_shape = _shape(student_shapes, student_stage, "student")
            teacher_shape = _shape(teacher_shapes, teacher_stage, "teacher")
            if identity_when_equal and tuple(student_shape) == tuple(teacher_shape):
                connectors.append(nn.Identity())
                continue
            try:
                connectors.append(Connector(student_shape, teacher_shape, relu))
            except ConfigError as error:
                raise ConfigError(
                    f"stage pair ({student_stage!r}, {teacher_stage!r}): {error}"
                ) from error
        self.connectors = nn.ModuleList(connectors)

    @classmethod
    def from_backbones(
        cls,
        pairs: Sequence[Sequence[str]],
        student: nn.Module,
        teacher: nn.Module,
        image_size: int | tuple[int, int],
        teacher_image_size: int | tuple[int, int] | None = None,
        relu: bool = False,
        identity_when_equal: bool = False,
    ) -> StageConnectors:
        """The connectors between two backbones' stages, from their shapes in a dry run
        (``stage_shapes``) at ``image_size`` (the teacher at ``teacher_image_size`` if it is fed
        inputs of another size)."""
        pairs = [_pair(pair) for pair in pairs]
        student_shapes = stage_shapes(student, image_size, [s for s, _ in pairs])
        teacher_shapes = stage_shapes(
            teacher, teacher_image_size or image_size, [t for _, t in pairs]
        )
        return cls(pairs, student_shapes, teacher_shapes, relu, identity_when_equal)

    def forward(self, student_stages: Mapping[str, Tensor]) -> list[Tensor]:
        """The student's stages mapped to the teacher's shapes, in the order of ``pairs``."""
        return [
            connector(student_stages[student_stage])
            for (student_stage, _), connector in zip(self.pairs, self.connectors, strict=True)
        ]


def _pair(pair: Sequence[str]) -> tuple[str, str]:
    if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(n, str) for n in pair):
        raise ConfigError(
            f"a stage pair is [student stage, teacher stage], e.g. [stage2, stage2]; got {pair!r}"
        )
    return pair[0], pair[1]


def _shape(shapes: Mapping[str, Sequence[int]], stage: str, network: str) -> Sequence[int]:
    if stage not in shapes:
        raise ConfigError(
            f"the {network} has no stage {stage!r} among its measured stages: "
            f"{', '.join(shapes) or 'none'}"
        )
    return shapes[stage]
