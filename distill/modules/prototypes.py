"""ReKD's semantic prototype bank: the relation miner in the teacher's embedding space."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.precision import at_least_float32, float32


@float32
def kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding on the sphere: ``[k, D]`` centres.

    As scikit-learn's ``kmeans_plusplus``: after a uniform first centre, each draw samples
    ``2 + ⌊ln k⌋`` candidates ∝ the squared cosine distance ``(1 − ⟨x, c⟩)²`` to the nearest
    chosen centre and keeps the one that lowers the potential (the sum of those weights)
    most. Greedy candidates make a second centre in one cluster (and none in another)
    much rarer than plain k-means++'s single draw.

    Args:
        points: ``[N, D]`` unit vectors, ``N ≥ k``.
        k: Number of centres.
        generator: Random source (on the points' device).
    """
    trials = 2 + int(math.log(k))
    first = int(torch.randint(len(points), (1,), generator=generator, device=points.device))
    chosen = [first]
    closest = points @ points[first]  # [N] similarity to the nearest chosen centre
    for _ in range(1, k):
        weights = (1 - closest).clamp_min(0).square()
        weights[chosen] = 0
        if weights.sum() <= 0:  # fewer distinct points than centres: take any unchosen one
            weights = torch.ones_like(weights)
            weights[chosen] = 0
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        closest_if = torch.maximum(closest, points[candidates] @ points.T)  # [trials, N]
        best = int((1 - closest_if).clamp_min(0).square().sum(dim=1).argmin())
        chosen.append(int(candidates[best]))
        closest = closest_if[best]
    return points[chosen].clone()


