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


def at_least_float32(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 if it is half precision (bf16, fp16), else unchanged: the cast up
    of a float32 island, which leaves float32 and float64 (``precision: 64-true``) alone."""
    return tensor.float() if tensor.dtype in _HALF else tensor


def _up(value):
    return at_least_float32(value) if isinstance(value, Tensor) else value


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
