"""A first-in-first-out queue of keys: MoCo's dictionary of negatives (and ReKD's candidates)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError


class KeyQueue(nn.Module):
    """``size`` keys of width ``dim`` in a ring buffer, with the write pointer as a buffer.

    ``enqueue`` writes a batch of keys at ``pointer`` (wrapping around the end) and moves
    the pointer; the oldest keys are overwritten. Rows start as random unit vectors, as in
    MoCo; ``filled`` counts the rows written so far (capped at ``size``), so ``valid``
    tells real keys from the initial ones. Pointer and count are Python ints, mirrored into
    the ``pointer`` and ``filled`` buffers for the checkpoint and read back from them when a
    state dict is loaded: no step reads them from the device. Unlike lightly's
    ``MemoryBankModule`` the size need not be a multiple of the batch, and an optional label
    row per slot is kept for diagnostics. Two queues that always receive the same number of
    rows stay aligned: slot ``j`` of each holds a key of the same image (ReKD's teacher and
    student queues).

    Args:
        size: Number of keys ``Q``.
        dim: Key width.
        track_labels: Also keep a ``labels`` buffer ``[Q]`` (``-1`` where unknown).
    """

    def __init__(self, size: int, dim: int, track_labels: bool = False) -> None:
        super().__init__()
        if size < 1:
            raise ConfigError(f"queue_size={size}; valid: a positive number of keys")
        if dim < 1:
            raise ConfigError(f"queue dim={dim}; valid: a positive key width")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        if track_labels:
            self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        else:
            self.labels = None
        self._pointer = self._filled = 0
        self.register_load_state_dict_post_hook(KeyQueue._read_pointers)

    def _read_pointers(self, incompatible_keys) -> None:
        self._pointer, self._filled = int(self.pointer), int(self.filled)

    def __len__(self) -> int:
        return self.keys.shape[0]

    @property
    def is_full(self) -> bool:
        """Whether every slot holds an enqueued key."""
        return self._filled == len(self)

    def valid(self) -> Tensor:
        """``[Q]`` bool: slots that hold enqueued keys (writing starts at slot 0)."""
        return torch.arange(len(self), device=self.keys.device) < self._filled

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor | None = None) -> None:
        """Writes ``keys`` ``[N, dim]`` (and ``labels`` ``[N]``) at the pointer, wrapping around.

        When ``N`` exceeds the queue size only the last ``size`` rows are kept (they are the
        ones a row-by-row write would leave), and the pointer still advances by ``N``.
        """
        count = len(keys)
        size = len(self)
        start = (self._pointer + count - min(count, size)) % size
        slots = (start + torch.arange(min(count, size), device=self.keys.device)) % size
        self.keys[slots] = keys[-size:].detach().to(self.keys.dtype)
        if self.labels is not None:
            if labels is None:
                labels = torch.full((count,), -1, dtype=torch.long, device=self.keys.device)
            self.labels[slots] = labels[-size:].to(self.labels.device, torch.long)
        self._pointer = (self._pointer + count) % size
        self._filled = min(self._filled + count, size)
        self.pointer.fill_(self._pointer)
        self.filled.fill_(self._filled)