@float32
def spherical_kmeans(
    points: Tensor, k: int, iterations: int, generator: torch.Generator
) -> tuple[Tensor, float]:
    """Spherical k-means (cosine similarity, unit-norm centroids) from a k-means++ seeding.

    An empty cluster is re-seeded with the point least similar to its own centroid.

    Args:
        points: ``[N, D]`` unit vectors, ``N ≥ k``.
        k: Number of clusters.
        iterations: Lloyd iterations.
        generator: Random source of the seeding.

    Returns:
        Centroids ``[k, D]`` and the objective, the mean similarity of points to their centroid.
    """
    centroids = kmeans_plus_plus(points, k, generator)
    for _ in range(iterations):
        similarity, assignment = (points @ centroids.T).max(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            farthest = similarity.argsort()[: len(empty)]
            sums[empty] = points[farthest]
        centroids = F.normalize(sums, dim=1)
    similarity = (points @ centroids.T).max(dim=1).values
    return centroids, float(similarity.mean())


class PrototypeBank(nn.Module):
    """``K`` unit-norm prototypes ``p_k`` that assign embeddings to semantic categories.

    - ``init_from``: spherical k-means on embeddings (greedy k-means++ seeding, best of
      ``kmeans_restarts`` runs, drawn from a generator seeded with ``seed`` so that every
      DDP rank, given the same embeddings, finds the same prototypes).
    - Connection: ``Q(e) = argmax_k ⟨e, p_k⟩`` if that maximum is at least ``Θ``, else
      ``-1``; anchor ``i`` and candidate ``j`` are related iff ``Q(z_i) = Q(u_j) ≠ -1``.
    - Update: every anchor ``z`` assigned to ``k`` with similarity ``s = ⟨z, p_k⟩`` pulls
      ``p_k`` as ``p_k ← normalise(m_z·p_k + (1 − m_z)·z)`` with the similarity-based
      coefficient ``m_z = 1 − (1 − m)·max(s, 0)``: the more similar the anchor, the more
      weight it gets (``m`` is ``momentum``). The ReKD paper only says ``m`` is
      similarity-based; this form and ``m = 0.99`` are our choice. A batch applies its
      anchors at once, independent of their order: with ``w_z = 1 − m_z``,
      ``m_k = Π_z m_z`` and ``c_k = Σ_z w_z z / Σ_z w_z``,
      ``p_k ← normalise(m_k·p_k + (1 − m_k)·c_k)``, which for one anchor is the formula
      above. Prototypes with no anchor stay.

    Before ``init_from`` (or ``set_prototypes``) every embedding is unassigned (``-1``), so no
    pair is related. Whether the bank is initialised is a Python flag (``is_initialized``),
    mirrored into the ``initialized`` buffer for the checkpoint and read back from it when a
    state dict is loaded, so that no step reads it from the device.
    Similarities, k-means and the update run in float32 with autocast off (float64 under
    64-true precision): in bf16 two similarities near 0.9 that differ by less than 0.004 tie.

    Args:
        num_prototypes: ``K``.
        dim: Embedding width.
        threshold: ``Θ`` in ``[-1, 1]``; the paper's value is not known, 0.5 is our default.
        momentum: Base momentum ``m`` in ``[0, 1)`` of the update.
        kmeans_iterations: Lloyd iterations of the initialisation.
        kmeans_restarts: k-means runs (different seedings); the best objective is kept.
        seed: Seed of the k-means++ draws.
    """

    def __init__(
        self,
        num_prototypes: int,
        dim: int,
        threshold: float = 0.5,
        momentum: float = 0.99,
        kmeans_iterations: int = 20,
        kmeans_restarts: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_prototypes < 1:
            raise ConfigError(f"num_prototypes={num_prototypes}; valid: an integer >= 1")
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(
                f"prototype threshold={threshold}; valid: a cosine similarity in [-1, 1]"
            )
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"prototype momentum={momentum}; valid: 0 <= momentum < 1")
        if kmeans_restarts < 1 or kmeans_iterations < 0:
            raise ConfigError(
                f"kmeans_restarts={kmeans_restarts}, kmeans_iterations={kmeans_iterations}; "
                "valid: restarts >= 1, iterations >= 0"
            )
        self.threshold = threshold
        self.momentum = momentum
        self.kmeans_iterations = kmeans_iterations
        self.kmeans_restarts = kmeans_restarts
        self.seed = seed
        self.register_buffer("prototypes", torch.zeros(num_prototypes, dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.is_initialized = False
        self.register_load_state_dict_post_hook(PrototypeBank._read_initialized)

    def _read_initialized(self, incompatible_keys) -> None:
        self.is_initialized = bool(self.initialized)

    def __len__(self) -> int:
        return self.prototypes.shape[0]

    @torch.no_grad()
    def set_prototypes(self, prototypes: Tensor) -> None:
        """Sets the bank to ``prototypes`` ``[K, dim]`` (unit vectors) and marks it initialised."""
        self.prototypes.copy_(prototypes)
        self.initialized.fill_(True)
        self.is_initialized = True

    @float32
    @torch.no_grad()
    def init_from(self, embeddings: Tensor) -> None:
        """Sets the prototypes to spherical k-means centroids of ``embeddings`` ``[N, dim]``."""
        if len(embeddings) < len(self):
            raise ConfigError(
                f"num_prototypes={len(self)} but only {len(embeddings)} embeddings to cluster; "
                "valid: num_prototypes <= the number of embeddings (the queue size)"
            )
        points = F.normalize(at_least_float32(embeddings), dim=1)
        generator = torch.Generator(device=points.device).manual_seed(self.seed)
        best, best_objective = None, -float("inf")
        for _ in range(self.kmeans_restarts):
            centroids, objective = spherical_kmeans(
                points, len(self), self.kmeans_iterations, generator
            )
            if objective > best_objective:
                best, best_objective = centroids, objective
        self.set_prototypes(best)

    @float32
    def similarities(self, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """Best similarity ``[N]`` and its prototype ``[N]`` (ignoring ``Θ``)."""
        prototypes = at_least_float32(self.prototypes)  # float64 under 64-true precision
        return (embeddings.detach().to(prototypes.dtype) @ prototypes.T).max(dim=1)

    @torch.no_grad()
    def assign(self, embeddings: Tensor) -> Tensor:
        """``Q(e)`` ``[N]`` long: the most similar prototype, ``-1`` below ``Θ`` or before init."""
        if not self.is_initialized:
            return torch.full((len(embeddings),), -1, dtype=torch.long, device=embeddings.device)
        similarity, assignment = self.similarities(embeddings)
        return torch.where(similarity >= self.threshold, assignment, -1)

    @torch.no_grad()
    def relation(self, anchors: Tensor, candidates: Tensor) -> Tensor:
        """``[A, C]`` bool: ``Q(anchor) = Q(candidate) ≠ -1``."""
        return self.relation_of(self.assign(anchors), self.assign(candidates))

    def count_in_use(self, *assignments: Tensor) -> Tensor:
        """How many prototypes some entry of ``assignments`` (``[N]`` each, ``-1``: none) points to.

        A fixed-size count (``[]`` long): ``unique`` would give a size the host waits for.
        """
        assigned = torch.cat(assignments)
        used = torch.zeros(len(self) + 1, dtype=torch.bool, device=assigned.device)
        used.index_fill_(0, torch.where(assigned >= 0, assigned, len(self)), True)
        return used[:-1].sum()

    @staticmethod
    def relation_of(anchor_assignment: Tensor, candidate_assignment: Tensor) -> Tensor:
        """``relation`` from precomputed assignments ``[A]`` and ``[C]``."""
        same = anchor_assignment.unsqueeze(1) == candidate_assignment.unsqueeze(0)
        return same & (anchor_assignment >= 0).unsqueeze(1)

    @float32
    @torch.no_grad()
    def update(self, anchors: Tensor) -> None:
        """Moves each prototype towards its assigned ``anchors`` ``[N, dim]`` (see class doc)."""
        if not self.is_initialized:
            return
        anchors = F.normalize(anchors.to(at_least_float32(self.prototypes).dtype), dim=1)
        similarity, index = self.similarities(anchors)
        # Anchors below Θ weigh 0 (adding nothing below), which keeps every shape fixed.
        weight = (1 - self.momentum) * similarity.clamp_min(0)
        weight = weight.masked_fill(similarity < self.threshold, 0.0)
        num, dim = self.prototypes.shape
        total = anchors.new_zeros(num).index_add_(0, index, weight)
        pulled = anchors.new_zeros(num, dim)
        pulled.index_add_(0, index, weight.unsqueeze(1) * anchors)
        log_keep = anchors.new_zeros(num).index_add_(0, index, (-weight).log1p())
        keep_k = log_keep.exp().unsqueeze(1)  # m_k
        target = pulled / total.clamp_min(torch.finfo(total.dtype).tiny).unsqueeze(1)  # c_k
        moved = F.normalize(keep_k * self.prototypes + (1 - keep_k) * target, dim=1)
        self.prototypes.copy_(torch.where((total > 0).unsqueeze(1), moved, self.prototypes))
