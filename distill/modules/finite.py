"""Watching training for NaN and infinity, in the loss terms and in the model's state.

Everything that runs every step (``FiniteWatch.observe``, ``observe_state``, ``all_finite``)
only launches device work; the host reads the result every few steps, before a checkpoint,
or (``nonfinite_loss: skip``) once per batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from distill.errors import NonFiniteLossError

#: The name under which ``FiniteWatch`` keeps the parameters and buffers.
STATE = "model state"


def extremes(tensors: Iterable[Tensor]) -> tuple[Tensor, int]:
    """``[2N]``: the minimum and maximum of each floating tensor (empty ones left out), and N.

    Both are NaN when the tensor holds a NaN (``aminmax`` propagates it) and infinite when it
    holds an infinity, and, unlike a sum or a 2-norm, never overflow from finite values.
    ``aminmax`` is a vectorised pass on the CPU, where ``torch._foreach_norm(ord=inf)`` falls
    back to a per-tensor loop over ten times slower, and it needs no float64 (which MPS
    lacks) to keep a 2-norm from overflowing. On a GPU it is one small kernel per tensor,
    queued without a sync.
    """
    tensors = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not tensors:
        return torch.zeros(0), 0
    return torch.stack([bound for t in tensors for bound in torch.aminmax(t)]), len(tensors)


def all_finite(tensors: Iterable[Tensor]) -> Tensor:
    """``[]`` bool on the tensors' device: no element is NaN or infinite (integers always
    are finite). One batch of reductions and no host sync."""
    bounds, _ = extremes(tensors)
    return bounds.isfinite().all()


def nonfinite_names(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the tensors that hold a NaN or an infinity (one sync; for messages)."""
    named = [(name, t) for name, t in named if t.is_floating_point() and t.numel()]
    bounds, count = extremes(t for _, t in named)
    finite = bounds.view(count, 2).isfinite().all(dim=1).tolist() if count else []
    return [name for (name, _), ok in zip(named, finite, strict=True) if not ok]


def floating_state(module: nn.Module) -> list[tuple[str, Tensor]]:
    """The floating-point parameters and buffers of ``module``, by their state-dict names."""
    named = [*module.named_parameters(), *module.named_buffers()]
    return [(name, t) for name, t in named if t.is_floating_point()]


def forward_buffers(module: nn.Module) -> dict[str, Tensor]:
    """The buffers a training forward may change, by name: the running statistics of norm
    layers (every module with ``track_running_stats``) and those a module names in its
    ``forward_buffers`` attribute (e.g. CRD's normalisers, fixed on the first batch).

    State that changes only after the optimiser step, in ``on_train_batch_end`` (queues,
    banks, centers, prototypes, EMA teachers), is not in it: a method makes no such update
    for a skipped batch (``Method.batch_skipped``), so nothing there needs saving.
    """
    found = {}
    for prefix, sub in module.named_modules():
        names = getattr(sub, "forward_buffers", None)
        if names is None and getattr(sub, "track_running_stats", False):
            names = [name for name, _ in sub.named_buffers(recurse=False)]
        for name in names or ():
            buffer = getattr(sub, name, None)
            if isinstance(buffer, Tensor):
                found[f"{prefix}.{name}" if prefix else name] = buffer
    return found


class FiniteWatch:
    """Remembers, on the device, the first step at which each term or the state was not finite.

    ``observe`` and ``observe_state`` only launch device work (no ``.item()``, no ``bool()``),
    so they can run every step; ``bad_terms`` synchronises and is meant for every few steps
    or before a checkpoint is written.
    """

    def __init__(self) -> None:
        self.first_bad: dict[str, Tensor] = {}
        self._pending: Tensor | None = None

    def _mark(self, name: str, bad: Tensor, step: int) -> None:
        first = self.first_bad.get(name)
        if first is None:
            first = self.first_bad[name] = torch.full((), -1, dtype=torch.long, device=bad.device)
        first.masked_fill_(bad & (first < 0), step)

    def observe(self, name: str, value: Tensor, step: int) -> None:
        """Records whether the term ``value`` (any shape) holds a NaN or infinity at ``step``."""
        bad = ~torch.isfinite(value.detach()).all()
        self._mark(name, bad, step)
        self._pending = bad if self._pending is None else self._pending | bad

    def observe_state(self, tensors: Iterable[Tensor], step: int) -> None:
        """Records whether parameters and buffers (``tensors``) are all finite after ``step``."""
        self._mark(STATE, ~all_finite(tensors), step)

    def pending(self) -> Tensor:
        """``[]`` bool on the device: a term was not finite since the last call (then reset)."""
        pending, self._pending = self._pending, None
        return pending if pending is not None else torch.zeros((), dtype=torch.bool)

    def state_bad(self) -> Tensor:
        """``[]`` bool on the device: the state was seen not finite."""
        first = self.first_bad.get(STATE)
        return first >= 0 if first is not None else torch.zeros((), dtype=torch.bool)

    def any_bad(self) -> Tensor:
        """``[]`` bool on the device: a term or the state was seen not finite."""
        if not self.first_bad:
            return torch.zeros((), dtype=torch.bool)
        return torch.stack(list(self.first_bad.values())).max() >= 0

    def forget_terms(self) -> None:
        """Forgets the terms (a skipped batch's), keeping what was seen of the state."""
        self._pending = None
        self.first_bad = {name: v for name, v in self.first_bad.items() if name == STATE}

    def bad_terms(self) -> list[tuple[str, int]]:
        """``(name, first step)`` of every term (and ``STATE``) not finite, earliest first.

        One sync for all terms.
        """
        if not self.first_bad:
            return []
        steps = torch.stack(list(self.first_bad.values())).tolist()
        bad = [(name, step) for name, step in zip(self.first_bad, steps, strict=True) if step >= 0]
        return sorted(bad, key=lambda item: item[1])


