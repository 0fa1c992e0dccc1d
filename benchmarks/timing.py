"""The timing loop the benchmark scripts share (imported as ``timing`` from benchmarks/)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


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
