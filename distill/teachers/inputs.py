"""What a teacher is fed: the student's batch, re-normalised and resized for it on the device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


class TeacherInputs(nn.Module):
    """The student's batch as the teacher's own preprocessing would have made it.

    A batch normalised for the student is ``x_s = (u − m_s) / s_s`` of images ``u`` in
    ``[0, 1]``. The teacher wants ``x_t = (resize(u) − m_t) / s_t``. Bilinear resizing
    (antialiased, as torchvision's ``Resize`` on tensors) is a weighted mean of pixels whose
    weights sum to 1 (bicubic too, for teachers whose metadata asks for it), so it commutes
    with a per-channel affine map, and ``x_t = resize(x_s) · (s_s / s_t) + (m_s − m_t) / s_t``:
    one multiply-add per value, on whichever side of the resize has fewer pixels, for the
    whole batch on its device. The resize goes to ``image_size`` x ``image_size`` (skipped
    when the batch has that size).

    ``install`` puts it in front of a teacher backbone (a forward pre-hook), so every caller
    of the backbone, the method, k-NN and linear probes, ``distill eval``, feeds the teacher
    its own inputs. It holds no weights: nothing of it is saved in a checkpoint.

    Args:
        mean: The teacher's per-channel mean (``None``: the student's, no re-normalisation).
        std: The teacher's per-channel standard deviation (with ``mean``).
        image_size: The teacher's input size (``None``: the student's, no resize).
        origin: Where these come from, for the load report.
        interpolation: ``bilinear`` or ``bicubic`` (antialiased), as the teacher's metadata says.
    """

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_size: int | None = None,
        origin: str = "the student's",
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.image_size = image_size
        self.origin = origin
        self.interpolation = interpolation
        #: The student's ``(mean, std)``, set by ``configure``.
        self.student: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self.register_buffer("scale", torch.ones(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1), persistent=False)
        self._renormalises = False

    def configure(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Sets the student's normalisation (the DataModule's ``mean`` and ``std``)."""
        self.student = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        self._renormalises = self.mean is not None and (self.mean, self.std) != self.student
        if self._renormalises:
            # In float64, then rounded once: each coefficient is the float nearest the exact one.
            m_s, s_s = (torch.tensor(v, dtype=torch.float64) for v in self.student)
            m_t, s_t = (torch.tensor(v, dtype=torch.float64) for v in (self.mean, self.std))
            scale, shift = s_s / s_t, (m_s - m_t) / s_t
            self.scale = scale.view(1, 3, 1, 1).to(self.scale)
            self.shift = shift.view(1, 3, 1, 1).to(self.shift)

    @property
    def is_identity(self) -> bool:
        """Whether the teacher takes the student's batch as it is (same statistics and size)."""
        return self.mean is None and self.image_size is None

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` normalised for the student to ``[B, 3, S, S]`` for the teacher.

        Raises:
            ConfigError: The teacher has statistics of its own but ``configure`` was never
                told the student's (a trainer does it at setup).
        """
        if self.mean is not None and self.student is None:
            raise ConfigError(
                "the teacher's inputs are not set up: call teacher_inputs.configure(mean, std) "
                "with the student's data statistics (a Trainer does it when the run starts)"
            )
        size = self.image_size
        resize = size is not None and tuple(images.shape[-2:]) != (size, size)
        grows = resize and size * size > images.shape[-2] * images.shape[-1]
        if grows:
            images = self._renormalise(images)
        if resize:
            antialias = self.interpolation in ("bilinear", "bicubic")
            images = F.interpolate(
                images, size=(size, size), mode=self.interpolation, align_corners=False,
                antialias=antialias,
            )  # fmt: skip
        return images if grows else self._renormalise(images)

    def _renormalise(self, images: Tensor) -> Tensor:
        if not self._renormalises:
            return images
        scale, shift = self.scale, self.shift
        if scale.device != images.device or scale.dtype != images.dtype:  # e.g. distill eval
            scale, shift = scale.to(images), shift.to(images)
        return torch.addcmul(shift, images, scale)

    def _pre_hook(self, module: nn.Module, args: tuple) -> tuple:
        return (self(args[0]), *args[1:])

    def install(self, *backbones: nn.Module) -> None:
        """Feeds each backbone through this module (a forward pre-hook)."""
        for backbone in backbones:
            backbone.register_forward_pre_hook(self._pre_hook)

    def describe(self) -> str:
        """One line for the load report: what the teacher expects, and what is done to the
        student's batch for it."""
        if self.is_identity:
            return "the student's batch as it is (its statistics and size)"
        stats = "the student's statistics"
        if self.mean is not None:
            stats = f"mean {_fmt(self.mean)}, std {_fmt(self.std)}"
        size = f"{self.image_size} px" if self.image_size else "the student's size"
        text = f"{stats}, {size} ({self.origin})"
        done = []
        if self._renormalises:
            student_mean, student_std = self.student
            done.append(f"re-normalised from mean {_fmt(student_mean)}, std {_fmt(student_std)}")
        if self.image_size:
            done.append(
                f"resized to {self.image_size} px if of another size ({self.interpolation}, "
                "antialiased)"
            )
        return text + (
            f"; the student's batch is {' and '.join(done)}, on the device" if done else ""
        )
