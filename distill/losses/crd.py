"""Tian et al. 2020, "Contrastive Representation Distillation" (CRD).

``nce_loss`` is the NCE objective of one direction; ``CRDLoss`` holds the state that CRD
needs: the two embed heads, the student and teacher memory banks, the normalisers ``Z``
and the negative sampler's class index.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.modules.memory_bank import MomentumMemoryBank
from distill.precision import float32


def nce_loss(scores: Tensor, num_rows: int) -> Tensor:
    """NCE loss of one direction, batch mean.

    ``-[log(h⁺/(h⁺ + K/N)) + Σ_neg log((K/N)/(h⁻ + K/N))]`` with ``h`` the normalised
    critic values, the positive in column 0 and ``K`` negatives after it.

    Args:
        scores: ``[B, 1 + K]`` critic values ``h``.
        num_rows: ``N``, the number of memory rows (dataset size).
    """
    noise = (scores.shape[1] - 1) / num_rows  # K · P_noise with P_noise = 1/N
    positive, negatives = scores[:, 0], scores[:, 1:]
    log_positive = torch.log(positive / (positive + noise))
    log_negatives = torch.log(noise / (negatives + noise)).sum(dim=1)
    return -(log_positive + log_negatives).mean()


def sample_uniform(
    indices: Tensor, num_negatives: int, num_rows: int, offset: int = 0, total: int | None = None
) -> Tensor:
    """``[B, 1 + K]`` memory rows: each anchor's own row, then ``K`` uniform draws of all rows.

    Under DDP the draw is made for the ``total`` anchors of the global batch and this rank
    keeps its ``B`` rows from ``offset`` on: every rank draws from the same random stream, so
    the ranks get different negatives, exactly those one process would draw for the batch.
    """
    shape = (total or len(indices), num_negatives)
    negatives = torch.randint(num_rows, shape, device=indices.device)[
        offset : offset + len(indices)
    ]
    return torch.cat([indices.unsqueeze(1), negatives], dim=1)


def sample_other_class(
    indices: Tensor,
    labels: Tensor,
    num_negatives: int,
    order: Tensor,
    starts: Tensor,
    counts: Tensor,
    offset: int = 0,
    total: int | None = None,
) -> Tensor:
    """``[B, 1 + K]`` rows: the anchor's own, then ``K`` uniform draws among other classes' rows.

    Vectorised on the device: with the rows sorted by class (``order``; class ``c`` occupies
    ``starts[c] : starts[c] + counts[c]``), a uniform draw over the ``N - counts[c]``
    positions outside the anchor's class range is shifted past that range and mapped
    through ``order``. ``offset`` and ``total`` as in ``sample_uniform``.
    """
    anchor_start, anchor_count = starts[labels].unsqueeze(1), counts[labels].unsqueeze(1)
    outside = len(order) - anchor_count  # [B, 1]
    uniform = torch.rand(total or len(indices), num_negatives, device=indices.device)
    uniform = uniform[offset : offset + len(indices)]
    position = (uniform * outside).long().clamp_max(outside - 1)
    position = position + (position >= anchor_start).long() * anchor_count
    return torch.cat([indices.unsqueeze(1), order[position]], dim=1)


class CRDLoss(nn.Module):
    """CRD's objective with its state: embed heads, two memory banks, ``Z`` and the sampler.

    For a batch with student features ``f_s``, teacher features ``f_t`` and dataset
    indices ``i``: ``z_s = normalise(g_s(f_s))``, ``z_t = normalise(g_t(f_t))`` (128-d).
    The student anchor ``z_s`` is contrasted with the teacher bank's rows (its own row
    ``i`` positive, ``K`` sampled rows negative) and the teacher anchor ``z_t`` with the
    student bank, with critic ``h = exp(zᵀm/τ)/Z``; the loss is the sum of both
    directions' ``nce_loss``. Each ``Z`` is fixed from the first batch as
    ``mean(exp(zᵀm/τ))·N``. ``update_memory`` then moves both banks' rows ``i`` with
    momentum (call it after the optimiser step).

    Args:
        student_dim: Width of the student's features.
        teacher_dim: Width of the teacher's features.
        num_rows: ``N``, the training set size.
        embed_dim: Width of the embeddings and bank rows (128).
        num_negatives: ``K`` (16384).
        temperature: ``τ`` (0.07).
        memory_momentum: Bank momentum (0.5).
        sampler: ``uniform`` over all rows (label-free) or ``other_class`` (rows whose
            label differs from the anchor's; the reference CIFAR-100 setting).
        labels: ``[N]`` dataset labels, needed by ``other_class``.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_rows: int,
        embed_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        memory_momentum: float = 0.5,
        sampler: Literal["uniform", "other_class"] = "other_class",
        labels: Tensor | None = None,
    ) -> None:
        super().__init__()
        if sampler not in ("uniform", "other_class"):
            raise ConfigError(f"CRD sampler={sampler!r}; valid: uniform, other_class")
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.sampler = sampler
        self.embed_student = nn.Linear(student_dim, embed_dim)
        self.embed_teacher = nn.Linear(teacher_dim, embed_dim)
        self.student_memory = MomentumMemoryBank(num_rows, embed_dim, memory_momentum)
        self.teacher_memory = MomentumMemoryBank(num_rows, embed_dim, memory_momentum)
        # Z of the student-anchor and teacher-anchor directions; 0 (no Z is) until the first
        # batch, not NaN: the state stays finite. Whether they are fixed is a Python flag, read
        # back from the buffer on loading, so that no step reads the buffer from the device.
        self.register_buffer("normalizers", torch.zeros(2))
        self.normalizers_fixed = False
        # The buffer a forward changes (distill.modules.finite.forward_buffers): a batch that
        # nonfinite_loss: skip skips restores it, and the load hook below then the flag.
        self.forward_buffers = ("normalizers",)
        self.register_load_state_dict_post_hook(CRDLoss._read_normalizers_fixed)
        if sampler == "other_class":
            if labels is None or len(labels) != num_rows:
                raise ConfigError(
                    "CRD's other_class sampler needs one label per training sample; "
                    "use sampler: uniform for unlabelled data"
                )
            labels = labels.long()
            counts = torch.bincount(labels)
            self.register_buffer("labels", labels)
            self.register_buffer("order", torch.argsort(labels, stable=True))
            self.register_buffer("starts", torch.cumsum(counts, 0) - counts)
            self.register_buffer("counts", counts)

    def _read_normalizers_fixed(self, incompatible_keys) -> None:
        # Checkpoints written before this version marked an unfixed Z with NaN.
        self.normalizers_fixed = bool((self.normalizers > 0).all())

    def embed(self, student_features: Tensor, teacher_features: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised embeddings ``z_s``, ``z_t`` ``[B, embed_dim]``."""
        z_student = F.normalize(self.embed_student(student_features), dim=1)
        z_teacher = F.normalize(self.embed_teacher(teacher_features), dim=1)
        return z_student, z_teacher

    def sample(self, indices: Tensor, offset: int = 0, total: int | None = None) -> Tensor:
        """``[B, 1 + K]`` bank rows: positive first, then the negatives (see ``sample_uniform``
        for ``offset`` and ``total``, this rank's place in the global batch)."""
        if self.sampler == "uniform":
            rows = len(self.student_memory)
            return sample_uniform(indices, self.num_negatives, rows, offset, total)
        return sample_other_class(
            indices, self.labels[indices], self.num_negatives, self.order, self.starts,
            self.counts, offset, total,
        )  # fmt: skip

    @float32
    def forward(
        self,
        z_student: Tensor,
        z_teacher: Tensor,
        indices: Tensor,
        offset: int = 0,
        total: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Losses of the student-anchor and teacher-anchor directions (scalars).

        Scores, ``Z`` and the losses are computed in float32 with autocast off (float64
        stays float64): in bf16, ``exp(zᵀm/τ)`` with ``τ = 0.07`` is off by several percent.
        ``offset`` and ``total`` place this rank's anchors in the global batch (``sample``).
        Under DDP ``Z`` is the mean over the whole first global batch (all-reduced), so every
        rank holds the same.
        """
        rows = self.sample(indices, offset, total)
        num_rows = len(self.student_memory)
        # Scoring every bank row with one matmul, then picking the sampled ones, avoids the
        # reference's [B, 1 + K, dim] gather of rows (537 MB at B = 64, K = 16384).
        student_logits = (z_student @ self.teacher_memory.rows.T).gather(1, rows)
        teacher_logits = (z_teacher @ self.student_memory.rows.T).gather(1, rows)
        exp_student = torch.exp(student_logits / self.temperature)
        exp_teacher = torch.exp(teacher_logits / self.temperature)
        if not self.normalizers_fixed:
            with torch.no_grad():
                count = exp_student.new_full((), exp_student.numel())
                sums = torch.stack([exp_student.sum(), exp_teacher.sum(), count])
                if dist.is_available() and dist.is_initialized():
                    dist.all_reduce(sums)
                self.normalizers.copy_(sums[:2] / sums[2] * num_rows)
            self.normalizers_fixed = True
        student_loss = nce_loss(exp_student / self.normalizers[0], num_rows)
        teacher_loss = nce_loss(exp_teacher / self.normalizers[1], num_rows)
        return student_loss, teacher_loss

    @torch.no_grad()
    def update_memory(self, z_student: Tensor, z_teacher: Tensor, indices: Tensor) -> None:
        """Moves both banks' rows ``indices`` towards this batch's embeddings."""
        self.student_memory.update(indices, z_student)
        self.teacher_memory.update(indices, z_teacher)
