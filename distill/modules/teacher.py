"""A method's teacher: a frozen classifier, and when a teacher takes its pretrained weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.modules.heads import Classifier
from distill.modules.weights import (
    load_state_strict,
    read_state_dict,
    resolve_checkpoint,
    sub_state_dict,
)

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.strategies import Strategy


class FrozenTeacher(Classifier):
    """A ``Classifier`` that never trains.

    Its parameters have ``requires_grad=False`` and it stays in eval mode even when
    Lightning calls ``train()`` on the whole LightningModule each epoch, so its batch-norm
    statistics never move. It is built untrained: its weights come from
    ``load_pretrained_state`` (called by ``TeacherWeights`` at the start of a run) or with
    the state dict of a checkpoint that holds the teacher.

    Args:
        backbone: Backbone name of the teacher.
        num_classes: Classes of its head.
        backbone_kwargs: Extra backbone arguments.
    """

    def __init__(
        self, backbone: str, num_classes: int, backbone_kwargs: dict | None = None
    ) -> None:
        super().__init__(create_backbone(backbone, **(backbone_kwargs or {})), num_classes)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> nn.Module:
        """Always eval mode: the teacher's batch-norm statistics are part of what it teaches."""
        return super().train(False)

    def load_pretrained_state(self, state: dict[str, torch.Tensor], source: str) -> str:
        """Loads a ``Supervised`` checkpoint's classifier (its ``student.*`` entries) or a
        classifier's own state dict, strictly; returns what was loaded, for the log.

        Raises:
            ConfigError: Keys or shapes that do not fit (``source`` names the file), or a
                backbone's state dict alone (``distill export``'s), which has no head.
        """
        if any(key.startswith("student.") for key in state):
            state = sub_state_dict(state, "student.")
        if self._is_backbone_only(state, source):
            raise ConfigError(
                f"{source!r} holds a backbone alone, without a classification head (as "
                "`distill export` writes it), but the teacher of KD, RKD and CRD is the whole "
                "classifier, backbone and head (KD matches its logits). Give the teacher's run "
                "directory (its trainer.default_root_dir) or one of its checkpoints (e.g. "
                "lightning_logs/version_N/checkpoints/last.ckpt)."
            )
        load_state_strict(self, state, repr(source))
        return f"classifier from {source!r}"

    def _is_backbone_only(self, state: dict[str, torch.Tensor], source: str) -> bool:
        """Whether ``state`` is a backbone's own state dict: no ``backbone.``/``head.`` keys,
        and its keys are this teacher's backbone's or an export's JSON sidecar lies beside it."""
        if not state or any(key.startswith(("backbone.", "head.")) for key in state):
            return False
        own = self.backbone.state_dict()
        return set(state) <= set(own) or Path(source).with_suffix(".json").is_file()


class TeacherWeights:
    """Puts the weights of ``teacher_checkpoint`` into a method's teacher when a run needs them.

    They are not read when the model is built: a student's checkpoint holds its teacher, so
    a resumed fit, ``distill eval``, ``distill export`` and ``load_from_checkpoint`` must not
    need the teacher's file, which may be gone or hold another run by now. The method calls
    ``load_unless_given`` at the start of fit and of validation, after Lightning has
    restored any checkpoint: ``teacher_checkpoint`` is read only when no state dict has
    filled the teacher since the model was built (a restored checkpoint,
    ``load_from_checkpoint``, ``load_state_dict``). Python code that uses the teacher
    outside a trainer calls ``load()`` first.

    Under DDP every rank loads the file that rank 0 resolved, so a run directory that gains
    a new run while the ranks start still gives every rank the same teacher. (Strategies
    that restore a checkpoint only after ``on_fit_start``, such as FSDP and DeepSpeed, read
    the file on a resume too, and then replace its weights with the restored ones.)

    Args:
        teacher: The network; it loads the state dict read from the checkpoint with
            ``load_pretrained_state(state, source) -> str`` (``FrozenTeacher``,
            ``MomentumEncoder``), which returns what it loaded, for the log.
        checkpoint: ``teacher_checkpoint``: a run directory (its newest finished run, see
            ``distill.modules.weights.resolve_checkpoint``), a checkpoint or a state-dict
            file. ``None``: the teacher keeps the initialisation it was built with.
        initialisation: What the teacher holds without a checkpoint, for the log.
    """

    def __init__(
        self,
        teacher: nn.Module,
        checkpoint: str | None,
        initialisation: str = "random initialisation",
    ) -> None:
        self.teacher = teacher
        self.checkpoint = checkpoint
        #: Where the teacher's weights came from; ``None`` until they are in place.
        self.source: str | None = None if checkpoint else initialisation
        self._restored = False
        self._logged = False
        teacher.register_load_state_dict_pre_hook(self._mark_given)

    def _mark_given(self, module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        if any(key.startswith(prefix) for key in state_dict):
            self.source, self._restored = "the weights loaded with the model's state dict", True

    def load(self, strategy: Strategy | None = None) -> str:
        """Reads ``teacher_checkpoint`` into the teacher now; returns what was loaded.

        Args:
            strategy: The trainer's strategy: every rank takes the file rank 0 resolved.

        Raises:
            ConfigError: No checkpoint is set, it is missing or unreadable, or its weights do
                not fit the teacher (the message starts with
                ``model.init_args.teacher_checkpoint``).
        """
        if not self.checkpoint:
            raise ConfigError("model.init_args.teacher_checkpoint is not set: nothing to load")
        try:
            path = resolve_checkpoint(self.checkpoint)
            if strategy is not None:
                path = strategy.broadcast(path, src=0)
            self.source = self.teacher.load_pretrained_state(read_state_dict(path), path)
        except ConfigError as error:
            raise ConfigError(f"model.init_args.teacher_checkpoint: {error}") from error
        self._restored = False
        return self.source

    def load_unless_given(self, trainer: L.Trainer) -> None:
        """``load`` unless the teacher has its weights; logs where they came from, once."""
        if self.source is None:
            self.load(trainer.strategy)
        if self._logged:
            return
        self._logged = True
        source = self.source
        if self._restored and trainer.ckpt_path:
            source = f"the weights restored from {trainer.ckpt_path}"
        if self._restored and self.checkpoint:
            source += f" (teacher_checkpoint {self.checkpoint!r} not read)"
        rank_zero_info(f"Teacher: {source}")
