"""Contrast of queries against a positive key and a queue of keys (MoCo, ReKD).

``info_nce`` is MoCo's instance-wise objective (He et al. 2020); ``relation_contrastive_loss``
is ReKD's relation-wise one (Zheng et al. 2022): the same softmax over the positive key and
the queue, with extra positives in the queue marked by a mask, averaged over the positive
set as in supervised contrastive learning. Logits and losses are computed in float32 with
autocast off (``distill.losses.precision``): a bf16 dot product divided by ``τ`` is off by
a few hundredths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.precision import at_least_float32, float32


@float32
def contrast_logits(query: Tensor, key: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """``[B, 1 + Q]`` logits: ``⟨q, k⁺⟩/τ`` in column 0, then ``⟨q, queue_j⟩/τ``.

    Args:
        query: ``[B, D]`` L2-normalised queries.
        key: ``[B, D]`` L2-normalised positive keys (row ``i`` pairs with query ``i``).
        queue: ``[Q, D]`` L2-normalised keys of other images.
        temperature: ``τ``.
    """
    query, key, queue = (at_least_float32(t) for t in (query, key, queue))
    positive = (query * key).sum(dim=1, keepdim=True)
    return torch.cat([positive, query @ queue.T], dim=1) / temperature


@float32
def info_nce(query: Tensor, key: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo's InfoNCE, batch mean: ``-log(exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ_j exp(q·u_j/τ)))``.

    Args:
        query: ``[B, D]`` L2-normalised queries.
        key: ``[B, D]`` L2-normalised positive keys.
        queue: ``[Q, D]`` L2-normalised negatives ``u_j``.
        temperature: ``τ`` (MoCo-v2: 0.2).
    """
    logits = contrast_logits(query, key, queue, temperature)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


@float32
def relation_contrastive_loss(
    query: Tensor,
    key: Tensor,
    queue: Tensor,
    positive_mask: Tensor,
    temperature: float = 0.2,
) -> Tensor:
    """ReKD's relation-wise contrast, batch mean.

    With ``P_i = {k⁺_i} ∪ {u_j : positive_mask[i, j]}`` and ``p_i(c)`` the softmax of
    query ``i``'s logits over ``{k⁺_i} ∪ queue``:
    ``L_i = -(1/|P_i|) Σ_{c ∈ P_i} log p_i(c)``. With an all-false mask this is ``info_nce``.

    Args:
        query: ``[B, D]`` L2-normalised queries.
        key: ``[B, D]`` L2-normalised positive keys.
        queue: ``[Q, D]`` L2-normalised candidates ``u_j``.
        positive_mask: ``[B, Q]`` bool, the mined relation: ``u_j`` is a positive of query ``i``.
        temperature: ``τ``.
    """
    log_prob = contrast_logits(query, key, queue, temperature).log_softmax(dim=1)
    own_key = torch.ones(len(query), 1, dtype=log_prob.dtype, device=log_prob.device)
    positives = torch.cat([own_key, positive_mask.to(log_prob.dtype)], dim=1)
    return (-(log_prob * positives).sum(dim=1) / positives.sum(dim=1)).mean()
