"""What every method shares: the optimiser from the config and a per-step LR schedule.

Methods subclass ``Method`` and forward its arguments with ``**kwargs``; LightningCLI reads
them through to this signature, so ``--model.init_args.lr_schedule multistep`` works for
every method. The optimiser is a constructor argument (``OptimizerCallable``) rather than a
top-level ``optimizer:`` config key, which would silently replace ``configure_optimizers``
and drop the no-weight-decay parameter group.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Collection
from typing import ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from distill.backbones import to_channels_last
from distill.backbones.compiled import CompileMode, compile_backbones
from distill.errors import ConfigError
from distill.methods import training
from distill.methods.training import (  # noqa: F401  (re-exported: the functions' old home)
    clip_gradients_per_parameter,
    lr_factor,
    rng_states,
    set_rng_states,
    split_decay_groups,
)
from distill.modules.finite import NonFiniteGuard


class Method(L.LightningModule):
    """Base of all methods: optimiser, learning-rate schedule, weight-decay groups.

    Args:
        optimizer: Optimiser class and its arguments, e.g. ``class_path: torch.optim.SGD``
            with ``init_args: {lr: 0.05, momentum: 0.9, weight_decay: 5e-4}``.
        lr_schedule: ``cosine`` (warm-up then cosine), ``multistep`` (warm-up then
            ``lr_decay`` at each of ``milestones``) or ``constant``; stepped every
            optimiser step.
        warmup_epochs: Linear warm-up length in epochs (fractions allowed).
        milestones: Epochs at which ``multistep`` multiplies the learning rate by
            ``lr_decay``.
        lr_decay: Multistep decay factor.
        min_lr_ratio: Final learning rate of the cosine, as a fraction of the base.
        exclude_norm_bias_from_wd: Put norm weights and biases in a no-weight-decay group.
        nonfinite_loss: What a NaN or infinity in a logged training term, a parameter or a
            buffer does (``distill.modules.finite.NonFiniteGuard``): ``error`` stops the run
            (``NonFiniteLossError``) and writes no checkpoint with it; ``skip`` skips the
            batch (no update, its running statistics restored) and stops when the weights
            went non-finite or too many steps were skipped; ``off`` checks nothing.
        nonfinite_check_interval: Optimiser steps between checks in ``error`` mode.
        nonfinite_skip_share: ``skip`` stops the run when it skipped more than this share
            of the last ``nonfinite_skip_window`` optimiser steps. 0.2 of 50: a corrupt image
            now and then, even a few in a row, is skipped; a run that fails every fifth step
            diverges, and stops within 50 steps instead of idling to the end.
        nonfinite_skip_window: How many recent optimiser steps ``nonfinite_skip_share`` counts.
        channels_last: Run the convolutional backbones in the channels-last memory format
            (weights and inputs; ``distill.backbones.to_channels_last``, applied when the
            Trainer sets the model up; ViTs are left as they are): faster convolutions on
            CPUs and GPUs, the same results up to float rounding.
        compile: Compile the forward of every backbone (the student's, a teacher's, a key
            encoder's) with ``torch.compile`` when the Trainer sets the model up
            (``distill.backbones.compiled.compile_backbones``): ``false`` (off), ``true``
            (torch's default mode) or a mode (``default``, ``reduce-overhead``,
            ``max-autotune``, ``max-autotune-no-cudagraphs``). The same results up to float
            rounding and the same checkpoints (no ``_orig_mod.`` keys), after a compilation
            of tens of seconds per network on a CPU at the first step, and again for each
            new way a network runs (without gradients: a teacher, a key encoder,
            validation; another batch size). Off by default: ``benchmarks/compile.py``
            measures what it gains.
        compile_backend: ``torch.compile``'s backend: ``inductor`` (needs a C++ compiler on
            CPUs), or e.g. ``aot_eager`` (traced, eager kernels) where it cannot run.
    """

    #: The validation metric the checkpoint callback keeps the best of.
    monitor: ClassVar[str] = "val/top1"

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_schedule: Literal["cosine", "multistep", "constant"] = "cosine",
        warmup_epochs: float = 0.0,
        milestones: list[int] | None = None,
        lr_decay: float = 0.1,
        min_lr_ratio: float = 0.0,
        exclude_norm_bias_from_wd: bool = False,
        nonfinite_loss: Literal["error", "skip", "off"] = "error",
        nonfinite_check_interval: int = 50,
        nonfinite_skip_share: float = 0.2,
        nonfinite_skip_window: int = 50,
        channels_last: bool = True,
        compile: bool | CompileMode = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        training.check_arguments(
            optimizer, lr_schedule=lr_schedule, warmup_epochs=warmup_epochs,
            milestones=list(milestones or []), lr_decay=lr_decay, min_lr_ratio=min_lr_ratio,
            nonfinite_loss=nonfinite_loss, nonfinite_check_interval=nonfinite_check_interval,
            nonfinite_skip_share=nonfinite_skip_share, nonfinite_skip_window=nonfinite_skip_window,
        )  # fmt: skip
        training.check_compile(compile, compile_backend)
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.milestones = list(milestones or [])
        self.lr_decay = lr_decay
        self.min_lr_ratio = min_lr_ratio
        self.exclude_norm_bias_from_wd = exclude_norm_bias_from_wd
        self.nonfinite_loss = nonfinite_loss
        self.nonfinite = NonFiniteGuard(
            nonfinite_loss, nonfinite_check_interval, nonfinite_skip_share, nonfinite_skip_window
        )
        self.channels_last = channels_last
        # Not ``self.compile``, which would hide ``nn.Module.compile``.
        self.compile_mode = "default" if compile is True else (compile or None)
        self.compile_backend = compile_backend
        self._states_before_sanity_check: dict | None = None
        self._last_optimizer_step = 0
        self._resumed_optimizer_settings: dict | None = None  # see on_load_checkpoint
        #: The step's backbone features of its first view, by submodule (see below).
        self.step_features: dict[str, torch.Tensor] = {}

    # Lightning does not checkpoint random states. Saving them with the checkpoint, and
    # keeping the sanity check from drawing random numbers, makes a resumed fit draw the
    # same shuffles, augmentations and negatives as an uninterrupted one (exact when
    # resuming at an epoch boundary with in-process data loading).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Never a checkpoint over the last good one with NaN in it (one reduction of the state).
        self.nonfinite.check(self, state_now=True)
        checkpoint["rng_states"] = rng_states()
        # The optimiser's class and arguments, which a resume compares with the configured one.
        if self._trainer is not None and self.trainer.optimizers:
            checkpoint["optimizer_settings"] = training.optimizer_record(
                self.trainer.optimizers[0], self._resumed_optimizer_settings
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        # A resumed optimiser runs on the checkpoint's arguments, not the configured ones.
        self._resumed_optimizer_settings = checkpoint.get("optimizer_settings", {})

    def on_sanity_check_start(self) -> None:
        self._states_before_sanity_check = rng_states()

    def on_sanity_check_end(self) -> None:
        set_rng_states(self._states_before_sanity_check)

    def keep_step_features(self, rows: int, *submodules: str) -> contextlib.AbstractContextManager:
        """Within the block, keeps each submodule's first backbone output, first ``rows`` rows.

        They go to ``step_features[name]``, detached ``[rows, D]``: the features of the
        step's first view (``rows`` is its batch size, when views share a forward), which
        online probes (``LinearProbe``) take instead of running the backbone again.
        """
        return training.keep_features(self, self.step_features, rows, submodules)

    def configure_model(self) -> None:
        # Before the optimisers, DDP and the checkpoint are set up: they all see the final
        # parameter layout.
        if self.channels_last:
            to_channels_last(self)
        if self.compile_mode:  # after channels_last: the compiled forward sees its layout
            mode = None if self.compile_mode == "default" else self.compile_mode
            compile_backbones(self, mode, self.compile_backend)

    def on_train_start(self) -> None:
        self._last_optimizer_step = self.global_step

    def optimizer_stepped(self) -> bool:
        """Whether an optimiser step happened since the last call; call once per batch.

        Per-step state updates (EMA teachers, momentum encoders) run in
        ``on_train_batch_end`` only when this is true, so under gradient accumulation they
        follow the optimiser, not every micro-batch. Subclasses overriding
        ``on_train_start`` must call ``super().on_train_start()``.
        """
        if self.global_step == self._last_optimizer_step:
            return False
        self._last_optimizer_step = self.global_step
        return True

    def batch_skipped(self) -> bool:
        """Whether ``nonfinite_loss: skip`` skipped this batch; first in ``on_train_batch_end``.

        Such a batch must change no state (queues, banks, centers, prototypes, EMA): its
        embeddings may be NaN, and its optimiser step did nothing.
        """
        if self.nonfinite.batch_skipped:
            self._last_optimizer_step = self.global_step  # no step to follow
        return self.nonfinite.batch_skipped

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the optimiser updates (default: the student)."""
        return [self.student]

    def frozen_modules(self) -> list[nn.Module]:
        """Modules kept in eval mode on purpose for the whole fit (a frozen teacher)."""
        return []

    def on_fit_start(self) -> None:
        # Lightning warns about modules in eval mode at the start of training; a frozen
        # teacher is one on purpose. Only that exact count is silenced: any other module left
        # in eval mode changes the count, and the warning shows.
        frozen = {id(m) for f in self.frozen_modules() for m in f.modules()}
        evaluating = [m for m in self.modules() if not m.training]
        if evaluating and all(id(m) in frozen for m in evaluating):
            warnings.filterwarnings(
                "ignore", message=rf"Found {len(evaluating)} module\(s\) in eval mode at the start"
            )

    def steps_per_epoch(self) -> int:
        """Optimiser steps per training epoch (after gradient accumulation)."""
        trainer = self.trainer
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            return max(1, trainer.estimated_stepping_batches // max(trainer.max_epochs, 1))
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))

    def configure_optimizers(self):
        groups = split_decay_groups(self.trainable_modules(), self.exclude_norm_bias_from_wd)
        optimizer = self.optimizer_factory(groups)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = self.steps_per_epoch()

        def factor(step: int) -> float:
            return lr_factor(
                step, total, per_epoch, self.lr_schedule, self.warmup_epochs,
                self.milestones, self.lr_decay, self.min_lr_ratio,
            )  # fmt: skip

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }

    def log_terms(
        self,
        terms: dict[str, torch.Tensor | float],
        prefix: str = "train/",
        unwatched: Collection[str] = (),
    ) -> None:
        """Logs every loss term and scheduled value as ``{prefix}{name}`` (``loss`` in the bar).

        Training terms are also watched for NaN and infinity (``nonfinite_loss``), except
        those named in ``unwatched`` (diagnostics that may be NaN by design). A Python number
        is logged as a tensor filled on the device: given the number, Lightning would copy it
        to the device with ``torch.tensor``, a copy the host waits for.
        """
        watch = self.training and prefix == "train/" and self.nonfinite_loss != "off"
        for name, value in terms.items():
            if isinstance(value, torch.Tensor):
                value = value.detach()
                if watch and name not in unwatched:
                    self.nonfinite.watch.observe(f"{prefix}{name}", value, self.global_step)
            else:
                value = torch.full((), value, dtype=torch.float32, device=self.device)
            self.log(f"{prefix}{name}", value, prog_bar=name == "loss")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.nonfinite.before_batch(self)

    def on_after_backward(self) -> None:
        self.nonfinite.after_backward(self)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.trainer.gradient_clip_val or self.nonfinite_loss == "skip":
            training.unscale_gradients(self.trainer, optimizer)  # see configure_gradient_clipping
        # The same schedule tags for every method: the first (decaying) group's lr and wd.
        group = optimizer.param_groups[0]
        self.log_terms({"lr": group["lr"], "wd": group.get("weight_decay", 0.0)})
        self.nonfinite.before_optimizer_step(self, optimizer)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        step = self.global_step
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.nonfinite.after_optimizer_step(self, step)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # Under a GradScaler, Lightning leaves a fused optimiser's gradients scaled and refuses
        # to clip them; on_before_optimizer_step has unscaled them, so they clip as any others.
        if gradient_clip_val and training.optimizer_unscales_itself(self.trainer, optimizer):
            training.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")
        else:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )

    def on_train_end(self) -> None:
        self.nonfinite.check(self, state_now=True)

    def init_classification_metrics(self, num_classes: int) -> None:
        """Top-1/top-5 accuracy metrics for ``evaluate_classifier``."""
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")

    def evaluate_classifier(self, classifier: nn.Module, batch, stage: str) -> None:
        """Logs ``{stage}/top1``, ``{stage}/top5`` (and ``val/loss``) of ``classifier``."""
        images, targets, _ = batch
        logits = classifier(images)
        if stage == "val":
            self.log("val/loss", F.cross_entropy(logits, targets), sync_dist=True)
        self.val_top1(logits, targets)
        self.val_top5(logits, targets)
        self.log(f"{stage}/top1", self.val_top1, prog_bar=stage == "val")
        self.log(f"{stage}/top5", self.val_top5)

    def check_num_classes(self, num_classes: int) -> None:
        """Fails early when the model's ``num_classes`` differs from the DataModule's.

        The message claims nothing about a checkpoint: the configured ``num_classes`` may
        differ from the one a resumed or validated checkpoint was trained with.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        expected = getattr(datamodule, "num_classes", None)
        if expected is not None and expected != num_classes:
            raise ConfigError(
                f"model.init_args.num_classes={num_classes} but the data "
                f"({type(datamodule).__name__}) has {expected} classes. To train a model on "
                f"this data, set model.init_args.num_classes={expected}; a checkpoint's "
                "classification head fits only data with the classes it was trained on, while "
                "`distill eval` probes a checkpoint's backbone on data with any number of classes."
            )
