"""DINO's self-distillation loss (Caron et al. 2021): centred, sharpened teacher targets.

``dino_loss`` and ``teacher_probabilities`` are pure functions; ``DINOLoss`` holds what must
persist between steps: the center (a buffer, so it is checkpointed) and the teacher
temperature schedule.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.utils.scheduler import linear_warmup_schedule
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.precision import at_least_float32


def teacher_probabilities(teacher_out: list[Tensor], center: Tensor, teacher_temp: float) -> Tensor:
    """Centred and sharpened teacher distributions ``softmax((t - c) / τ_t)``, in float32
    (float64 stays float64).

    Args:
        teacher_out: One ``[B, K]`` tensor per global view.
        center: ``[K]`` or ``[1, K]`` center.
        teacher_temp: ``τ_t``.

    Returns:
        ``[G, B, K]`` probabilities, no gradient.
    """
    with torch.no_grad(), torch.autocast(teacher_out[0].device.type, enabled=False):
        logits = at_least_float32(torch.stack(teacher_out)) - at_least_float32(center)
        return F.softmax(logits / teacher_temp, dim=-1)


def dino_loss(
    student_out: list[Tensor],
    teacher_out: list[Tensor],
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """Cross-entropy of the student's views against the teacher's global views.

    ``L = mean over pairs (i, v), v ≠ i, and batch of −Σ_k P_t(i)_k log P_s(v)_k`` with
    ``P_t = softmax((t − c)/τ_t)`` (no gradient) and ``P_s = softmax(s/τ_s)``; a student
    view is never matched with the same global view of the teacher. Computed in float32,
    also under bf16/fp16 autocast (float64 stays float64).

    Args:
        student_out: ``V`` tensors ``[B, K]``, the student's outputs of all views, the
            ``G`` global views first, in the teacher's order.
        teacher_out: ``G`` tensors ``[B, K]``, the teacher's outputs of the global views.
        center: ``[K]`` or ``[1, K]`` center subtracted from the teacher outputs.
        student_temp: ``τ_s``.
        teacher_temp: ``τ_t``.

    Returns:
        Scalar loss.
    """
    num_views, num_global = len(student_out), len(teacher_out)
    if num_global < 1 or num_views < 2 or num_global > num_views:
        raise ValueError(
            f"dino_loss needs 1 <= teacher views <= student views and >= 2 student views; "
            f"got {num_global} teacher and {num_views} student views"
        )
    targets = teacher_probabilities(teacher_out, center, teacher_temp)  # [G, B, K]
    with torch.autocast(student_out[0].device.type, enabled=False):
        log_probs = at_least_float32(torch.stack(student_out)) / student_temp
        log_probs = F.log_softmax(log_probs, dim=-1)
        batch = log_probs.shape[1]
        cross = -torch.einsum("gbk,vbk->gv", targets, log_probs) / batch  # [G, V]
    same_view = torch.eye(num_global, num_views, dtype=torch.bool, device=cross.device)
    # A masked sum over the fixed number of pairs: cross[~same_view] would have a size the
    # host must wait for.
    return cross.masked_fill(same_view, 0.0).sum() / (num_global * (num_views - 1))


def collapse_monitors(probs: Tensor) -> tuple[Tensor, Tensor]:
    """Mean entropy of the teacher distributions and KL(their mean ‖ uniform).

    Entropy near ``log K`` means every output is uniform (collapse to uniform); KL near
    ``log K`` means one dimension dominates every sample (collapse to one-hot). A small
    entropy with a small KL is the healthy state: sharp, but on different dimensions.

    Args:
        probs: ``[..., K]`` probabilities (``teacher_probabilities``).

    Returns:
        ``(entropy, kl_uniform)``, scalars in nats.
    """
    probs = probs.flatten(0, -2).float()
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()
    mean = probs.mean(0)
    kl_uniform = (mean * (mean.clamp_min(1e-30) * mean.numel()).log()).sum()
    return entropy, kl_uniform


class DINOLoss(nn.Module):
    """``dino_loss`` with its state: the center and the teacher temperature schedule.

    Center ``c ← m c + (1 − m) · mean of the teacher outputs`` over the global batch (an
    all-reduce of their sum and count under ``torch.distributed``, so every rank holds the
    same center), updated after the loss. ``τ_t`` rises linearly per step from
    ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_epochs``
    (DINO's code steps it once per epoch), then stays.

    Args:
        output_dim: ``K``.
        student_temp: ``τ_s``.
        teacher_temp: Final ``τ_t``.
        warmup_teacher_temp: ``τ_t`` at step 0.
        warmup_teacher_temp_epochs: Length of the warm-up (0: ``teacher_temp`` throughout).
        center_momentum: ``m``.
    """

    def __init__(
        self,
        output_dim: int = 65536,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 0.0,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        for key, value in (
            ("student_temp", student_temp),
            ("teacher_temp", teacher_temp),
            ("warmup_teacher_temp", warmup_teacher_temp),
        ):
            if not value > 0:
                raise ConfigError(f"model.init_args.{key}={value}; a temperature must be > 0")
        if warmup_teacher_temp > teacher_temp:
            raise ConfigError(
                f"model.init_args.warmup_teacher_temp={warmup_teacher_temp} exceeds "
                f"teacher_temp={teacher_temp}; the warm-up must rise to teacher_temp"
            )
        if not 0.0 <= center_momentum <= 1.0:
            raise ConfigError(
                f"model.init_args.center_momentum={center_momentum}; valid: 0 <= m <= 1"
            )
        if warmup_teacher_temp_epochs < 0:
            raise ConfigError(
                f"model.init_args.warmup_teacher_temp_epochs={warmup_teacher_temp_epochs}; "
                "valid: >= 0"
            )
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.center_momentum = center_momentum
        self.center: Tensor
        self.register_buffer("center", torch.zeros(1, output_dim))

    def teacher_temp_at(self, step: int, steps_per_epoch: int) -> float:
        """``τ_t`` at optimiser step ``step`` (0-based)."""
        warmup_steps = round(self.warmup_teacher_temp_epochs * steps_per_epoch)
        return linear_warmup_schedule(
            step, warmup_steps, self.warmup_teacher_temp, self.teacher_temp
        )

    @property
    def max_entropy(self) -> float:
        """``log K``, the entropy of the uniform distribution."""
        return math.log(self.center.shape[-1])

    def forward(self, student_out: list[Tensor], teacher_out: list[Tensor], teacher_temp: float):
        """``dino_loss`` with the current center (see there for the shapes)."""
        return dino_loss(student_out, teacher_out, self.center, self.student_temp, teacher_temp)

    @torch.no_grad()
    def update_center(self, teacher_out: list[Tensor]) -> None:
        """Moves the center towards the mean of ``G`` teacher outputs ``[B, K]`` (all ranks)."""
        outputs = at_least_float32(torch.cat(list(teacher_out)))  # [G*B, K]
        totals = torch.cat([outputs.sum(0), outputs.new_full((1,), len(outputs))])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        batch_center = totals[:-1] / totals[-1]
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
