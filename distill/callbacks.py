"""Trainer callbacks every run gets from the CLI: checkpointing and TensorBoard images."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from distill.eval.features import eval_mode, extract_features, resolve_submodule


class MethodCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps ``last.ckpt`` and the best by the method's main metric.

    With ``monitor="auto"`` the metric is the LightningModule's ``monitor`` attribute
    (``val/top1`` for supervised methods, ``val/knn_top1`` for self-supervised ones).
    Epochs on which the metric was not computed (k-NN every few epochs) only update
    ``last.ckpt`` instead of failing. All other arguments are ``ModelCheckpoint``'s.
    """

    def __init__(
        self,
        monitor: str | None = "auto",
        mode: str = "max",
        save_last: bool | None = True,
        save_top_k: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(
            monitor=monitor, mode=mode, save_last=save_last, save_top_k=save_top_k, **kwargs
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.monitor == "auto":
            self.monitor = getattr(pl_module, "monitor", None)
        super().setup(trainer, pl_module, stage)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self.monitor is not None and self.monitor not in monitor_candidates:
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)


def _tensorboard(trainer: L.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ViewGrid(L.Callback):
    """Logs an image grid of the first training batch's views to TensorBoard, once per fit.

    One row per view (globals first; smaller local crops are upscaled to the first view's
    size), ``num_images`` columns, de-normalised with the DataModule's mean and std.

    Args:
        num_images: Images per view to show (0 disables the grid).
    """

    def __init__(self, num_images: int = 8) -> None:
        self.num_images = num_images
        self._done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._done or self.num_images <= 0 or not trainer.is_global_zero:
            return
        self._done = True
        experiment = _tensorboard(trainer)
        if experiment is None:
            return
        views = batch[0] if isinstance(batch[0], list | tuple) else [batch[0]]
        size = views[0].shape[-2:]
        datamodule = trainer.datamodule
        mean = torch.tensor(datamodule.mean, device=views[0].device).view(1, -1, 1, 1)
        std = torch.tensor(datamodule.std, device=views[0].device).view(1, -1, 1, 1)
        rows = []
        for view in views:
            images = view[: self.num_images].float() * std + mean
            if images.shape[-2:] != size:
                images = F.interpolate(images, size=size, mode="nearest")
            rows.append(images.clamp(0, 1))
        grid = make_grid(torch.cat(rows), nrow=min(self.num_images, len(views[0])))
        experiment.add_image("train/views", grid.cpu(), trainer.global_step)


class EmbeddingProjector(L.Callback):
    """Writes val embeddings of a submodule to TensorBoard's projector when fit ends.

    Args:
        submodule: Network whose backbone embeds the val set.
        num_samples: Number of val samples to write (the first ones in dataset order).
    """

    def __init__(self, submodule: str = "student", num_samples: int = 1000) -> None:
        self.submodule = submodule
        self.num_samples = num_samples

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = _tensorboard(trainer)
        module = resolve_submodule(pl_module, self.submodule)
        with eval_mode(module):
            features, labels = extract_features(trainer, pl_module, module, "val")
        if experiment is None or not trainer.is_global_zero:
            return
        features, labels = features[: self.num_samples], labels[: self.num_samples]
        experiment.add_embedding(
            features.cpu(),
            metadata=labels.cpu().tolist(),
            tag=f"val/{self.submodule}_embedding",
            global_step=trainer.global_step,
        )