class NonFiniteGuard:
    """What ``nonfinite_loss`` does, hook by hook, for a ``LightningModule``.

    ``error``: the logged terms (``watch.observe``) and, after every optimiser step, all
    parameters and buffers are watched on the device; ``check`` raises every
    ``check_interval`` steps, before each checkpoint (then also checking the state as it is)
    and at the end of fit. ``skip``: every batch is checked once after its backward (one
    sync): a non-finite term, gradient (unless a GradScaler, which skips such steps itself,
    scales them) or running statistic restores the statistics the forward changed, drops
    the gradients of its optimiser step and marks the batch ``skipped`` (the module then
    makes no state update for it); the run stops when more than ``skip_share`` of the last
    ``skip_window`` steps were skipped, or when the state itself went non-finite (which no
    skip can undo). ``off``: nothing.

    Args:
        mode: ``error``, ``skip`` or ``off``.
        check_interval: Optimiser steps between checks in ``error`` mode.
        skip_share: The largest share of the last ``skip_window`` steps ``skip`` may skip.
        skip_window: How many recent optimiser steps ``skip_share`` counts.
    """

    def __init__(
        self, mode: str, check_interval: int = 50, skip_share: float = 0.2, skip_window: int = 50
    ) -> None:
        self.mode = mode
        self.check_interval = check_interval
        self.skip_share = skip_share
        self.watch = FiniteWatch()
        self.skipped_batches = 0
        #: Whether the current batch was skipped: its state updates must not happen.
        self.batch_skipped = False
        self._recent: deque[tuple[int, bool]] = deque(maxlen=skip_window)  # (step, skipped)
        self._saved: dict[str, Tensor] = {}
        self._reasons: list[str] = []  # why the current step is dropped; empty: it is not

    def before_batch(self, module: nn.Module) -> None:
        """Before the forward (``on_train_batch_start``): saves the forward's buffers."""
        self.batch_skipped = False
        if self.mode == "skip":
            self._saved = {name: b.clone() for name, b in forward_buffers(module).items()}

    def after_backward(self, module: L.LightningModule) -> None:
        """After each backward (``on_after_backward``): decides whether ``skip`` skips it."""
        if self.mode != "skip":
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        scaled = getattr(module.trainer.precision_plugin, "scaler", None) is not None
        flags = [
            self.watch.pending(),
            ~all_finite(grads) if not scaled else torch.zeros((), dtype=torch.bool),
            ~all_finite(forward_buffers(module).values()),
            self.watch.state_bad(),
        ]
        flags = torch.stack([f.to(module.device) for f in flags]).float()
        terms, grads_bad, buffers_bad, state_bad = module.trainer.strategy.reduce(
            flags, reduce_op="max"
        ).tolist()  # the one sync per batch of skip mode
        if state_bad:
            raise self.error(
                module, "nonfinite_loss: skip cannot undo an optimiser step that already made "
                "the weights or buffers non-finite: lower the learning rate",
            )  # fmt: skip
        if not (terms or grads_bad or buffers_bad):
            return
        if terms:
            names = [name for name, _ in self.watch.bad_terms() if name != STATE]
            self._reasons.append(", ".join(names) or "a loss term on another rank")
        if grads_bad:
            self._reasons.append("gradients")
        if buffers_bad:
            names = nonfinite_names(forward_buffers(module).items()) or ["on another rank"]
            more = ", ..." if len(names) > 1 else ""
            self._reasons.append(f"{len(names)} running statistics ({names[0]}{more})")
        # Through load_state_dict, so that modules refresh what they derive from their buffers
        # (CRD's normalizers_fixed) in their load hooks.
        module.load_state_dict(self._saved, strict=False)
        self.watch.forget_terms()
        self.batch_skipped = True

    def before_optimizer_step(self, module: L.LightningModule, optimizer) -> None:
        """``on_before_optimizer_step``: ``error`` checks now and then, ``skip`` drops a bad
        step's gradients and stops a run that skips too much."""
        step = module.global_step
        if self.mode == "error" and (step + 1) % self.check_interval == 0:
            self.check(module)
        if self.mode != "skip":
            return
        reasons, self._reasons = self._reasons, []
        self._recent.append((step, bool(reasons)))
        skipped = [s for s, was_skipped in self._recent if was_skipped]
        if reasons:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            self.skipped_batches += 1
            self.batch_skipped = True  # also the last micro-batch of an accumulated step
            rank_zero_warn(
                f"nonfinite_loss: skip: skipped global step {step}, not finite: "
                f"{'; '.join(reasons)} ({lr_text(module.trainer, step)}). No update from it, "
                f"its running statistics restored; {len(skipped)} of the last "
                f"{len(self._recent)} steps skipped (the run stops above {self.skip_share:g} of "
                f"{self._recent.maxlen})"
            )
        if len(skipped) > self.skip_share * self._recent.maxlen:
            raise NonFiniteLossError(
                f"nonfinite_loss: skip skipped {len(skipped)} of the last {len(self._recent)} "
                f"optimiser steps (global steps {skipped[0]} to {skipped[-1]}), more than "
                f"model.init_args.nonfinite_skip_share={self.skip_share:g} of "
                f"model.init_args.nonfinite_skip_window={self._recent.maxlen}: the training "
                "diverges rather than meeting an odd bad batch. The run stops without writing "
                "a checkpoint, so the last.ckpt written before (if any) is the last good state. "
                f"Likely causes: a learning rate too high ({lr_text(module.trainer, skipped[0])}"
                f"), an overflow at trainer.precision={module.trainer.precision}, or many bad "
                "inputs."
            )

    def after_optimizer_step(self, module: nn.Module, step: int) -> None:
        """After optimiser step ``step``: watches all parameters and buffers on the device."""
        if self.mode != "off":
            self.watch.observe_state([t for _, t in floating_state(module)], step)

    def check(self, module: L.LightningModule, state_now: bool = False) -> None:
        """Raises ``NonFiniteLossError`` if a term or the state was not finite on any rank.

        ``state_now`` also checks every floating parameter and buffer as they are (before a
        checkpoint): one device reduction and, with the watched flags, one sync.
        """
        if self.mode == "off":
            return
        flags = [self.watch.any_bad()]
        if state_now:
            flags.append(~all_finite([t for _, t in floating_state(module)]))
        flag = torch.stack([f.to(module.device) for f in flags]).any().float()
        if module.trainer.strategy.reduce(flag, reduce_op="max"):
            raise self.error(module)

    def error(
        self,
        module: L.LightningModule,
        note: str = "To skip such batches instead, set model.init_args.nonfinite_loss: skip",
    ) -> NonFiniteLossError:
        """The error naming the terms, the tensors, the first bad step and its lr (syncs)."""
        bad_terms = self.watch.bad_terms()
        state = floating_state(module)
        bad_tensors = nonfinite_names(state)
        parts = [f"{name} at global step {step}" for name, step in bad_terms if name != STATE]
        state_step = dict(bad_terms).get(STATE)
        if bad_tensors or state_step is not None:
            when = f"at global step {module.global_step}"
            if state_step is not None:
                when = f"from global step {state_step} on"
            more = len(bad_tensors) - 5
            names = ", ".join(bad_tensors[:5]) + (f" and {more} more" if more > 0 else "")
            parts.append(
                f"{len(bad_tensors)} of {len(state)} parameter and buffer tensors {when}"
                + (f" ({names})" if names else "")
            )
        first = min((step for _, step in bad_terms), default=module.global_step)
        trainer = module.trainer
        return NonFiniteLossError(
            f"training is not finite: {'; '.join(parts) or 'on another rank'} (epoch "
            f"{module.current_epoch}). The run stops without writing a checkpoint after step "
            f"{first}, so the last.ckpt written before (if any) is the last good state. Likely "
            f"causes: a learning rate too high ({lr_text(trainer, first)}), an overflow at "
            f"trainer.precision={trainer.precision}, or a bad input batch. {note}"
        )


def lr_text(trainer: L.Trainer, step: int) -> str:
    """``lr X at global step N``: the first group's lr at that optimiser step, from the
    schedule's ``LambdaLR`` (the lr now, said so, for another scheduler)."""
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            lr = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step)
            return f"lr {lr:.4g} at global step {step}"
    if trainer.optimizers:
        return f"lr now {trainer.optimizers[0].param_groups[0]['lr']:.4g}"
    return "lr unknown"
