"""Linear probes on frozen, detached features: online during fit and offline after it."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from distill.arguments import (
    callback_key,
    require_int,
    require_non_negative,
    require_positive,
)
from distill.errors import ConfigError
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
    optimizer: Literal["adam", "sgd", "lbfgs"] = "adam",
) -> nn.Module:
    """Trains a ``linear_classifier`` on fixed features.

    ``adam`` and ``sgd`` (momentum 0.9) take mini-batch steps for ``epochs`` passes under a
    cosine schedule, the batch norm normalising each batch. ``lbfgs`` minimises the
    full-batch cross-entropy plus ``weight_decay / 2 · ‖W‖²`` for at most ``epochs``
    iterations (strong-Wolfe line search), on features standardised once with the training
    set's mean and variance (set as the batch norm's running statistics).

    Args:
        train_features: ``[N, D]`` features.
        train_labels: ``[N]`` labels; negative labels (unlabelled) are skipped.
        num_classes: Number of classes.
        epochs: Passes over the features (``lbfgs``: iterations).
        lr: Learning rate (``lbfgs``: step size, 1 is usual).
        weight_decay: Weight decay (``lbfgs``: the L2 penalty on the weights).
        batch_size: Mini-batch size (not used by ``lbfgs``).
        seed: Seed of the initialisation and the shuffling.
        optimizer: ``adam``, ``sgd`` or ``lbfgs``.

    Returns:
        The trained classifier in eval mode.
    """
    if optimizer not in ("adam", "sgd", "lbfgs"):
        raise ConfigError(f"linear probe optimizer={optimizer!r}; valid: adam, sgd, lbfgs")
    keep = train_labels >= 0
    features, labels = train_features[keep].float(), train_labels[keep]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = linear_classifier(features.shape[1], num_classes).to(features.device)
    if optimizer == "lbfgs":
        _fit_lbfgs(classifier, features, labels, epochs, lr, weight_decay)
        return classifier.eval()
    if optimizer == "sgd":
        parameters = classifier.parameters()
        step_rule = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        step_rule = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(features) // batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(step_rule, steps)
    generator = torch.Generator().manual_seed(seed)
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for rows in order.split(batch_size):
            if len(rows) < 2:  # batch norm needs two samples
                continue
            loss = F.cross_entropy(classifier(features[rows]), labels[rows])
            step_rule.zero_grad(set_to_none=True)
            loss.backward()
            step_rule.step()
            scheduler.step()
    return classifier.eval()


def _fit_lbfgs(
    classifier: nn.Module,
    features: Tensor,
    labels: Tensor,
    iterations: int,
    lr: float,
    weight_decay: float,
) -> None:
    """Full-batch L-BFGS on the linear layer of ``linear_classifier``, standardisation fixed."""
    norm, linear = classifier
    norm.running_mean.copy_(features.mean(dim=0))
    norm.running_var.copy_(features.var(dim=0, correction=0))
    classifier.eval()
    with torch.no_grad():
        standardised = norm(features)
    step_rule = torch.optim.LBFGS(
        linear.parameters(), lr=lr, max_iter=iterations, history_size=20,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        step_rule.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(standardised), labels)
        loss = loss + weight_decay / 2 * linear.weight.square().sum()
        loss.backward()
        return loss

    step_rule.step(closure)


class LinearProbe(L.Callback):
    """Online linear probe of a submodule's backbone, with an optional offline fit at the end.

    Online: after every training batch a linear classifier (its own Adam optimiser) takes
    one step on the backbone features of the batch's first view; the backbone is never
    touched. The features are the ones the method's training step computed anyway
    (``Method.step_features``: detached, batch norm in the step's training mode), so the
    probe adds no backbone forward, as in lightly and solo-learn; when the module hands
    none over (a plain LightningModule, a frozen teacher the step does not run), the
    backbone embeds the view itself in eval mode without gradient. Logs
    ``train/linear_loss`` and, after validation, ``{log_prefix}_top1``. Under DDP the
    features and labels are all-gathered and every rank takes the same step, so the probes
    stay identical. The probe's weights and optimiser are saved in the checkpoint.

    A batch the module skipped takes no probe step either: the probe asks
    ``pl_module.batch_skipped()`` when the module has that method (distill's methods do:
    true when ``nonfinite_loss: skip`` skipped the batch, whose features may be NaN), so a
    NaN batch leaves the classifier, its batch norm and its optimiser as they were. Any
    LightningModule can join this protocol by defining a ``batch_skipped() -> bool`` that
    answers for the current batch in ``on_train_batch_end``.

    Outside fit (``distill validate``) the probe is the one in the checkpoint (Lightning
    restores callback states). A probe with nothing trained, neither in this process nor
    in a checkpoint (validate without ``--ckpt_path``, or a probe the run did not have), is
    fitted first, as the offline fit below (on the frozen features of the un-augmented
    training set, ``offline_epochs`` epochs or 100 when 0), and that classifier's val
    accuracy is logged as ``{log_prefix}_top1``: never the accuracy of an untrained probe.

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
        require_positive(callback_key(self, "lr"), lr)
        require_non_negative(callback_key(self, "weight_decay"), weight_decay)
        require_int(callback_key(self, "offline_epochs"), offline_epochs, 0)
        require_positive(callback_key(self, "offline_lr"), offline_lr)
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
        self._trained = False

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
        """The backbone's own eval-mode features of ``images`` ``[B, D]``."""
        module = resolve_submodule(pl_module, self.submodule)
        with eval_mode(module), pl_module.trainer.precision_plugin.forward_context():
            return backbone_features(module, images).float()

    def _step_features(self, pl_module: L.LightningModule, images: Tensor) -> Tensor | None:
        """The features the training step handed over for ``images``, if it did."""
        handed = getattr(pl_module, "step_features", None)
        features = handed.get(self.submodule) if isinstance(handed, dict) else None
        if features is None or len(features) != len(images):
            return None
        return features.float()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # What an earlier step handed over must not pass for this step's features.
        handed = getattr(pl_module, "step_features", None)
        if isinstance(handed, dict):
            handed.pop(self.submodule, None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.online or self._skipped(pl_module):
            return
        views, targets, _ = batch
        images = views[0] if isinstance(views, list | tuple) else views
        self._place(images.device)
        features = self._step_features(pl_module, images)
        if features is None:
            features = self._features(pl_module, images)
        features, targets = gather_rows(pl_module, features, targets)
        labelled = targets >= 0
        if labelled.sum() < 2:
            return
        self.classifier.train()
        with torch.enable_grad():
            loss = F.cross_entropy(self.classifier(features[labelled]), targets[labelled])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self._trained = True
        pl_module.log("train/linear_loss", loss.detach())

    @staticmethod
    def _skipped(pl_module: L.LightningModule) -> bool:
        """Whether the module skipped this batch (see the class docstring's protocol)."""
        batch_skipped = getattr(pl_module, "batch_skipped", None)
        return callable(batch_skipped) and bool(batch_skipped())

    def _fits_at_validation(self, trainer: L.Trainer) -> bool:
        """Outside fit, with nothing trained or restored: fit a probe before reporting."""
        return trainer.state.fn != TrainerFn.FITTING and not self._trained

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self.online or self._fits_at_validation(trainer):
            return
        images, targets, _ = batch
        self._place(images.device)
        self.classifier.eval()
        with torch.no_grad():
            self.accuracy.update(self.classifier(self._features(pl_module, images)), targets)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.online:
            return
        if self._fits_at_validation(trainer):
            top1 = self.fit_offline(trainer, pl_module, self.offline_epochs or 100)
            pl_module.log(f"{self.log_prefix}_top1", top1, prog_bar=True)
            return
        top1 = self.accuracy.compute()  # syncs across ranks under DDP
        self.accuracy.reset()
        if not trainer.sanity_checking:
            pl_module.log(f"{self.log_prefix}_top1", top1, prog_bar=True)

    def fit_offline(self, trainer: L.Trainer, pl_module: L.LightningModule, epochs: int) -> float:
        """Fits a fresh classifier on frozen un-augmented train features; its val top-1.

        Under DDP the features are gathered, so every rank fits the same classifier.
        """
        module = resolve_submodule(pl_module, self.submodule)
        train_x, train_y = extract_features(trainer, pl_module, module, "train")
        val_x, val_y = extract_features(trainer, pl_module, module, "val")
        # Validation runs in inference mode; the fit needs autograd on ordinary tensors.
        with torch.inference_mode(False), torch.enable_grad():
            train_x, train_y, val_x = train_x.clone(), train_y.clone(), val_x.clone()
            classifier = fit_linear_classifier(
                train_x, train_y, trainer.datamodule.num_classes, epochs, self.offline_lr
            )
            with torch.no_grad():
                return float((classifier(val_x).argmax(1) == val_y).float().mean())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.offline_epochs <= 0:
            return
        self.offline_top1 = self.fit_offline(trainer, pl_module, self.offline_epochs)
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
        self._trained = True
        if self.classifier is None:  # restored before setup: apply it then
            self._pending_state = state_dict
            return
        self.classifier.load_state_dict(state_dict["classifier"])
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._pending_state = None
