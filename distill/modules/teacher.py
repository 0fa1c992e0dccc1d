"""A trained teacher that stays frozen for the whole fit."""

from __future__ import annotations

from torch import nn

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.modules.heads import Classifier
from distill.modules.weights import load_weights, resolve_checkpoint


class FrozenTeacher(Classifier):
    """A ``Classifier`` loaded from a checkpoint that never trains.

    Its parameters have ``requires_grad=False`` and it stays in eval mode even when
    Lightning calls ``train()`` on the whole LightningModule each epoch, so its batch-norm
    statistics never move.

    Args:
        backbone: Backbone name of the teacher.
        num_classes: Classes of its head.
        checkpoint: A ``Supervised`` run directory (its ``trainer.default_root_dir``; the
            newest ``last.ckpt`` is loaded, see ``resolve_checkpoint``), checkpoint file, or
            a plain state dict of the classifier.
        backbone_kwargs: Extra backbone arguments.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        checkpoint: str | None,
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__(create_backbone(backbone, **(backbone_kwargs or {})), num_classes)
        if not checkpoint:
            raise ConfigError(
                "model.init_args.teacher_checkpoint is required: a trained teacher, e.g. the "
                "run directory of a Supervised run (runs/cifar10-5k/supervised_resnet20, its "
                "newest last.ckpt), a checkpoint file or a state dict of the classifier."
            )
        load_weights(self, resolve_checkpoint(checkpoint))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> nn.Module:
        """Always eval mode: the teacher's batch-norm statistics are part of what it teaches."""
        return super().train(False)
