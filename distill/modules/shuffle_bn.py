"""Shuffle-BN (He et al. 2020, MoCo §3.3): a key is never normalised with its query's batch.

With plain batch norm the query and the key of an image are normalised with statistics of
the same images, and the model can match them through those statistics instead of
through their content. MoCo shuffles the batch across GPUs before the key encoder and
undoes the shuffle afterwards, so each key is normalised with another GPU's images.

- ``split``: one device simulates ``groups`` devices. ``SplitBatchNorm`` layers normalise
  contiguous row groups separately (the query batch in its own order, the key batch
  shuffled), as lightly's ``SplitBatchNorm`` with ``batch_shuffle`` does, but with the
  checkpoint layout of plain batch norm.
- ``ranks``: MoCo's shuffle across DDP ranks; each rank's batch is one group.
- ``split_unshuffled``: the control of ``split``: the same groups, but keys in batch order,
  so each key is normalised with its own query's group (the leak shuffle-BN closes) at the
  group size ``split`` uses. Beside ``split`` and ``off`` it tells the leak from the effect
  of normalising over smaller groups.

The shuffle is ``balanced_shuffle``: every key group takes an equal share of each query
group, so a key's group holds as few of its query's group as possible (one image, itself,
when the group size is at most the number of groups), where a uniform permutation leaves
about ``1/groups`` of the group in common.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError

ShuffleBN = Literal["auto", "split", "ranks", "off", "split_unshuffled"]
SHUFFLE_BN_MODES = ("auto", "split", "ranks", "off", "split_unshuffled")


class _SplitBatchNorm:
    """Batch norm that, in training mode with ``groups > 1``, normalises row groups apart.

    Rows are cut into ``groups`` contiguous, near-equal chunks (``Tensor.tensor_split``),
    each normalised with its own mean and variance; the running statistics move once per
    call, towards the mean of the chunks' statistics. Parameters and buffers are those of
    the plain layer, so checkpoints and state dicts do not change.
    """

    groups: int = 1

    def forward(self, x: Tensor) -> Tensor:
        if self.groups <= 1 or not self.training or len(x) < 2:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0
        running = self.track_running_stats and self.running_mean is not None
        if running:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        chunks = x.tensor_split(effective_groups(len(x), self.groups))
        means, variances, outputs = [], [], []
        for chunk in chunks:
            mean = self.running_mean.clone() if running else None
            var = self.running_var.clone() if running else None
            outputs.append(
                F.batch_norm(chunk, mean, var, self.weight, self.bias, True, factor, self.eps)
            )
            means.append(mean)
            variances.append(var)
        if running:
            with torch.no_grad():
                self.running_mean.copy_(torch.stack(means).mean(dim=0))
                self.running_var.copy_(torch.stack(variances).mean(dim=0))
        return torch.cat(outputs)


class SplitBatchNorm1d(_SplitBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with split statistics (see ``_SplitBatchNorm``)."""


