"""Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge
Transfer" (PKT)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from distill.arguments import MODEL, require_each, require_non_negative, require_positive
from distill.losses import pkt_loss
from distill.methods.distillation import TeacherStudent
from distill.modules.distributed import gather_rows


class PKT(TeacherStudent):
    """Probabilistic knowledge transfer: the batch's cosine-similarity distributions.

    Each embedding's similarities to the batch form a distribution; the student's is pulled
    to the teacher's.

    ``L = γ·CE(y, s) + β·KL_PKT(e_s, e_t) + α·KD(s, t)``, ``KL_PKT`` the loss of
    ``distill.losses.pkt.pkt_loss`` on the pooled penultimate embeddings ``e`` (RepDistiller's
    ``feat[-1]``); student and teacher widths may differ (it compares ``[B, B]``
    similarities). Reference CIFAR-100 settings (RepDistiller's ``train_student.py`` and
    ``run_cifar_distill.sh``: ``--distill pkt -a 0 -b 30000``): ``γ = 1``, ``β = 30000``,
    ``α = 0``, KD's ``T = 4``.

    The teacher's embedding is its backbone's pooled features, from a classifier
    (``teacher.embedding: logits``, the default, needed for KD) or from a file without one
    (``embedding: backbone``).

    Under DDP the distributions are those of the global batch, as on one device: every rank
    gathers all ranks' embeddings (differentiably, ``gather_rows``) and computes the term on
    them, so the update equals one process's on the concatenated batch.

    Args:
        pkt_weight: ``β``.
        kd_weight: ``α`` (0: PKT alone).
        temperature: KD temperature ``T``.
        ce_weight: ``γ``.
        **kwargs: ``TeacherStudent`` arguments (backbones, the teacher, num_classes,
            optimisation).
    """

    # Both give the backbone's pooled features; a projection head's output (``head``) is
    # another embedding than the one PKT transfers.
    teacher_reads: ClassVar[tuple[str, ...]] = ("logits", "backbone")

    def __init__(
        self,
        pkt_weight: float = 30000.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
        **kwargs,
    ) -> None:
        require_each(require_non_negative, MODEL, pkt_weight=pkt_weight, kd_weight=kd_weight)
        require_positive(f"{MODEL}.temperature", temperature)
        super().__init__(ce_weight=ce_weight, **kwargs)
        self.set_kd_term(kd_weight, temperature)
        self.save_hyperparameters(ignore=["optimizer"])
        self.pkt_weight = pkt_weight

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        with self.keep_step_features(len(images), "student", "teacher"):
            student_emb, logits, teacher_emb, teacher_logits = self.student_and_teacher(images)
        # The distributions couple the samples: per-rank ones are not the global batch's.
        pkt = pkt_loss(*gather_rows(self, student_emb, teacher_emb, sync_grads=True))
        return self.total_loss(logits, targets, teacher_logits, "pkt", self.pkt_weight, pkt)
