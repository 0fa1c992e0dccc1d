"""Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (DINO)."""

from __future__ import annotations

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from distill.arguments import (
    MODEL,
    require_each,
    require_int,
    require_non_negative,
    require_positive,
    require_positive_int,
    require_probability,
)
from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.losses.dino import DINOLoss, collapse_monitors, teacher_probabilities
from distill.methods.base import Method
from distill.methods.training import clip_gradients_per_parameter
from distill.modules.collapse import CollapseWatch
from distill.modules.heads import MultiCropWrapper, dino_head


class DINO(Method):
    """Self-distillation with no labels: a student matches its EMA teacher across crops.

    ``L = mean_{i ∈ globals, v ≠ i} H(softmax((t_i − c)/τ_t), softmax(s_v/τ_s))``; the teacher
    ``θ_t ← λθ_t + (1−λ)θ_s`` after every optimiser step, ``λ`` on a cosine from
    ``momentum_start`` to ``momentum_end`` over all steps; the center ``c`` is an EMA (m 0.9)
    of the teacher outputs (``distill.losses.DINOLoss``). Reference (ImageNet, ViT-S/16):
    K 65536, hidden 2048, bottleneck 256, τ_s 0.1, τ_t 0.04 (→ 0.07 over 30 epochs in the
    stronger recipe), AdamW lr 5e-4 × batch/256 with 10 warm-up epochs and cosine to 1e-6,
    weight decay cosine 0.04 → 0.4, clipping 3.0, last layer frozen in epoch 1. The
    trainer's ``gradient_clip_val`` is DINO's per-parameter limit: each student gradient
    tensor is clipped to that norm on its own (``clip_gradients_per_parameter``), not the
    total norm (``gradient_clip_algorithm: value`` keeps Lightning's value clipping).

    The teacher stays in train mode like the student, as in DINO's code: its batch norms
    normalise with batch statistics and their running averages follow its own forward
    passes (the EMA covers parameters only); evaluation callbacks switch it to eval mode.
    Schedules are functions of ``global_step``, so a resumed fit continues them exactly.

    Args:
        backbone: Backbone name (``distill.backbones.available_backbones()``).
        backbone_kwargs: Extra backbone arguments, e.g. ``{cifar_stem: true}``.
        output_dim: ``K``, the head's output dimension.
        hidden_dim: Width of the head's hidden layers.
        bottleneck_dim: Width before the weight-normalised last layer.
        head_batch_norm: Batch norm in the head's hidden layers (DINO: off).
        norm_last_layer: Fix the norm of the last layer's weights (weight-norm ``g = 1``).
        freeze_last_layer: Epochs during which the last layer gets no update.
        num_global_views: ``G``, the leading views the teacher sees.
        student_temp: ``τ_s``.
        teacher_temp: Final ``τ_t``.
        warmup_teacher_temp: ``τ_t`` at the first step.
        warmup_teacher_temp_epochs: Linear ``τ_t`` warm-up length in epochs.
        center_momentum: Center EMA momentum ``m``.
        momentum_start: ``λ`` at the first step.
        momentum_end: ``λ`` at the last step.
        weight_decay_start: Weight decay at the first step, set every step on the first
            parameter group (cosine schedule; replaces the optimiser's ``weight_decay``;
            norms and biases stay at 0 with ``exclude_norm_bias_from_wd``).
        weight_decay_end: Weight decay at the last step.
        lr_reference_batch: The optimiser's lr is per this many images: it is multiplied by
            global batch / ``lr_reference_batch`` (``None``: used as given).
        collapse_patience: Steps of a collapsed-looking teacher before the warning.
        collapse_tolerance: Entropy or KL within this fraction of ``log K`` of ``log K``
            counts as collapsed.
        collapse_check_interval: Training steps between reads of the collapse counts (kept
            on the device in between; also read at the end of training).
        optimizer: Optimiser (AdamW in DINO; SGD or ``lightly.utils.lars.LARS`` for convnets).
        exclude_norm_bias_from_wd: No weight decay for norms and biases.
        **kwargs: The other ``Method`` arguments (lr_schedule, warmup_epochs, min_lr_ratio).
    """

    monitor = "val/knn_top1"

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_kwargs: dict | None = None,
        output_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_batch_norm: bool = False,
        norm_last_layer: bool = True,
        freeze_last_layer: int = 1,
        num_global_views: int = 2,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 0.0,
        center_momentum: float = 0.9,
        momentum_start: float = 0.996,
        momentum_end: float = 1.0,
        weight_decay_start: float = 0.04,
        weight_decay_end: float = 0.4,
        lr_reference_batch: int | None = 256,
        collapse_patience: int = 50,
        collapse_tolerance: float = 0.05,
        collapse_check_interval: int = 50,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        exclude_norm_bias_from_wd: bool = True,
        **kwargs,
    ) -> None:
        require_each(
            require_positive_int, MODEL, output_dim=output_dim, hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim, num_global_views=num_global_views,
            collapse_patience=collapse_patience, collapse_check_interval=collapse_check_interval,
        )  # fmt: skip
        require_int(f"{MODEL}.freeze_last_layer", freeze_last_layer, 0)
        require_each(
            require_positive, MODEL, student_temp=student_temp, teacher_temp=teacher_temp,
            warmup_teacher_temp=warmup_teacher_temp,
        )  # fmt: skip
        # The weight decays are set every step: no optimiser checks them.
        require_each(
            require_non_negative, MODEL, warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
            weight_decay_start=weight_decay_start, weight_decay_end=weight_decay_end,
        )  # fmt: skip
        require_each(
            require_probability, MODEL, center_momentum=center_momentum,
            collapse_tolerance=collapse_tolerance,
        )  # fmt: skip
        if not 0.0 <= momentum_start <= momentum_end <= 1.0:
            raise ConfigError(
                f"model.init_args.momentum_start={momentum_start}, momentum_end={momentum_end}; "
                "valid: 0 <= momentum_start <= momentum_end <= 1"
            )
        if lr_reference_batch is not None and lr_reference_batch < 1:
            raise ConfigError(
                f"model.init_args.lr_reference_batch={lr_reference_batch}; valid: a number of "
                "images >= 1, or null (the lr as given)"
            )
        super().__init__(
            optimizer=optimizer, exclude_norm_bias_from_wd=exclude_norm_bias_from_wd, **kwargs
        )
        self.save_hyperparameters(ignore=["optimizer"])
        self.num_global_views = num_global_views
        self.momentum_start, self.momentum_end = momentum_start, momentum_end
        self.weight_decay_start, self.weight_decay_end = weight_decay_start, weight_decay_end
        self.lr_reference_batch = lr_reference_batch
        self.collapse_check_interval = collapse_check_interval

        def network() -> MultiCropWrapper:
            net = create_backbone(backbone, **(backbone_kwargs or {}))
            head = dino_head(
                net.num_features, hidden_dim, bottleneck_dim, output_dim,
                batch_norm=head_batch_norm, freeze_last_layer=freeze_last_layer,
                norm_last_layer=norm_last_layer,
            )  # fmt: skip
            return MultiCropWrapper(net, head)

        self.student = network()
        # A second network loaded with the student's weights: a copy, never an alias, which
        # would collapse DINO silently.
        self.teacher = network()
        self.teacher.load_state_dict(self.student.state_dict())
        deactivate_requires_grad(self.teacher)
        self.dino_loss = DINOLoss(
            output_dim, student_temp, teacher_temp, warmup_teacher_temp,
            warmup_teacher_temp_epochs, center_momentum,
        )  # fmt: skip
        self.collapse_watch = CollapseWatch(
            self.dino_loss.max_entropy, collapse_patience, collapse_tolerance
        )
        self._teacher_out: list[Tensor] | None = None
        self._watched_steps = 0

    def forward(self, images: Tensor) -> Tensor:
        """Teacher backbone features ``[B, D]``, the representation DINO evaluates."""
        return self.teacher.backbone(images)

    def setup(self, stage: str) -> None:
        views = getattr(getattr(self.trainer, "datamodule", None), "views", None)
        data_globals = getattr(views, "num_global", self.num_global_views)
        if data_globals != self.num_global_views:
            raise ConfigError(
                f"model.init_args.num_global_views={self.num_global_views} but the data's "
                f"views have num_global={data_globals}; set them equal"
            )

    # Schedules: functions of the optimiser step, so that a resumed fit continues them.
    def momentum_at(self, step: int) -> float:
        """Teacher EMA momentum ``λ`` for optimiser step ``step`` (0-based)."""
        total = int(self.trainer.estimated_stepping_batches)
        return cosine_schedule(step, total, self.momentum_start, self.momentum_end)

    def weight_decay_at(self, step: int) -> float:
        """Weight decay of the decaying parameter group at optimiser step ``step``."""
        total = int(self.trainer.estimated_stepping_batches)
        return cosine_schedule(step, total, self.weight_decay_start, self.weight_decay_end)

    def global_batch_size(self) -> int:
        """Images per optimiser step over all ranks."""
        batch_size = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
        if batch_size is None:
            raise ConfigError(
                "DINO scales the lr by the global batch but found no datamodule.batch_size; "
                "use a distill DataModule or set model.init_args.lr_reference_batch: null"
            )
        return batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self):
        config = super().configure_optimizers()
        if self.lr_reference_batch:  # lr = base lr × global batch / reference batch
            scheduler = config["lr_scheduler"]["scheduler"]
            scale = self.global_batch_size() / self.lr_reference_batch
            scheduler.base_lrs = [lr * scale for lr in scheduler.base_lrs]
            for group, lr in zip(
                scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True
            ):
                group["initial_lr"] *= scale
                group["lr"] = lr * scale
        return config

    def multi_crop_views(self, batch) -> list[Tensor]:
        """The batch's views, checked: a list of ``>= 2`` tensors, ``G`` equal-size globals."""
        views = batch[0] if isinstance(batch, list | tuple) else batch
        if not isinstance(views, list | tuple) or len(views) < 2:
            raise ConfigError(
                "DINO needs multi-crop batches (a list of >= 2 views); set "
                "data.init_args.views to distill.data.MultiCropViews"
            )
        globals_ = views[: self.num_global_views]
        if len(views) < self.num_global_views or any(
            v.shape != globals_[0].shape for v in globals_
        ):
            raise ConfigError(
                f"model.init_args.num_global_views={self.num_global_views} but the batch's "
                f"views have sizes {[tuple(v.shape[-2:]) for v in views]}; the first "
                "num_global_views views must be the equal-size global crops"
            )
        return list(views)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.trainer.optimizers[0].param_groups[0]["weight_decay"] = self.weight_decay_at(
            self.global_step
        )

    def training_step(self, batch, batch_idx: int) -> Tensor:
        views = self.multi_crop_views(batch)
        step = self.global_step
        teacher_temp = self.dino_loss.teacher_temp_at(step, self.steps_per_epoch())
        with self.keep_step_features(len(views[0]), "teacher", "student"):  # first global
            with torch.no_grad():
                teacher_out = self.teacher(views[: self.num_global_views])
            student_out = self.student(views)
        loss = self.dino_loss(student_out, teacher_out, teacher_temp)
        probs = teacher_probabilities(teacher_out, self.dino_loss.center, teacher_temp)
        entropy, kl_uniform = collapse_monitors(probs)
        self.collapse_watch.observe(entropy, kl_uniform)
        self.log_terms({
            "loss": loss, "momentum": self.momentum_at(step), "teacher_temp": teacher_temp,
            "teacher_entropy": entropy, "teacher_kl_uniform": kl_uniform,
        })  # fmt: skip
        self._teacher_out = [t.detach() for t in teacher_out]
        return loss

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            clip_gradients_per_parameter(self.student.parameters(), gradient_clip_val)
        else:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        self.student.head.cancel_last_layer_gradients(self.current_epoch)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.batch_skipped():  # nonfinite_loss: skip; its teacher outputs may be NaN
            return
        # The center follows every batch the loss saw; the teacher follows optimiser steps.
        self.dino_loss.update_center(self._teacher_out)
        self._teacher_out = None
        if self.optimizer_stepped():
            update_momentum(self.student, self.teacher, self.momentum_at(self.global_step - 1))
        self._watched_steps += 1
        if self._watched_steps % self.collapse_check_interval == 0:
            self.check_collapse()

    def on_train_end(self) -> None:
        super().on_train_end()
        self.check_collapse()

    def check_collapse(self) -> None:
        """Warns once when the teacher looked collapsed for ``collapse_patience`` steps."""
        warning = self.collapse_watch.check()
        if warning:
            rank_zero_warn(warning)

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing: ``KNNEval`` and ``LinearProbe`` callbacks evaluate the backbones."""
