"""Trainer callbacks every run gets from the CLI: checkpointing and TensorBoard images."""

from __future__ import annotations

import functools
import signal
import threading

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torchvision.utils import make_grid

from distill.checkpoint_io import use_atomic_checkpoint_io
from distill.eval.features import eval_mode, extract_features, resolve_submodule


class MethodCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps ``last.ckpt`` and the best by the method's main metric.

    With ``monitor="auto"`` the metric is the LightningModule's ``monitor`` attribute
    (``val/top1`` for supervised methods, ``val/knn_top1`` for self-supervised ones).
    Epochs on which the metric was not computed (k-NN every few epochs) only update
    ``last.ckpt`` instead of failing. All other arguments are ``ModelCheckpoint``'s.

    What it adds to Lightning's: ``last.ckpt`` is the last state, written at the end of
    every epoch and of fit whatever the monitor says (Lightning 2.6 writes it only where a
    top-k checkpoint is saved too, so with a monitor it is a copy of the best epoch), and a
    SIGTERM (a scheduler's pre-emption) or SIGINT (Ctrl-C) writes the state at the
    interrupted step as ``last.ckpt``, marked ``interrupted`` in the checkpoint's callback
    state with the signal, epoch and batch, so that ``--ckpt_path .../last.ckpt`` resumes
    from there.
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

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self.monitor is not None and self.monitor not in monitor_candidates:
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_step = trainer.global_step

    def _write_last(self, trainer: L.Trainer) -> None:
        """Writes ``last.ckpt`` unless it already holds this step."""
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or getattr(self, "_last_written_step", None) == trainer.global_step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._write_last(trainer)  # after this epoch's validation: the epoch's final state

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._write_last(trainer)  # a fit stopped by max_steps mid-epoch

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.monitor == "auto":
            self.monitor = getattr(pl_module, "monitor", None)
        super().setup(trainer, pl_module, stage)
        use_atomic_checkpoint_io(trainer.strategy)  # no truncated checkpoint under a valid name
        self._sigint = None
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, functools.partial(self._on_sigint, trainer))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if getattr(self, "_previous_sigint", None) is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _on_sigint(self, trainer: L.Trainer, signum, frame) -> None:
        """First Ctrl-C: stop after the current batch, as Lightning does for SIGTERM (a
        KeyboardInterrupt can land mid-step and leave a half-updated state); second: now."""
        if self._sigint is not None:
            raise KeyboardInterrupt
        self._sigint = "SIGINT"
        rank_zero_info("SIGINT: stopping after this batch (Ctrl-C again to stop at once)")
        trainer._signal_connector.received_sigterm = True  # Lightning's stop-after-batch flag

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        signal_name = self._sigint or interrupt_signal(exception)
        if signal_name is None or trainer.state.fn != TrainerFn.FITTING:
            super().on_exception(trainer, pl_module, exception)
            return
        exception.signal_name = signal_name  # read by distill.cli.main for the exit code
        loop = trainer.fit_loop.epoch_loop
        self.interrupted = {
            "signal": signal_name,
            "epoch": trainer.current_epoch,
            "batch": loop.batch_progress.current.completed,
            "global_step": trainer.global_step,
        }
        self._last_written_step = None
        self._write_last(trainer)
        rank_zero_info(
            f"{signal_name}: wrote {self.last_model_path} at epoch {trainer.current_epoch}, "
            f"batch {self.interrupted['batch']} (global step {trainer.global_step}); resume with "
            f"--ckpt_path {self.last_model_path}"
        )

    def state_dict(self) -> dict:
        return {**super().state_dict(), "interrupted": getattr(self, "interrupted", None)}


def interrupt_signal(exception: BaseException) -> str | None:
    """``SIGTERM`` or ``SIGINT`` when ``exception`` is how Lightning reports that signal."""
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    if isinstance(exception, KeyboardInterrupt):
        return "SIGINT"
    return None


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


def flatten_config(config: dict, prefix: str = "") -> dict[str, float | int | bool | str]:
    """``{"model.init_args.lr": 0.1, ...}``: TensorBoard's HParams take scalars and strings."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class RunHParams(L.Callback):
    """The run's whole resolved config in TensorBoard's HParams tab, with ``hp_metric``.

    Lightning logs only the model's arguments and leaves ``hp_metric`` at -1. Here every
    config entry (model, optimiser, data, trainer, callbacks) is a hyper-parameter, and
    ``hp_metric`` follows the method's main metric (its ``monitor``: ``val/top1`` or
    ``val/knn_top1``) after every validation, so runs compare in one table.

    Args:
        config: The resolved config of the run (nested dicts).
    """

    def __init__(self, config: dict) -> None:
        self.params = flatten_config({k: v for k, v in config.items() if k != "config"})

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module._log_hyperparams = False  # this callback logs them, with the config

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = _tensorboard_logger(trainer)
        if logger is not None:
            logger.log_hyperparams(self.params, {"hp_metric": float("nan")})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor = getattr(pl_module, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        logger = _tensorboard_logger(trainer)
        if logger is not None and value is not None and not trainer.sanity_checking:
            logger.log_metrics({"hp_metric": float(value)}, step=trainer.global_step)


def _tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
