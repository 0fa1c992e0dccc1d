"""SLURM requeue: the signal that asks for it, the job's own folder, and ``scontrol requeue``.

With ``#SBATCH --signal=SIGUSR1@90 --requeue`` SLURM sends SIGUSR1 some time before the job's
time limit. Lightning's own handler for it (``SLURMEnvironment(auto_requeue=True)``, the
default under SLURM) saves ``hpc_ckpt_N.ckpt`` from inside the signal handler, wherever the
step happens to be (between the optimiser step and the loop counters, before an EMA update),
so resuming from it is not the continuation of the run. distill takes that signal instead
(``MethodCheckpoint``): the run stops after the current batch as on SIGTERM, writes its
interrupted ``last.ckpt`` (the exact mid-epoch state), and only then ``main`` requeues the job.

A requeued job runs the same command with the same ``SLURM_JOB_ID``, and Lightning's default
logger names the run's folder after that id (``lightning_logs/version_<id>``): the job finds
its own ``last.ckpt`` there (``job_folder``) and resumes from it by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from distill.runs import fixed_log_folder


def requeue_signal(trainer: L.Trainer) -> signal.Signals | None:
    """The signal on which Lightning would requeue this fit's SLURM job (SIGUSR1 unless set
    otherwise), or ``None`` when it would not (not under SLURM, or ``auto_requeue=False``)."""
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return environment.requeue_signal
    return None


def job_folder(trainer_config: dict, checkpoint_dirpath: str | None) -> Path | None:
    """The run's log folder when it is named after this SLURM job:
    ``<default_root_dir>/lightning_logs/version_<SLURM_JOB_ID>`` with Lightning's default
    logger (or a TensorBoard or CSV logger configured with that version).

    ``None`` outside a SLURM job (or in an interactive one: job name ``bash`` or
    ``interactive``) and where the folder is another: a logger whose versions count up, or
    checkpoints in a ``checkpoint.dirpath`` that all runs share.
    """
    job = SLURMEnvironment.job_id()
    folder = None if checkpoint_dirpath else fixed_log_folder(trainer_config)
    if job is None or folder is None or folder.name != f"version_{job}":
        return None
    return folder


def resumed_by_requeued_job(checkpoint: str | None) -> bool:
    """Whether ``checkpoint`` is the ``last.ckpt`` a requeued run of this job resumes from
    (``checkpoints/last.ckpt`` of a ``version_<SLURM_JOB_ID>`` folder: ``job_folder``)."""
    job = SLURMEnvironment.job_id()
    if job is None or not checkpoint:
        return False
    path = Path(checkpoint)
    return (
        path.name == "last.ckpt"
        and path.parent.name == "checkpoints"
        and (path.parent.parent.name == f"version_{job}")
    )


def requeue_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, as
    Lightning's handler does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue(checkpoint: str | None) -> bool:
    """Runs ``scontrol requeue <job id>`` once the fit has stopped (and written
    ``checkpoint``, if any); whether SLURM took it.

    SLURM ends a requeued job with SIGTERM: this process has nothing left to write, so it
    ignores the signal and exits with distill's own code instead of being killed by it.
    """
    job = requeue_job_id()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False).returncode
    except FileNotFoundError:
        result = None
    if result == 0:
        if resumed_by_requeued_job(checkpoint):
            then = f"the same command resumes from {checkpoint} by itself"
        elif checkpoint:
            then = f"give it --ckpt_path {checkpoint} to resume"
        else:
            then = "it starts the run"
        rank_zero_info(
            f"requeued SLURM job {job} (scontrol requeue {job}); when it runs again, {then}"
        )
        return True
    failure = "scontrol is not on PATH" if result is None else f"scontrol exited with {result}"
    resume = f" with --ckpt_path {checkpoint}" if checkpoint else ""
    rank_zero_warn(f"SLURM job {job} was not requeued ({failure}): submit the run again{resume}")
    return False
