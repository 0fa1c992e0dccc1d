"""Linear probes on frozen, detached features: online during fit and offline after it."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from distill.eval.features import eval_mode, extract_features, resolve_submodule
from distill.modules.distributed import gather_rows
from distill.modules.heads import backbone_features


def linear_classifier(num_features: int, num_classes: int) -> nn.Module:
    """A linear layer behind a parameter-free batch norm (MAE's probe), robust to feature scale."""
    return nn.Sequential(
        nn.BatchNorm1d(num_features, affine=False), nn.Linear(num_features, num_classes)
    )


def fit_linear_classifier(
    train_features: Tensor,
    train_labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> nn.Module:
    """Trains a linear classifier on fixed features with Adam and a cosine schedule.

    Args:
        train_features: ``[N, D]`` features.
        train_labels: ``[N]`` labels; negative labels (unlabelled) are skipped.
        num_classes: Number of classes.
        epochs: Passes over the features.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        batch_size: Mini-batch size.
        seed: Seed of the initialisation and the shuffling.

    Returns:
        The trained classifier in eval mode.
    """
    keep = train_labels >= 0
    features, labels = train_features[keep].float(), train_labels[keep]
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = linear_classifier(features.shape[1], num_classes).to(features.device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(features) // batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for rows in order.split(batch_size):
            if len(rows) < 2:  # batch norm needs two samples
                continue
            loss = F.cross_entropy(classifier(features[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return classifier.eval()


class LinearProbe(L.Callback):
    """Online linear probe of a submodule's backbone, with an optional offline fit at the end.

    Online: after every training batch, the backbone embeds the batch's first view in eval
    mode without gradient, and a linear classifier (its own Adam optimiser) takes one step on
    it; the backbone is never touched. Logs ``train/linear_loss`` and, after validation,
    ``{log_prefix}_top1``. Under DDP the features and labels are all-gathered and every
    rank takes the same step, so the probes stay identical. The probe's weights and
    optimiser are saved in the checkpoint.

    Offline (``offline_epochs > 0``): when fit ends, a fresh classifier is trained on the
    features of the un-augmented training set and evaluated on val; the result is logged as
    ``{log_prefix}_offline_top1`` and kept in ``offline_top1``.

    Args:
        submodule: Network to probe (``student``, ``teacher``, ...).
        lr: Learning rate of the online probe's Adam.
        weight_decay: Weight decay of the online probe.
        online: Train the probe during fit.
        offline_epochs: Epochs of the offline fit after training (0: none).
        offline_lr: Learning rate of the offline fit.
        log_prefix: Metric name prefix.
    """

    def __init__(
        self,
        submodule: str = "student",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        online: bool = True,
        offline_epochs: int = 0,
        offline_lr: float = 0.05,
        log_prefix: str = "val/linear",
    ) -> None:
        self.submodule = submodule
        self.lr = lr
        self.weight_decay = weight_decay
        self.online = online
        self.offline_epochs = offline_epochs
        self.offline_lr = offline_lr
        self.log_prefix = log_prefix
        self.classifier: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.accuracy: MulticlassAccuracy | None = None
        self.offline_top1: float | None = None
        self._pending_state: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.classifier is not None:  # a later fit/validate/test keeps the trained probe
            return
        module = resolve_submodule(pl_module, self.submodule)
        backbone = getattr(module, "backbone", module)
        num_classes = trainer.datamodule.num_classes
        self.classifier = linear_classifier(backbone.num_features, num_classes).to(pl_module.device)
        self.optimizer = torch.optim.Adam(
            self.classifier.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        self.accuracy = MulticlassAccuracy(num_classes, average="micro").to(pl_module.device)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    @property
    def state_key(self) -> str:
        # A student probe and a teacher probe in one run keep separate checkpoint entries.
        return self._generate_state_key(submodule=self.submodule, log_prefix=self.log_prefix)

    def _place(self, device: torch.device) -> None:
        """Follows the module to its device (at ``setup`` it has not moved there yet)."""
        if self.classifier[1].weight.device == device:
            return
        self.classifier.to(device)
        self.accuracy.to(device)
        for state in self.optimizer.state.values():
            for name, value in state.items():
                if isinstance(value, Tensor) and name != "step":  # torch keeps 'step' on CPU
                    state[name] = value.to(device)

    def _features(self, pl_module: L.LightningModule, images: Tensor) -> Tensor:
        self._place(images.device)
        module = resolve_submodule(pl_module, self.submodule)
        with eval_mode(module), pl_module.trainer.precision_plugin.forward_context():
            return backbone_features(module, images).float()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.online:
            return
        views, targets, _ = batch
        images = views[0] if isinstance(views, list | tuple) else views
        features, targets = gather_rows(pl_module, self._features(pl_module, images), targets)
        labelled = targets >= 0
        if labelled.sum() < 2:
            return
        self.classifier.train()
        with torch.enable_grad():
            loss = F.cross_entropy(self.classifier(features[labelled]), targets[labelled])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        pl_module.log("train/linear_loss", loss.detach())

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self.online:
            return
        images, targets, _ = batch
        self.classifier.eval()
        with torch.no_grad():
            self.accuracy.update(self.classifier(self._features(pl_module, images)), targets)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.online:
            return
        top1 = self.accuracy.compute()  # syncs across ranks under DDP
        self.accuracy.reset()
        if not trainer.sanity_checking:
            pl_module.log(f"{self.log_prefix}_top1", top1, prog_bar=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.offline_epochs <= 0:
            return
        module = resolve_submodule(pl_module, self.submodule)
        train_x, train_y = extract_features(trainer, pl_module, module, "train")
        val_x, val_y = extract_features(trainer, pl_module, module, "val")
        classifier = fit_linear_classifier(
            train_x, train_y, trainer.datamodule.num_classes, self.offline_epochs, self.offline_lr
        )
        with torch.no_grad():
            self.offline_top1 = float((classifier(val_x).argmax(1) == val_y).float().mean())
        name = f"{self.log_prefix}_offline_top1"
        rank_zero_info(f"{name}: {self.offline_top1:.4f}")
        for logger in trainer.loggers:
            logger.log_metrics({name: self.offline_top1}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        if self.classifier is None:
            return {}
        return {
            "classifier": self.classifier.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.classifier is None:  # restored before setup: apply it then
            self._pending_state = state_dict
            return
        self.classifier.load_state_dict(state_dict["classifier"])
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._pending_state = None
