"""Float32 islands under mixed precision.

Inside ``torch.autocast`` a matmul runs in bf16/fp16 even on ``.float()`` inputs, which is
too coarse for relations computed by cancellation (RKD's Gram-form angles) or divided by a
small temperature (contrastive logits). ``float32`` runs a function with autocast off and
its half-precision tensor arguments cast up; gradients flow back to the inputs in their
own dtype, and float64 inputs stay float64.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

Fn = TypeVar("Fn", bound=Callable)

_HALF = (torch.float16, torch.bfloat16)


def _up(value):
    if isinstance(value, Tensor) and value.dtype in _HALF:
        return value.float()
    return value


def float32(function: Fn) -> Fn:
    """Decorator: runs ``function`` outside autocast with half-precision tensors cast to float32.

    The autocast device is that of the first tensor argument (``cpu`` if there is none).
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            args = tuple(_up(a) for a in args)
            kwargs = {name: _up(value) for name, value in kwargs.items()}
            return function(*args, **kwargs)

    return wrapper
