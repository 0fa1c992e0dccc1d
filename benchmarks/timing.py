"""The timing loop the benchmark scripts share (imported as ``timing`` from benchmarks/)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from unittest import mock

import lightning as L
import torch
from lightning.pytorch.core.optimizer import _configure_optimizers


def add_timing_arguments(
    parser: argparse.ArgumentParser, steps: int, warmup: int, repeats: int
) -> None:
    """``--device``, ``--batch-size`` (64) and the ``seconds_per_step`` loop's ``--steps``,
    ``--warmup`` and ``--repeats`` (defaults given)."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=repeats)


def seconds_per_step(
    steps_by_name: dict[str, Callable[[], object]],
    steps: int,
    warmup: int,
    repeats: int,
    device: torch.device,
) -> dict[str, float]:
    """Median seconds per call of each named function, over ``repeats`` runs of ``steps`` calls.

    Each function is first called ``warmup`` times. Repeats are interleaved (every function
    once per round), so a background load that varies over time affects every row alike and
    the ratios stay comparable. On CUDA the device is synchronised around each run.
    """
    samples: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    for _ in range(repeats):
        for name, step in steps_by_name.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            samples[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def without_trainer(
    method, batch_size: int, own_optimizer: bool = False
) -> tuple[torch.optim.Optimizer, mock.MagicMock]:
    """An optimiser for ``method`` (SGD, or with ``own_optimizer`` the first of its
    ``configure_optimizers``) and a trainer stand-in set on it (one process, no logger,
    epoch 0, the counters the methods read), so that its hooks run outside ``Trainer.fit``."""
    trainer = mock.MagicMock(
        world_size=1, global_step=0, current_epoch=0, num_training_batches=64,
        accumulate_grad_batches=1, estimated_stepping_batches=1000, max_epochs=16,
        datamodule=SimpleNamespace(num_classes=10, batch_size=batch_size),
    )  # fmt: skip
    method._trainer = trainer
    method.log = lambda *a, **k: None  # no trainer to log to
    if own_optimizer:
        optimizer = _configure_optimizers(method.configure_optimizers())[0][0]
    else:
        params = [p for m in method.trainable_modules() for p in m.parameters()]
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    trainer.optimizers = [optimizer]
    return optimizer, trainer


def training_step(
    method, optimizer: torch.optim.Optimizer, trainer, batch, clip: float | None = None
) -> None:
    """One optimisation step as Lightning runs it: ``training_step``, backward,
    ``on_before_optimizer_step``, gradient clipping (with ``clip``), optimiser step and
    ``on_train_batch_end`` (queue, EMA and centre updates)."""
    optimizer.zero_grad(set_to_none=True)
    method.training_step(batch, 0).backward()
    method.on_before_optimizer_step(optimizer)
    if clip is not None:
        method.configure_gradient_clipping(optimizer, clip, "norm")
    optimizer.step()
    trainer.global_step += 1
    method.on_train_batch_end(None, batch, 0)


class EpochTimer(L.Callback):
    """Seconds of each training epoch: from its start to the end of its last batch."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = self._last = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Validation (k-NN) runs after the last batch and before this hook: not counted.
        self.seconds.append(self._last - self._start)
