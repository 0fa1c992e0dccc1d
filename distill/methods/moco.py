"""He et al. 2020, "Momentum Contrast"; Chen et al. 2020, "Improved Baselines with MoCo" (v2)."""

from __future__ import annotations

from torch import Tensor

from distill.arguments import (
    MODEL,
    require_each,
    require_positive,
    require_positive_int,
    require_probability,
)
from distill.backbones import create_backbone
from distill.losses.contrastive import info_nce
from distill.methods.base import Method
from distill.modules.distributed import gather_rows
from distill.modules.momentum_encoder import MomentumEncoder, two_views
from distill.modules.shuffle_bn import ShuffleBN


class KeyQueueStep:
    """``on_train_batch_end`` of a method whose ``self.student`` is a ``MomentumEncoder``
    (MoCo, DisCo): after an optimiser step the key encoder takes its EMA step
    (``self.key_momentum``), and the keys ``training_step`` left in ``self._pending_keys``,
    gathered from every rank, replace the oldest ones in the queue, so that all ranks hold
    the same queue, in the slots one process would give them (symmetric keys are gathered
    pairing by pairing). A skipped batch (``nonfinite_loss: skip``) changes neither: its keys
    may be NaN."""

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.batch_skipped():
            return
        if self.optimizer_stepped():
            self.student.update_key_encoder(self.key_momentum)
        # Every micro-batch queues its keys, gathered so all ranks hold the same queue.
        (keys,) = gather_rows(self, self._pending_keys, views=2 if self.symmetric else 1)
        self.student.queue.enqueue(keys)
        self._pending_keys = None


class MoCo(KeyQueueStep, Method):
    """MoCo-v2: a query encoder contrasts each image with its EMA key and a queue of keys.

    ``L = -log( exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ_{u ∈ queue} exp(q·u/τ)) )`` with
    ``q = normalise(g_q(f_q(x₁)))``, ``k⁺ = normalise(g_k(f_k(x₂)))``; the key encoder is
    the EMA ``θ_k ← m·θ_k + (1 − m)·θ_q`` of the query encoder, updated after each
    optimiser step, and each step's keys (from all ranks) replace the oldest ones in the
    queue. With ``symmetric`` both views serve as queries (mean of the two losses) and
    both keys are queued. The key encoder uses shuffle-BN (MoCo §3.3; ``MomentumEncoder``):
    across DDP ranks as in MoCo, or on one device over ``bn_groups`` split batch-norm
    groups as in lightly's CIFAR-10 benchmark, so no key shares its query's statistics.
    Reference MoCo-v2 settings (ImageNet): ResNet-50, 2-layer MLP
    head (hidden 2048) → 128, ``τ = 0.2``, ``m = 0.999``, queue 65536 (4096 on CIFAR),
    SGD lr 0.03 × batch/256, momentum 0.9, weight decay 1e-4, cosine schedule, 200 epochs,
    batch 256, asymmetric loss.

    The network is ``self.student`` (``self.student.backbone`` is what k-NN and linear
    probes evaluate); it also holds the key encoder and the queue.

    Args:
        backbone: Backbone name (see ``distill.backbones.available_backbones()``).
        backbone_kwargs: Extra backbone arguments, e.g. ``{cifar_stem: true}``.
        proj_hidden_dim: Hidden width of the MLP head (``None``: the backbone's width).
        proj_dim: Embedding width (128).
        queue_size: Number of queued keys.
        temperature: ``τ``.
        key_momentum: ``m`` of the key encoder.
        symmetric: Use both views as queries.
        shuffle_bn: ``auto`` (``ranks`` under DDP, else ``split``), ``split``, ``ranks``,
            ``off``, or ``split_unshuffled`` (a control: ``split``'s groups without the
            shuffle, see ``distill.modules.shuffle_bn``).
        bn_groups: Batch-norm groups of ``split``.
        **kwargs: Optimisation arguments of ``Method`` (optimizer, lr_schedule, ...).
    """

    monitor = "val/knn_top1"

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_kwargs: dict | None = None,
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        key_momentum: float = 0.999,
        symmetric: bool = False,
        shuffle_bn: ShuffleBN = "auto",
        bn_groups: int = 8,
        **kwargs,
    ) -> None:
        require_each(require_positive_int, MODEL, proj_dim=proj_dim, queue_size=queue_size)
        if proj_hidden_dim is not None:
            require_positive_int(f"{MODEL}.proj_hidden_dim", proj_hidden_dim)
        require_positive(f"{MODEL}.temperature", temperature)
        require_probability(f"{MODEL}.key_momentum", key_momentum)
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer"])
        self.temperature = temperature
        self.key_momentum = key_momentum
        self.symmetric = symmetric
        self.student = MomentumEncoder(
            create_backbone(backbone, **(backbone_kwargs or {})),
            proj_hidden_dim,
            proj_dim,
            queue_size,
            shuffle_bn=shuffle_bn,
            bn_groups=bn_groups,
        )
        self._pending_keys: Tensor | None = None

    def forward(self, images: Tensor) -> Tensor:
        """Backbone features ``[B, D]``."""
        return self.student.backbone(images)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        views, _ = two_views(batch)
        with self.keep_step_features(len(views[0]), "student"):  # the query view's
            queries, keys = self.student.queries_and_keys(views, self.symmetric)
        loss = info_nce(queries, keys, self.student.queue.keys, self.temperature)
        self.log_terms({"loss": loss})
        self._pending_keys = keys
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing: k-NN and linear-probe callbacks evaluate at the end of validation."""
