"""Trainer callbacks every run gets from the CLI: checkpointing and TensorBoard images."""

from __future__ import annotations

import ast
import difflib
import functools
import signal
import threading
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.callbacks.model_summary import log as summary_log
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table
from torchvision.utils import make_grid

from distill.checkpoint_io import use_atomic_checkpoint_io
from distill.data.base import ViewDataModule
from distill.errors import ConfigError
from distill.eval.features import eval_mode, extract_features, resolve_submodule
from distill.resume import resume_report, run_settings
from distill.slurm import requeue_signal


class MethodCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps ``last.ckpt`` and the best by the method's main metric.

    With ``monitor="auto"`` the metric is the LightningModule's ``monitor`` attribute
    (``val/top1`` for supervised methods, ``val/knn_top1`` for self-supervised ones).
    Epochs on which the metric was not computed (k-NN every few epochs) only update
    ``last.ckpt`` instead of failing; a metric the run does not log stops it at the end of
    the first validated epoch, after ``last.ckpt`` is written, with the metrics it does log
    and the nearest one. All other arguments are ``ModelCheckpoint``'s.

    What it adds to Lightning's: ``last.ckpt`` is the last state, written at the end of
    every epoch and of fit whatever the monitor says (Lightning 2.6 writes it only where a
    top-k checkpoint is saved too, so with a monitor it is a copy of the best epoch), and a
    SIGTERM (a scheduler's pre-emption) or SIGINT (Ctrl-C) writes the state at the
    interrupted step as ``last.ckpt``, marked ``interrupted`` in the checkpoint's callback
    state with the signal, epoch and batch, so that ``--ckpt_path .../last.ckpt`` resumes
    from there (an epoch interrupted during its validation is validated again), also on
    another number of processes or with another batch size (``ViewDataModule.continue_epoch``).
    A signal that arrives once the last epoch is trained and validated marks nothing: the run is
    complete. A second Ctrl-C stops at once, without a checkpoint. Under SLURM with Lightning's
    auto-requeue, its requeue signal (SIGUSR1) is taken the same way instead of by Lightning's
    handler (``distill.slurm``): ``last.ckpt`` of the interrupted step, then ``distill.cli.main``
    requeues the job, which resumes from it by itself. Every checkpoint holds the
    run's trainer and data settings (``distill.resume``): a fit resumed with other ones warns
    once, naming each and what it does to the lr.

    A resumed fit writes into a new version folder and continues the best-checkpoint
    bookkeeping of the run it resumes (Lightning's own starts it afresh there): the best so
    far may stay a file of the earlier folder, which is never removed or overwritten. With
    another monitor, mode or saving interval the bookkeeping starts afresh, and says so.
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
        self._sigint: str | None = None  # set by a first Ctrl-C
        self._requeue_signal: str | None = None  # set by SLURM's requeue signal
        self._interrupted_in_validation = False
        self._monitor_named = monitor != "auto"  # by the user, not the method's own
        self._validated = self._monitor_checked = False
        self._unknown_monitor: str | None = None  # reported once last.ckpt is written
        self._run_settings: dict | None = None  # this fit's, saved with every checkpoint
        self._resumed_run_settings: dict | None = None  # the checkpoint's, when resuming
        self._resumed_interrupted: dict | None = None  # the checkpoint's ``interrupted``
        self._trained = False  # the training loop of this fit started

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self.monitor is not None and self.monitor not in monitor_candidates:
            # Reported only once a validation ran (none does with limit_val_batches=0), as
            # Lightning's own check; once per fit; and when no evaluation callback may still
            # log it.
            if (
                self._validated
                and not self._monitor_checked
                and not self._may_log_later(trainer, monitor_candidates)
            ):
                self._unknown_monitor = unknown_monitor_message(
                    self.monitor, monitor_candidates, self._monitor_named
                )
            return
        self._monitor_checked = True
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking
        super().on_validation_end(trainer, pl_module)

    def _may_log_later(self, trainer: L.Trainer, logged: dict) -> bool:
        """Whether an evaluation callback that has not logged yet (k-NN every few epochs) may
        log the monitor: it is a name under the callback's ``log_prefix``."""
        for callback in trainer.callbacks:
            prefix = getattr(callback, "log_prefix", None)
            if isinstance(prefix, str) and self.monitor.startswith(f"{prefix}_"):
                if not any(name.startswith(f"{prefix}_") for name in logged):
                    return True
        return False

    def _report_unknown_monitor(self) -> None:
        """A monitor the user named is a mistake: the run stops. The method's own (a
        self-supervised method's k-NN accuracy without a ``KNNEval``) only leaves the run
        without a best checkpoint: a warning."""
        if self._unknown_monitor is None:
            return
        message, self._unknown_monitor = self._unknown_monitor, None
        self._monitor_checked = True  # said once
        if not self._monitor_named:
            rank_zero_warn(message)
            return
        raise ConfigError(f"{message}; the state so far is in {self.last_model_path}")

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_step = trainer.global_step

    def _write_last(self, trainer: L.Trainer) -> bool:
        """Writes ``last.ckpt`` unless it already holds this step; whether it wrote it."""
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or getattr(self, "_last_written_step", None) == trainer.global_step
        ):
            return False
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return True

    def load_state_dict(self, state_dict: dict) -> None:
        """Continues the bookkeeping of the resumed run, whose folder is another.

        Lightning keeps only ``best_model_path`` when the folder changed, so the first epoch
        validated after a resume became the best whatever its score. Here the scores of the
        resumed run's best checkpoints that are still local files are kept (the best
        ``save_top_k``). The files stay where they are: Lightning removes a displaced top-k
        file only from this fit's own folder. (Lightning calls this only with the state of a
        callback of the same monitor, mode and saving interval: ``on_load_checkpoint``.)
        """
        self._resumed_interrupted = state_dict.get("interrupted")
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            super().load_state_dict(state_dict)
            return
        scores = {
            path: score
            for path, score in (state_dict.get("best_k_models") or {}).items()
            if Path(path).is_file()
        }
        best_first = sorted(
            scores, key=lambda path: float(scores[path]), reverse=self.mode == "max"
        )
        if self.save_top_k >= 0:
            best_first = best_first[: self.save_top_k]
        self.best_k_models = {path: scores[path] for path in best_first}
        if best_first:
            self.best_model_path, self.best_model_score = best_first[0], scores[best_first[0]]
            self.kth_best_model_path, self.kth_value = best_first[-1], scores[best_first[-1]]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._trained = True
        self._validated, self._monitor_checked, self._unknown_monitor = False, False, None
        # After the checkpoint's optimiser and schedule were restored: the lr can be compared.
        self._run_settings = run_settings(trainer)
        if self._resumed_run_settings is not None:
            report = resume_report(
                trainer, self._resumed_run_settings, self._run_settings, trainer.ckpt_path
            )
            self._resumed_run_settings = None
            if report is not None:
                rank_zero_warn(report)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._write_last(trainer)  # after this epoch's validation: the epoch's final state
        self._report_unknown_monitor()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._write_last(trainer)  # a fit stopped by max_steps mid-epoch
        self._report_unknown_monitor()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resuming a run that had finished when a signal marked its ``last.ckpt`` interrupted
        (as distill did before such signals marked nothing) trains nothing: this fit's folder
        gets that checkpoint unmarked, so the run reads as finished (e.g. as a teacher)."""
        if (
            self._resumed_interrupted is None
            or self._trained
            or not self.save_last
            or not fit_finished(trainer)
        ):
            return
        checkpoint = trainer.strategy.load_checkpoint(trainer.ckpt_path)
        checkpoint["callbacks"][self.state_key]["interrupted"] = None
        path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        trainer.strategy.save_checkpoint(checkpoint, path)
        self.last_model_path = path
        rank_zero_info(
            f"{trainer.ckpt_path} is of a run that had finished (epoch {checkpoint['epoch']}, "
            f"global step {checkpoint['global_step']}) when "
            f"{self._resumed_interrupted.get('signal', 'a signal')} arrived: wrote it as {path}, "
            "not marked interrupted"
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.monitor == "auto":
            self.monitor = getattr(pl_module, "monitor", None)
        super().setup(trainer, pl_module, stage)
        use_atomic_checkpoint_io(trainer.strategy)  # no truncated checkpoint under a valid name
        self._sigint = self._requeue_signal = None
        self._trained, self._resumed_interrupted = False, None
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, functools.partial(self._on_sigint, trainer))
            requeue = requeue_signal(trainer)
            if requeue is not None:
                # Set before the trainer registers its handlers: Lightning then leaves this
                # signal to us and writes no hpc_ckpt_N.ckpt from inside a step.
                self._previous_requeue = requeue, signal.getsignal(requeue)
                signal.signal(requeue, functools.partial(self._on_requeue_signal, trainer))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if getattr(self, "_previous_sigint", None) is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
        if getattr(self, "_previous_requeue", None) is not None:
            signal.signal(*self._previous_requeue)
            self._previous_requeue = None

    def _on_sigint(self, trainer: L.Trainer, signum, frame) -> None:
        """First Ctrl-C: stop after the current batch, as Lightning does for SIGTERM (a
        KeyboardInterrupt can land mid-step and leave a half-updated state); second: now."""
        if self._sigint is not None:
            raise KeyboardInterrupt
        self._sigint = "SIGINT"
        rank_zero_info("SIGINT: stopping after this batch (Ctrl-C again to stop at once)")
        trainer._signal_connector.received_sigterm = True  # Lightning's stop-after-batch flag

    def _on_requeue_signal(self, trainer: L.Trainer, signum, frame) -> None:
        """SLURM's requeue signal: stop after the current batch, as on SIGTERM; ``on_exception``
        writes ``last.ckpt`` and has the job requeued (under DDP, Lightning stops every rank at
        the batch where rank 0 got it)."""
        if self._requeue_signal is None:
            self._requeue_signal = signal.Signals(signum).name
            rank_zero_info(
                f"{self._requeue_signal} (SLURM's requeue signal): stopping after this batch to "
                "write last.ckpt, then requeueing the job"
            )
        trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        # Lightning stops on a SIGTERM, or a first Ctrl-C, with a SIGTERMException after the
        # current batch. Anything else, including the KeyboardInterrupt of a second Ctrl-C
        # (stop at once), writes nothing.
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            super().on_exception(trainer, pl_module, exception)
            return
        signal_name = self._sigint or self._requeue_signal or "SIGTERM"
        exception.signal_name = signal_name  # read by distill.cli.main for the exit code
        requeue = signal_name == self._requeue_signal
        if trainer.sanity_checking:
            rerun = f"resume from {trainer.ckpt_path}" if trainer.ckpt_path else "start"
            again = "the SLURM job is requeued" if requeue else "run the same command again"
            rank_zero_info(
                f"{signal_name} during the sanity check (the validation batches before "
                f"training): nothing was trained and no checkpoint written; {again} to {rerun}"
            )
            self._ask_requeue(trainer, exception, requeue)
            return
        in_validation = trainer.validating
        if not in_validation and fit_finished(trainer):
            exception.run_finished = True  # main exits with 0: nothing is left to do
            rank_zero_info(
                f"{signal_name} after the last epoch was trained and validated: the run is "
                f"complete, {self.last_model_path or 'no last.ckpt (save_last is off)'} holds "
                "its final state"
            )
            return
        loop = trainer.fit_loop.epoch_loop
        self.interrupted = {
            "signal": signal_name,
            "epoch": trainer.current_epoch,
            "batch": loop.batch_progress.current.completed,
            "global_step": trainer.global_step,
        }
        self._last_written_step = None
        self._interrupted_in_validation = in_validation  # read by on_save_checkpoint
        try:
            written = self._write_last(trainer)
        finally:
            self._interrupted_in_validation = False
        where = (
            f"at epoch {trainer.current_epoch}, batch {self.interrupted['batch']} (global step "
            f"{trainer.global_step}){' during its validation' if in_validation else ''}"
        )
        if written and requeue:
            rank_zero_info(f"{signal_name}: wrote {self.last_model_path} {where}")
        elif written:
            rank_zero_info(
                f"{signal_name}: wrote {self.last_model_path} {where}; resume with --ckpt_path "
                f"{self.last_model_path}"
            )
        else:
            rank_zero_info(
                f"{signal_name}: stopped {where}; no checkpoint written (save_last off)"
                + ("; the SLURM job is not requeued: it would start over" if requeue else "")
            )
        self._ask_requeue(trainer, exception, requeue and written)

    def _ask_requeue(self, trainer: L.Trainer, exception: SIGTERMException, requeue: bool) -> None:
        """Has ``distill.cli.main`` requeue the SLURM job once the fit has shut down (rank 0:
        one ``scontrol requeue`` for the job)."""
        exception.requeue = requeue and trainer.is_global_zero
        exception.checkpoint = self.last_model_path or trainer.ckpt_path

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint):
        if self._run_settings is not None:
            checkpoint["run_settings"] = self._run_settings
        if self._interrupted_in_validation:
            restart_validation(checkpoint)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint):
        self._resumed_run_settings = checkpoint.get("run_settings")
        if isinstance(trainer.datamodule, ViewDataModule):  # before Lightning restores its loops
            trainer.datamodule.continue_epoch(trainer, checkpoint)
        # Lightning restores a callback's state only under its own key, which holds the
        # monitor, mode and saving interval: with any of them changed, nothing is carried over.
        name = type(self).__name__
        saved = [key for key in checkpoint.get("callbacks") or {} if key.startswith(f"{name}{{")]
        if saved and self.state_key not in saved:
            changes = settings_changes(saved[0][len(name) :], self.state_key[len(name) :])
            rank_zero_info(
                f"checkpoint settings differ from those of the run resumed ({changes}): its best "
                f"checkpoints are not carried over; this fit's start afresh in {self.dirpath}"
            )

    def state_dict(self) -> dict:
        return {**super().state_dict(), "interrupted": getattr(self, "interrupted", None)}


def settings_changes(saved: str, current: str) -> str:
    """``"mode: 'max' -> 'min'"`` from two callback state keys' settings (``{'monitor': ...}``,
    as Lightning writes them with ``repr``)."""
    try:
        before, after = ast.literal_eval(saved), ast.literal_eval(current)
    except (ValueError, SyntaxError):  # not a dict's repr: the keys themselves
        return f"{saved} -> {current}"
    return "; ".join(
        f"{key}: {before.get(key)!r} -> {value!r}"
        for key, value in after.items()
        if before.get(key) != value
    )


def fit_finished(trainer: L.Trainer) -> bool:
    """Whether the fit reached its ``max_steps`` or ``max_epochs`` (trained and validated),
    as Lightning's fit loop decides it stops, without its log line."""
    loop = trainer.fit_loop
    max_steps, max_epochs = loop.max_steps, loop.max_epochs
    if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
        return True
    return max_epochs is not None and 0 <= max_epochs <= loop.epoch_progress.current.processed


