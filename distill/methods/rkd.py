"""Park et al. 2019, "Relational Knowledge Distillation"."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from distill.arguments import MODEL, require_choice, require_each, require_non_negative
from distill.losses import rkd_angle_loss, rkd_distance_loss
from distill.methods.distillation import TeacherStudent
from distill.modules.distributed import gather_rows

# Both relations need 3 samples: with 2, the one normalised distance is always 1 and every
# angle is 1 or 0, so both losses are exactly 0 with no gradient.
MIN_BATCH_SIZE = 3


class RKD(TeacherStudent):
    """Relational knowledge distillation on penultimate embeddings.

    ``L = γ·CE(y, s) + β·(w_D·L_D + w_A·L_A)`` with the distance-wise ``L_D`` and
    angle-wise ``L_A`` losses of ``distill.losses`` (each the mean Huber loss over all
    pairs, resp. triplets, as the reference computes it). Modes ``D``, ``A`` and ``DA``
    (both). Reference weights ``w_D = 25``, ``w_A = 50`` apply to raw pooled features
    (RepDistiller, mdistiller); the RKD authors' CIFAR script L2-normalises first
    (``normalize: true``). A batch of fewer than 3 samples has no relation to transfer:
    both terms are then skipped (left out of the loss and the log), with a warning.

    Under DDP the relations are those of the global batch, as on one device: every rank
    gathers all ranks' embeddings (differentiably, ``gather_rows``) and computes both terms
    on them, so the update equals one process's on the concatenated batch (the angle term
    costs each rank the global batch's ``B³``).

    Args:
        mode: Which relations to transfer: ``D``, ``A`` or ``DA``.
        distance_weight: ``w_D``.
        angle_weight: ``w_A``.
        rkd_weight: ``β``, on the sum of the relational terms.
        normalize: L2-normalise embeddings before computing relations.
        ce_weight: ``γ``.
        **kwargs: ``TeacherStudent`` arguments.
    """

    def __init__(
        self,
        mode: Literal["D", "A", "DA"] = "DA",
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        rkd_weight: float = 1.0,
        normalize: bool = False,
        ce_weight: float = 1.0,
        **kwargs,
    ) -> None:
        require_choice(f"{MODEL}.mode", mode, ("D", "A", "DA"))
        require_each(
            require_non_negative, MODEL, distance_weight=distance_weight,
            angle_weight=angle_weight, rkd_weight=rkd_weight,
        )  # fmt: skip
        super().__init__(ce_weight=ce_weight, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.mode = mode
        self.distance_weight = distance_weight if "D" in mode else 0.0
        self.angle_weight = angle_weight if "A" in mode else 0.0
        self.rkd_weight = rkd_weight
        self.normalize = normalize
        self._warned_skips: set[str] = set()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        with self.keep_step_features(len(images), "student", "teacher"):
            student_emb, logits, teacher_emb, _ = self.student_and_teacher(images)
        if self.normalize:
            student_emb, teacher_emb = F.normalize(student_emb), F.normalize(teacher_emb)
        # The relations couple the samples: per-rank relations are not the global batch's.
        student_emb, teacher_emb = gather_rows(self, student_emb, teacher_emb, sync_grads=True)
        terms = {"ce": F.cross_entropy(logits, targets)}
        relational = logits.new_zeros(())
        for name, weight, relation_loss in (
            ("rkd_distance", self.distance_weight, rkd_distance_loss),
            ("rkd_angle", self.angle_weight, rkd_angle_loss),
        ):
            if weight and self.has_relations(name, len(student_emb)):
                terms[name] = relation_loss(student_emb, teacher_emb)
                relational = relational + weight * terms[name]
        loss = self.ce_weight * terms["ce"] + self.rkd_weight * relational
        self.log_terms({"loss": loss, **terms})
        return loss

    def has_relations(self, term: str, batch_size: int) -> bool:
        """Whether a batch of ``batch_size`` carries ``term``; warns once per term if not."""
        if batch_size >= MIN_BATCH_SIZE:
            return True
        if term not in self._warned_skips:
            self._warned_skips.add(term)
            rank_zero_warn(
                f"RKD skips its {term} term on a batch of {batch_size} sample(s): it needs at "
                f"least {MIN_BATCH_SIZE} (not added to the loss, not logged, on every such "
                "batch). Small last batches come from data.init_args.drop_last=false or a "
                "training set no larger than the batch size; set data.init_args.drop_last: true."
            )
        return False
