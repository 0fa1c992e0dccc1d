"""Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (DIST)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from distill.arguments import MODEL, require_each, require_non_negative, require_positive
from distill.losses import dist_terms
from distill.methods.distillation import TeacherStudent
from distill.modules.distributed import gather_rows


class DIST(TeacherStudent):
    """Distillation of relations: the Pearson correlations of the class probabilities.

    The student matches the relations of the teacher's ``softmax(z/τ)``, not its values:
    their correlations within each sample (inter-class) and within each class (intra-class).

    ``L = w_CE·CE(y, s) + w_KD·KD(s, t) + w_DIST·(β·L_inter + γ·L_intra)``, with
    ``L_inter`` and ``L_intra`` the ``τ²``-scaled relation losses of
    ``distill.losses.dist.dist_terms`` (one minus the mean Pearson correlation over the
    batch's samples, resp. over its classes) and ``β``, ``γ`` the paper's. Reference
    CIFAR-100 settings (the authors' ``configs/strategies/distill/dist_cifar.yaml``:
    ``kd: dist_t4``, ``ori_loss_weight: 1``, ``kd_loss_weight: 2``): ``w_CE = 1``,
    ``w_DIST = 2``, ``β = γ = 1``, ``τ = 4``, no KD (``w_KD = 0``); their ImageNet
    ``resnet_dist.yaml`` has the same weights with ``τ = 1``.

    Under DDP both relations are those of the global batch, as on one device: every rank
    gathers all ranks' logits (differentiably, ``gather_rows``) and computes both terms on
    them, so the update equals one process's on the concatenated batch (CE and KD, per-sample
    terms, stay per rank).

    Args:
        inter_weight: ``β``, the weight of the inter-class (per-sample) relation.
        intra_weight: ``γ``, the weight of the intra-class (per-class) relation.
        dist_weight: ``w_DIST``, on the sum of the relation terms.
        temperature: ``τ``, of DIST's softmax and of the optional KD term.
        kd_weight: ``w_KD`` (0: DIST alone).
        ce_weight: ``w_CE``.
        **kwargs: ``TeacherStudent`` arguments (backbones, the teacher, num_classes,
            optimisation).
    """

    teacher_reads: ClassVar[tuple[str, ...]] = ("logits",)  # relations of the teacher's logits

    def __init__(
        self,
        inter_weight: float = 1.0,
        intra_weight: float = 1.0,
        dist_weight: float = 2.0,
        temperature: float = 4.0,
        kd_weight: float = 0.0,
        ce_weight: float = 1.0,
        **kwargs,
    ) -> None:
        require_each(
            require_non_negative, MODEL, inter_weight=inter_weight, intra_weight=intra_weight,
            dist_weight=dist_weight, kd_weight=kd_weight,
        )  # fmt: skip
        require_positive(f"{MODEL}.temperature", temperature)
        super().__init__(ce_weight=ce_weight, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.inter_weight = inter_weight
        self.intra_weight = intra_weight
        self.dist_weight = dist_weight
        self.set_kd_term(kd_weight, temperature)  # τ is DIST's too

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        logits, teacher_logits = self.student_and_teacher_logits(images)
        # The intra-class relation couples the samples: it needs the global batch's columns.
        gathered = gather_rows(self, logits, teacher_logits, sync_grads=True)
        inter, intra = dist_terms(*gathered, self.temperature)
        relations = self.inter_weight * inter + self.intra_weight * intra
        terms = {"dist_inter": inter, "dist_intra": intra}
        weighted = self.dist_weight * relations
        return self.add_ce_and_kd(logits, targets, teacher_logits, weighted, terms)