def restart_validation(checkpoint: dict) -> None:
    """Marks the validation a checkpoint was written in as started and not finished.

    Its metrics (and the epoch's chance to be the best checkpoint) are not in the checkpoint,
    only the counters of the val batches it got through. With one val batch started and none
    finished, Lightning's resume sees its own "restarted mid-evaluation" state and runs the
    epoch's validation again from its first batch before training on.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    # Val batches of earlier validations in this epoch (val_check_interval < 1) stay counted.
    earlier = progress["total"]["completed"] - progress["current"]["completed"]
    for counters, done in ((progress["total"], earlier), (progress["current"], 0)):
        counters.update(ready=done + 1, started=done + 1, processed=done, completed=done)
    progress["is_last_batch"] = False


def unknown_monitor_message(monitor: str, logged: dict, named: bool = True) -> str:
    """The message for a ``checkpoint.monitor`` the run does not log: the names it does log
    and the nearest one; ``named=False`` when it is the method's own (``monitor: auto``)."""
    names = sorted(name for name in logged if name not in ("epoch", "step"))
    nearest = difflib.get_close_matches(monitor, names, n=1)
    hint = f" Did you mean {nearest[0]!r}?" if nearest else ""
    if named:
        which, remedy = f"checkpoint.monitor={monitor!r}", ""
    else:
        which = f"checkpoint.monitor (auto: the method's main metric {monitor!r})"
        remedy = "; or add the callback that logs it: KNNEval logs val/knn_*"
    return (
        f"{which} is not a metric this run logs, so no best checkpoint would ever be "
        f"written.{hint} It logs: {', '.join(names) or 'nothing'} (set --checkpoint.monitor "
        f"to one of them, or to null for last.ckpt only{remedy})"
    )


