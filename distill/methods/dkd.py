"""Zhao et al. 2022, "Decoupled Knowledge Distillation"."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from distill.arguments import (
    MODEL,
    require_each,
    require_int,
    require_non_negative,
    require_positive,
)
from distill.losses import dkd_terms, dkd_warmup
from distill.methods.distillation import TeacherStudent


class DKD(TeacherStudent):
    """Decoupled knowledge distillation: KD's target and non-target class terms, apart.

    ``L = γ·CE(y, s) + w(e)·(α·TCKD + β·NCKD)``, ``TCKD`` and ``NCKD`` the ``T²``-scaled
    batch means of ``distill.losses.dkd.dkd_terms``; ``w(e) = min((e + 1)/E_w, 1)``
    (``distill.losses.dkd_warmup``, ``e`` the 0-based epoch) ramps the distillation term up
    linearly over the first ``E_w`` epochs, the first weighed ``1/E_w`` as mdistiller's
    epoch 1. Reference CIFAR-100 settings (mdistiller's ``DKD.py`` and its configs):
    ``γ = 1``, ``α = 1``, ``β = 8`` (resnet32x4 → resnet8x4; 2 for resnet56 → resnet20 and
    resnet110 → resnet32, 6 for vgg13 → vgg8 and wrn_40_2 → wrn_16_2), ``T = 4``,
    ``E_w = 20``.

    ``w`` is a function of the trainer's epoch, which a checkpoint restores, so a resumed
    fit weighs every step as the uninterrupted one does (also when resumed mid-epoch).

    Args:
        alpha: ``α``, the weight of TCKD.
        beta: ``β``, the weight of NCKD.
        temperature: ``T``.
        dkd_warmup_epochs: ``E_w``; 0 weighs the DKD term fully from the first step. (Not
            ``warmup_epochs``, which is the learning rate's warm-up, as for every method.)
        ce_weight: ``γ``.
        **kwargs: ``TeacherStudent`` arguments (backbones, the teacher, num_classes,
            optimisation).
    """

    teacher_reads: ClassVar[tuple[str, ...]] = ("logits",)  # DKD splits the teacher's logits

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        dkd_warmup_epochs: int = 20,
        ce_weight: float = 1.0,
        **kwargs,
    ) -> None:
        require_each(require_non_negative, MODEL, alpha=alpha, beta=beta)
        require_positive(f"{MODEL}.temperature", temperature)
        require_int(f"{MODEL}.dkd_warmup_epochs", dkd_warmup_epochs, 0)
        super().__init__(ce_weight=ce_weight, **kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.dkd_warmup_epochs = dkd_warmup_epochs

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        logits, teacher_logits = self.student_and_teacher_logits(images)
        tckd, nckd = dkd_terms(logits, teacher_logits, targets, self.temperature)
        warmup = dkd_warmup(self.current_epoch, self.dkd_warmup_epochs)
        decoupled = warmup * (self.alpha * tckd + self.beta * nckd)
        terms = {"tckd": tckd, "nckd": nckd, "dkd_warmup": warmup}
        return self.add_ce_and_kd(logits, targets, teacher_logits, decoupled, terms)
