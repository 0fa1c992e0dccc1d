"""Plain supervised training: the baseline student and the way teachers are trained."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.arguments import MODEL, require_int, require_number
from distill.backbones import create_backbone
from distill.methods.base import Method
from distill.modules.heads import Classifier


class Supervised(Method):
    """Cross-entropy training of a backbone with a linear head.

    Objective: ``L = CE(y, student(x))`` (optionally label-smoothed). The network is
    ``self.student``, so distillation methods load this checkpoint's ``student.*`` weights
    as their teacher (``distill.modules.load_weights``). Reference CIFAR recipe (CRD paper):
    SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, x0.1 at 150/180/210.

    Args:
        backbone: Backbone name (see ``distill.backbones.available_backbones()``).
        num_classes: Number of classes; must match the DataModule.
        backbone_kwargs: Extra backbone arguments, e.g. ``{cifar_stem: true}``.
        label_smoothing: Cross-entropy label smoothing, in [0, 1).
        **kwargs: Optimisation arguments of ``Method`` (optimizer, lr_schedule, ...).
    """

    monitor = "val/top1"

    def __init__(
        self,
        backbone: str = "resnet20",
        num_classes: int = 10,
        backbone_kwargs: dict | None = None,
        label_smoothing: float = 0.0,
        **kwargs,
    ) -> None:
        require_int(f"{MODEL}.num_classes", num_classes, 2)
        # 1 would make every target the uniform distribution: nothing left to learn.
        require_number(f"{MODEL}.label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.student = Classifier(create_backbone(backbone, **(backbone_kwargs or {})), num_classes)
        self.init_classification_metrics(num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.student(images)

    def setup(self, stage: str) -> None:
        self.check_num_classes(self.num_classes)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        with self.keep_step_features(len(images), "student"):
            logits = self.student(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        top1 = (logits.argmax(1) == targets).float().mean()
        self.log_terms({"loss": loss, "top1": top1})
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate_classifier(self.student, batch, "test")