class CountedModelSummary(ModelSummary):
    """Lightning's model summary, without its FLOPs column when it counted nothing.

    Lightning counts FLOPs only through a forward of ``example_input_array``, which methods
    do not set (their ``forward`` runs the student alone, so a count would leave the teacher
    and the heads at 0 anyway): the column and the "Total Flops" line would be all zeros.
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs,
    ) -> None:
        if total_flops:
            ModelSummary.summarize(
                summary_data, total_parameters, trainable_parameters, model_size,
                total_training_modes, total_flops, **summarize_kwargs,
            )  # fmt: skip
            return
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, 0, *columns
        )
        summary_log.info("\n" + table.rsplit("\n", 1)[0])  # without "0  Total Flops"


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
    ``val/knn_top1``) after every validation, so runs compare in one table. The entry is
    written at the first validation, with its value: no placeholder (Lightning's -1) is
    plotted before it.

    Args:
        config: The resolved config of the run (nested dicts).
    """

    def __init__(self, config: dict) -> None:
        self.params = flatten_config({k: v for k, v in config.items() if k != "config"})
        self._written = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module._log_hyperparams = False  # this callback logs them, with the config

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor = getattr(pl_module, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        logger = _tensorboard_logger(trainer)
        if logger is None or value is None or trainer.sanity_checking:
            return
        metrics, step = {"hp_metric": float(value)}, trainer.global_step
        if self._written:
            logger.log_metrics(metrics, step=step)
        else:  # the HParams entry waits for a real value: a placeholder would be a plotted point
            logger.log_hyperparams(self.params, metrics, step=step)
            self._written = True


def _tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