class SplitBatchNorm2d(_SplitBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with split statistics (see ``_SplitBatchNorm``)."""


_SPLIT = {nn.BatchNorm1d: SplitBatchNorm1d, nn.BatchNorm2d: SplitBatchNorm2d}


def convert_split_batch_norm(module: nn.Module) -> nn.Module:
    """Turns every ``BatchNorm1d``/``2d`` in ``module`` into its split form, in place.

    The layers keep their parameters and buffers (same names, same tensors) and behave as
    before until ``split_batch_norm`` sets their number of groups.
    """
    for layer in module.modules():
        split_class = _SPLIT.get(type(layer))
        if split_class is not None:
            layer.__class__ = split_class
    return module


@contextlib.contextmanager
def split_batch_norm(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, the split batch norms of ``module`` normalise ``groups`` row groups."""
    layers = [m for m in module.modules() if isinstance(m, _SplitBatchNorm)]
    for layer in layers:
        layer.groups = groups
    try:
        yield
    finally:
        for layer in layers:
            layer.groups = 1


def balanced_shuffle(
    batch_size: int, groups: int, generator: torch.Generator | None = None
) -> Tensor:
    """A permutation ``[batch_size]`` whose contiguous groups mix the original groups evenly.

    The rows of each original group (``tensor_split`` of ``range(batch_size)`` into
    ``groups``) are put in random order and dealt out in turn, one row of each group at a
    time, so group ``j`` of the permuted batch takes at most ``⌈n / groups⌉`` rows of any
    original group (``n`` rows per group). Drawn on the CPU from ``generator`` (default:
    torch's global generator, which checkpoints save and restore).
    """
    groups = max(1, min(groups, batch_size))
    sizes = torch.tensor([len(c) for c in torch.arange(batch_size).tensor_split(groups)])
    group_of = torch.repeat_interleave(torch.arange(groups), sizes)
    group_start = sizes.cumsum(0) - sizes
    # Rows sorted by group, in random order inside each group: position p is in group_of[p].
    within = (group_of + torch.rand(batch_size, generator=generator)).argsort()
    rank_in_group = torch.empty_like(within)
    rank_in_group[within] = torch.arange(batch_size) - group_start[group_of]
    return (rank_in_group * groups + group_of).argsort()


def to_device_async(host: Tensor, like: Tensor) -> Tensor:
    """``host`` on ``like``'s device, copied without waiting (a blocking host-to-GPU copy
    waits for the GPU to finish its queued work); pinned first, as such a copy needs."""
    if like.device.type == "cuda":
        host = host.pin_memory()
    return host.to(like.device, non_blocking=True)


def effective_groups(batch_size: int, groups: int) -> int:
    """Groups actually used for a batch: at most ``groups``, at least two rows per group."""
    return max(1, min(groups, batch_size // 2))


def check_shuffle_bn(mode: str, groups: int) -> None:
    """Raises ``ConfigError`` for an unknown mode or fewer than one group."""
    if mode not in SHUFFLE_BN_MODES:
        raise ConfigError(
            f"model.init_args.shuffle_bn={mode!r}; valid: {', '.join(SHUFFLE_BN_MODES)}"
        )
    if groups < 1:
        raise ConfigError(f"model.init_args.bn_groups={groups}; valid: an integer >= 1")


def resolve_shuffle_bn(mode: str) -> str:
    """The mode in effect now: ``auto`` is ``ranks`` under multi-process training, else ``split``.

    Raises:
        ConfigError: ``ranks`` without a multi-process group (nothing to shuffle across).
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if mode == "auto":
        return "ranks" if world > 1 else "split"
    if mode == "ranks" and world == 1:
        raise ConfigError(
            "model.init_args.shuffle_bn=ranks needs multi-process (DDP) training; on one "
            "process use split (or auto, which picks ranks under DDP and split otherwise)"
        )
    return mode


def _all_gather(tensor: Tensor) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


def grouped_forward(network: nn.Module, images: Tensor, mode: str, groups: int) -> Tensor:
    """``network(images)`` for the query side: under ``split`` (and its ``split_unshuffled``
    control), in ``groups`` row groups."""
    if mode not in ("split", "split_unshuffled"):
        return network(images)
    with split_batch_norm(network, effective_groups(len(images), groups)):
        return network(images)


@torch.no_grad()
def shuffled_forward(
    network: nn.Module,
    images: Tensor,
    mode: str,
    groups: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``network(images)`` with the batch shuffled for batch norm and unshuffled after.

    Args:
        network: The key encoder (no gradient flows through this call).
        images: ``[B, ...]`` this rank's batch.
        mode: ``split``, ``split_unshuffled``, ``ranks`` or ``off`` (``resolve_shuffle_bn`` of
            the configured mode).
        groups: Batch-norm groups of ``split`` (ignored otherwise).
        generator: Random source of the permutation (default: torch's global one). Under
            ``ranks`` rank 0's permutation is broadcast to the others.

    Returns:
        ``[B, ...]`` outputs, row ``i`` the output of image ``i``.
    """
    if mode == "off":
        return network(images)
    if mode == "split_unshuffled":  # the control: the queries' groups, not shuffled
        return grouped_forward(network, images, mode, groups)
    if mode == "split":
        groups = effective_groups(len(images), groups)
        permutation = to_device_async(balanced_shuffle(len(images), groups, generator), images)
        with split_batch_norm(network, groups):
            shuffled = network(images[permutation])
        return shuffled[permutation.argsort()]
    world, rank, local = dist.get_world_size(), dist.get_rank(), len(images)
    sizes = _all_gather(torch.tensor([local], device=images.device))
    if (sizes != local).any():
        raise ConfigError(
            f"shuffle_bn=ranks needs the same batch size on every rank, got {sizes.tolist()}; "
            "keep data.init_args.drop_last true or set model.init_args.shuffle_bn: split"
        )
    permutation = balanced_shuffle(world * local, world, generator).to(images.device)
    dist.broadcast(permutation, src=0)
    mine = permutation.view(world, local)[rank]
    outputs = _all_gather(network(_all_gather(images)[mine]).contiguous())
    return outputs[permutation.argsort()][rank * local : (rank + 1) * local]
