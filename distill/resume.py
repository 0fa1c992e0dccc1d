"""What a resumed fit reports: the run settings that differ from its checkpoint's, and what
that does to the learning rate.

A checkpoint restores weights, optimiser, schedule position and data order, but the trainer
and data settings are the resuming run's. Changing them is legitimate (more epochs, another
data folder) yet silently changes the run: the lr schedule is a function of the optimiser step
and of the fit's total number of steps, so a finished run resumed with a larger
``max_epochs`` has its lr jump from 0 back up. ``MethodCheckpoint`` saves ``run_settings``
with every checkpoint and, when a fit resumes, warns once with ``resume_report``, as
``distill.cli`` does for model arguments.
"""

from __future__ import annotations

import math

import lightning as L
from torch.optim.lr_scheduler import LambdaLR

from distill.data.base import ViewDataModule

#: The world size's key in the report: what a user sets to change it.
WORLD_SIZE = "world size (trainer.devices x trainer.num_nodes)"


def run_settings(trainer: L.Trainer) -> dict[str, object]:
    """The fit's trainer and data settings by config key, and its total optimiser steps.

    Returns ``{"settings": {key: value}, "total_steps": int | None}``; the data settings are
    a ``ViewDataModule``'s (``settings()``), under ``data.init_args.``.
    """
    settings: dict[str, object] = {
        "trainer.max_epochs": trainer.max_epochs,
        "trainer.max_steps": trainer.max_steps,
        "trainer.limit_train_batches": trainer.limit_train_batches,
        "trainer.limit_val_batches": trainer.limit_val_batches,
        WORLD_SIZE: trainer.world_size,
        "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
    }
    datamodule = trainer.datamodule
    if isinstance(datamodule, ViewDataModule):
        settings.update({f"data.init_args.{k}": v for k, v in datamodule.settings().items()})
    total = trainer.estimated_stepping_batches
    return {"settings": settings, "total_steps": int(total) if math.isfinite(total) else None}


def changed_settings(saved: dict[str, object], current: dict[str, object]) -> list[str]:
    """``"key: old -> new"`` for every key both have with another value, in ``current``'s
    order (a key only one side has, e.g. an argument of another view recipe, is skipped:
    the recipe's class is reported). Another type is another value: ``limit_val_batches``
    1.0 is every batch, 1 is one batch."""
    return [
        f"{key}: {saved[key]!r} -> {value!r}"
        for key, value in current.items()
        if key in saved and (saved[key] != value or type(saved[key]) is not type(value))
    ]


def samples_per_step(settings: dict[str, object]) -> int | None:
    """Batch size x world size x gradient accumulation, when the settings have all three."""
    keys = ("data.init_args.batch_size", WORLD_SIZE, "trainer.accumulate_grad_batches")
    if not all(isinstance(settings.get(key), int) for key in keys):
        return None
    return math.prod(settings[key] for key in keys)


def lr_change(trainer: L.Trainer) -> tuple[float, float] | None:
    """(lr the checkpoint's schedule had at the resumed step, lr the configured one gives).

    Read after the optimiser and its ``LambdaLR`` were restored (``on_train_start``): the
    optimiser holds the checkpoint's lr, the scheduler the configured function of the step.
    ``None`` for other schedulers (their value is not a function one can ask).
    """
    if not trainer.lr_scheduler_configs:
        return None
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    if not isinstance(scheduler, LambdaLR):
        return None
    before = scheduler.optimizer.param_groups[0]["lr"]
    after = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch)
    return float(before), float(after)


def resume_report(
    trainer: L.Trainer, saved: dict[str, object], now: dict[str, object], ckpt_path: str
) -> str | None:
    """The warning for a fit resumed from ``ckpt_path``: ``saved`` are the ``run_settings``
    of its run, ``now`` the resuming fit's. ``None`` when neither a setting nor the lr
    differs."""
    before_settings, settings = saved.get("settings", {}), now["settings"]
    changes = changed_settings(before_settings, settings)
    notes = []
    old_samples, new_samples = samples_per_step(before_settings), samples_per_step(settings)
    if old_samples and new_samples and old_samples != new_samples:
        notes.append(
            f"samples per optimiser step (batch size x world size x gradient accumulation): "
            f"{old_samples} -> {new_samples}"
        )
    lrs = lr_change(trainer)
    if lrs is not None and not math.isclose(*lrs, rel_tol=1e-6, abs_tol=1e-12):
        old_total, new_total = saved.get("total_steps"), now["total_steps"]
        step = trainer.global_step
        note = (
            f"the lr schedule is a function of the optimiser step and of the fit's total "
            f"steps ({old_total} -> {new_total}): at step {step} the lr was {lrs[0]:.4g} and "
            f"is now {lrs[1]:.4g}"
        )
        if old_total is not None and step >= old_total:
            note += " (the checkpoint's run had finished its schedule"
            note += ": the lr goes back up)" if lrs[1] > lrs[0] else ")"
        notes.append(note)
    if not changes and not notes:
        return None
    text = f"resuming from {ckpt_path} with settings that differ from its run's"
    if changes:
        text += f"; the configured values apply: {'; '.join(changes)}"
    if notes:
        text += f". Consequences: {'; '.join(notes)}"
    return text
