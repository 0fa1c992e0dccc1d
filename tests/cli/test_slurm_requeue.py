"""SLURM requeue through real processes: SLURM's requeue signal to a running ``distill fit``
(launched by ``configs/slurm/fit.sbatch`` under a fake SLURM environment, with stand-ins for
``srun`` and ``scontrol``), the requeue, and the requeued job continuing by itself exactly as
the uninterrupted run; and the ``config.yaml`` of a folder a run comes back to, kept."""

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from distill.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
SBATCH = ROOT / "configs" / "slurm" / "fit.sbatch"
JOB = "4242"

#: What SLURM sets for a one-task batch job (and Lightning reads); the job name is not
#: "bash" or "interactive", which Lightning takes for an interactive allocation.
SLURM_ENV = {
    "SLURM_JOB_ID": JOB, "SLURM_JOB_NAME": "distill", "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
}  # fmt: skip

#: ``scontrol`` as SLURM's: records its arguments, and a requeue ends the running job with
#: SIGTERM (sent to the process that called it, which is the job's task here).
SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_CALLS"
kill -TERM "$PPID"
"""

#: ``srun`` for one task on this machine: runs the command.
SRUN = """#!/bin/sh
exec "$@"
"""

#: The test's fit: 2 epochs of 4 steps, evaluation on one val batch.
FIT_OPTIONS = (
    "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4",
    "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
)  # fmt: skip


@pytest.fixture
def slurm_job(tmp_path):
    """Runs ``configs/slurm/fit.sbatch`` as SLURM would start job 4242 (again and again),
    with the stand-ins on PATH; returns ``(run, scontrol_calls)``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", SCONTROL), ("srun", SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "scontrol_calls"
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("SLURM_")},
        **SLURM_ENV,
        "SCONTROL_CALLS": str(calls),
        # The stand-ins, then the interpreter's bin folder (its ``distill`` command).
        "PATH": os.pathsep.join(
            [str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
        "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
    }

    def run(*options):
        command = ["bash", str(SBATCH), QUICKSTART, *FIT_OPTIONS, *options]
        return subprocess.run(
            command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
        )

    return run, calls


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def interrupted_state(saved):
    (state,) = [s for k, s in saved["callbacks"].items() if k.startswith("MethodCheckpoint")]
    return state["interrupted"]


def assert_same_tensors(first, second, where=""):
    """Equal nested structures whose tensors are equal to the last bit."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and torch.equal(first, second), where
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            assert_same_tensors(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, list | tuple):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same_tensors(a, b, f"{where}[{index}]")
    else:
        assert first == second, where


def test_requeued_job_resumes_by_itself_and_ends_as_the_uninterrupted_run(tmp_path, slurm_job):
    run, calls = slurm_job
    root = tmp_path / "job"
    folder = root / "lightning_logs" / f"version_{JOB}"
    # SLURM's requeue signal after global step 5: epoch 1, batch 1 of 4.
    signal_at = (
        "--trainer.callbacks+=tests_support.SignalAt", "--trainer.callbacks.step", "5",
        "--trainer.callbacks.signal_name", "SIGUSR1",
    )  # fmt: skip
    job = run("--trainer.default_root_dir", str(root), *signal_at)
    assert job.returncode == 143, job.stderr[-3000:]
    assert calls.read_text().splitlines() == [f"requeue {JOB}"]
    assert "Traceback" not in job.stderr
    # The interrupted step's state, as a SIGTERM would write it; no hpc_ckpt_N.ckpt, which
    # Lightning would have written from inside the step.
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "epoch=0-step=4.ckpt", "last.ckpt",
    ]  # fmt: skip
    assert list(root.glob("**/hpc_ckpt_*")) == []
    interrupted = load(folder / "checkpoints" / "last.ckpt")
    assert interrupted["global_step"] == 5
    assert interrupted_state(interrupted) == {
        "signal": "SIGUSR1", "epoch": 1, "batch": 1, "global_step": 5,
    }  # fmt: skip
    config = (folder / "config.yaml").read_text()

    # The requeued job: the same script, options and job id, no --ckpt_path.
    requeued = run("--trainer.default_root_dir", str(root), *signal_at)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "Traceback" not in requeued.stderr
    assert (
        f"SLURM job {JOB} runs again (requeued): resuming from its own "
        f"{folder / 'checkpoints' / 'last.ckpt'}"
    ) in requeued.stderr
    assert calls.read_text().splitlines() == [f"requeue {JOB}"]  # not requeued again
    assert [p.name for p in (root / "lightning_logs").iterdir()] == [f"version_{JOB}"]
    assert (folder / "config.yaml").read_text() == config
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # both runs' logs

    # The same fit, never interrupted, outside SLURM.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environment.update(PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1")
    reference_root = tmp_path / "reference"
    reference = subprocess.run(
        [sys.executable, "-m", "distill", "fit", "--config", QUICKSTART, *FIT_OPTIONS,
         "--trainer.default_root_dir", str(reference_root)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]
    reference_folder = reference_root / "lightning_logs" / "version_0" / "checkpoints"
    final, expected = (
        load(folder / "checkpoints" / "last.ckpt"),
        load(reference_folder / "last.ckpt"),
    )
    assert final["global_step"] == expected["global_step"] == 8
    assert interrupted_state(final) is None
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "rng_states", "loops"):
        assert_same_tensors(final[key], expected[key], key)
    # The same best checkpoint kept (the requeued run continued the bookkeeping in its folder).
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == sorted(
        p.name for p in reference_folder.iterdir()
    )


@pytest.fixture
def in_process_slurm_job(monkeypatch, capsys):
    """``main`` in this process, under SLURM job 4242's environment; returns a function of
    the arguments giving ``(exit code, stderr)``. The signal handlers a failed fit leaves
    (the fit never reached its teardown) are restored."""
    for key in [key for key in os.environ if key.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGUSR1)}

    def run(*args):
        code = 0
        try:
            main(["fit", "--config", QUICKSTART, *args])
        except SystemExit as exit_:
            code = exit_.code or 0
        return code, capsys.readouterr().err

    yield run
    for number, handler in handlers.items():
        signal.signal(number, handler)


#: One optimiser step, no validation: a run that leaves a folder with a config.yaml and a
#: last.ckpt in a few seconds.
ONE_STEP = (
    "--trainer.max_steps", "1", "--trainer.limit_train_batches", "1",
    "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
)  # fmt: skip


def folder_files(folder):
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_requeued_job_with_another_config_is_refused_and_its_folder_kept(
    tmp_path, in_process_slurm_job
):
    root = ("--trainer.default_root_dir", str(tmp_path))
    code, err = in_process_slurm_job(*ONE_STEP, *root)
    assert code == 0, err
    folder = tmp_path / "lightning_logs" / f"version_{JOB}"
    written = folder_files(folder)
    assert folder / "config.yaml" in written and folder / "checkpoints" / "last.ckpt" in written
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = in_process_slurm_job(
            *ONE_STEP, *root, "--model.init_args.label_smoothing", "0.1"
        )
    assert code == 2
    assert not caught, [str(w.message) for w in caught]  # the refusal is the one message
    assert (
        f"distill: error: {folder} is the log folder of a run with another config "
        f"({folder / 'config.yaml'}): model.init_args.label_smoothing: 0.0 -> 0.1. A folder keeps "
        "one run's config"
    ) in err
    assert "Traceback" not in err and "AttributeError" not in err
    assert folder_files(folder) == written  # nothing replaced, nothing added


def test_requeued_job_takes_the_seed_its_first_run_drew(tmp_path, in_process_slurm_job):
    # seed_everything: true draws a seed; the requeued job's config must be the run's own.
    options = (*ONE_STEP, "--trainer.default_root_dir", str(tmp_path), "--seed_everything", "true")
    code, err = in_process_slurm_job(*options)
    assert code == 0, err
    config = tmp_path / "lightning_logs" / f"version_{JOB}" / "config.yaml"
    saved = config.read_text()
    seed = next(line for line in saved.splitlines() if line.startswith("seed_everything: "))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = in_process_slurm_job(*options)
    assert code == 0, err
    # The run goes on in its own folder: no advice about a non-empty checkpoint folder.
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]
    assert config.read_text() == saved
    assert os.environ["PL_GLOBAL_SEED"] == seed.removeprefix("seed_everything: ")


def test_fresh_fit_over_a_fixed_version_folder_with_checkpoints_is_refused(
    tmp_path, in_process_slurm_job, monkeypatch
):
    for key in SLURM_ENV:
        monkeypatch.delenv(key)  # not a SLURM job: a logger's fixed version
    logger = (
        "--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", str(tmp_path),
        "--trainer.logger.version", "7",
    )  # fmt: skip
    code, err = in_process_slurm_job(*ONE_STEP, *logger)
    assert code == 0, err
    folder = tmp_path / "lightning_logs" / "version_7"
    written = folder_files(folder)
    code, err = in_process_slurm_job(*ONE_STEP, *logger)
    assert code == 2
    last = folder / "checkpoints" / "last.ckpt"
    assert (
        f"distill: error: {folder} holds the checkpoints of a run with this config, and this fit "
        f"would start afresh over them; resume it with --ckpt_path {last}"
    ) in err
    assert folder_files(folder) == written
    # Resuming from it goes on in the folder (here: nothing left to train), config.yaml kept.
    code, err = in_process_slurm_job(*ONE_STEP, *logger, "--ckpt_path", str(last))
    assert code == 0, err
    assert (folder / "config.yaml").read_bytes() == written[folder / "config.yaml"]
