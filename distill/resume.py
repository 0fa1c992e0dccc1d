"""What a resumed fit reports: the run settings that differ from its checkpoint's, and what
that does to the learning rate.

A checkpoint restores weights, optimiser, schedule position and data order, but the trainer
and data settings are the resuming run's. Changing them is legitimate (more epochs, another
data folder) yet silently changes the run: the lr schedule is a function of the optimiser step
and of the fit's total number of steps, so a finished run resumed with a larger
``max_epochs`` has its lr jump from 0 back up. ``MethodCheckpoint`` saves ``run_settings``
with every checkpoint and, when a fit resumes, warns once with ``resume_report``, as
``distill.cli`` does for model arguments.

The optimiser is the other way round: its state (arguments, buffers, the schedule's base lr)
is restored, so the checkpoint's values win. ``check_resumed_optimizer`` refuses another
optimiser class, which could not take that state, and names the arguments that will not
apply, before anything is built.
"""

from __future__ import annotations

import importlib
import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from distill.data.base import ViewDataModule
from distill.errors import ConfigError
from distill.methods.training import optimizer_record

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
        reference = getattr(trainer.lightning_module, "lr_reference_batch", None)
        if reference:  # DINO: lr x samples per step / reference, set when the run started
            notes.append(
                f"the lr was scaled by the samples per step when the run started "
                f"(model.init_args.lr_reference_batch={reference}): the resumed optimiser "
                f"state keeps that scale, x {old_samples}/{reference}; only a new run would "
                f"scale it by {new_samples}/{reference}"
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


#: Entries of a saved parameter group that are not optimiser arguments.
NOT_ARGUMENTS = ("params", "param_names", "initial_lr")


def check_resumed_optimizer(saved: dict, configured: dict | None, ckpt_path: str) -> None:
    """Compares the configured optimiser with the one of the checkpoint a fit resumes.

    Args:
        saved: The checkpoint. Its ``optimizer_settings`` (``optimizer_record``) name the class
            and arguments. A checkpoint written before they were saved has only its parameter
            groups, which hold what the schedules made of the arguments (DINO scales the lr
            and schedules the weight decay): there the class alone is checked, by the
            argument names.
        configured: ``model.init_args.optimizer`` of the config (``class_path``, ``init_args``).
        ckpt_path: For the messages.

    Raises:
        ConfigError: Another optimiser class: it could not take the checkpoint's state (an
            Adam resumed from SGD's fails with ``KeyError: 'step'``).
    """
    optimizer = _build(configured)
    if optimizer is None:
        return  # a configured optimiser that cannot be built is reported when the fit builds it
    now = optimizer_record(optimizer)
    record = saved.get("optimizer_settings")
    if record is not None:
        same = _resolve(record["class_path"]) is _resolve(now["class_path"])
        other = None if same else record["class_path"]
    else:
        other = _unrecorded_other_class(saved, set(now["defaults"]))
    if other is not None:
        raise ConfigError(
            f"--ckpt_path {ckpt_path} holds the state of {other}, but the configured "
            f"optimiser is {now['class_path']} (model.init_args.optimizer): a resumed fit "
            "restores the checkpoint's optimiser state, which another optimiser cannot take. "
            "Resume with the checkpoint's optimiser and its arguments (the run's config.yaml "
            "beside its checkpoints folder has them), or start a new fit without --ckpt_path"
        )
    theirs = record["defaults"] if record is not None else {}
    changes = [
        f"{key}: {theirs[key]!r} -> {value!r}"
        for key, value in now["defaults"].items()
        if key in theirs and theirs[key] != value
    ]
    if changes:
        rank_zero_warn(
            f"optimiser arguments differ from the checkpoint's ({ckpt_path}): "
            f"{'; '.join(changes)}. The checkpoint's values apply: a resumed fit restores its "
            "optimiser state (arguments, buffers and the lr schedule's base lr)"
        )


def _unrecorded_other_class(saved: dict, configured_names: set[str]) -> str | None:
    """How to name the optimiser of a checkpoint without ``optimizer_settings`` when its first
    parameter group cannot be the configured class's, else ``None``.

    Only argument names that neither side has tell (SGD's ``momentum`` against Adam's
    ``betas``): a newer torch only adds names to a class.
    """
    states = saved.get("optimizer_states") or [{}]
    groups = states[0].get("param_groups") if isinstance(states[0], dict) else None
    if not groups:
        return None
    names = set(groups[0]) - set(NOT_ARGUMENTS)
    unknown = sorted(names - configured_names)
    if not (unknown and configured_names - names):
        return None
    return f"another optimiser (its arguments include {', '.join(unknown)})"


def _build(configured: dict | None) -> torch.optim.Optimizer | None:
    """The configured optimiser over one dummy parameter, or ``None`` if it cannot be built."""
    if not isinstance(configured, dict) or not isinstance(configured.get("class_path"), str):
        return None
    module, _, name = configured["class_path"].rpartition(".")
    arguments = configured.get("init_args") or {}
    try:
        optimizer_class = getattr(importlib.import_module(module), name)
        return optimizer_class([nn.Parameter(torch.zeros(1))], **arguments)
    except Exception:  # noqa: BLE001  (a bad argument: Method's own check names it)
        return None


def _resolve(class_path: str) -> object:
    """The class at ``class_path`` (``torch.optim.sgd.SGD`` is ``torch.optim.SGD``), or the
    path itself where it cannot be imported here (then compared by name)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return class_path
