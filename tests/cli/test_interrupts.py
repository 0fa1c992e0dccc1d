"""A real signal to a real ``distill fit``: a checkpoint at the interrupted step, the
conventional exit code, and a resume from there; resumes that refuse or report changes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def distill(*args, root, val_batches=1):
    """``python -m distill ...`` in a subprocess with the tests' helpers importable."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "distill", *args, "--trainer.default_root_dir", str(root),
        "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", str(val_batches),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def checkpoint(root, version=0):
    path = root / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"
    return path, torch.load(path, map_location="cpu", weights_only=False)


def interrupted_state(saved):
    (state,) = [s for k, s in saved["callbacks"].items() if k.startswith("MethodCheckpoint")]
    return state["interrupted"]


@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_writes_a_resumable_checkpoint_and_exits_with_the_signal_code(
    tmp_path, signal_name, code
):
    run = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2",
        "--trainer.callbacks+=tests_support.SignalAt",
        "--trainer.callbacks.step", "5", "--trainer.callbacks.signal_name", signal_name,
        root=tmp_path,
    )  # fmt: skip
    assert run.returncode == code, run.stderr[-3000:]
    path, saved = checkpoint(tmp_path)
    assert saved["global_step"] == 5 and saved["epoch"] == 1  # mid-epoch: batch 1 of 4
    assert interrupted_state(saved) == {
        "signal": signal_name, "epoch": 1, "batch": 1, "global_step": 5,
    }  # fmt: skip
    resumed = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2", "--ckpt_path", str(path),
        root=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, final = checkpoint(tmp_path, version=1)
    assert final["global_step"] == 8 and final["epoch"] == 1
    assert interrupted_state(final) is None


def test_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path):
    run = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2",
        "--trainer.callbacks+=tests_support.SignalAt", "--trainer.callbacks.step", "5",
        "--trainer.callbacks.signal_name", "SIGINT", "--trainer.callbacks.times", "2",
        root=tmp_path,
    )  # fmt: skip
    assert run.returncode == 130, run.stderr[-3000:]
    _, saved = checkpoint(tmp_path)
    assert saved["global_step"] == 4 and interrupted_state(saved) is None  # epoch 0's, as it was


def test_epoch_interrupted_during_its_validation_is_validated_on_resume(tmp_path):
    every_epoch = ("--checkpoint.save_top_k", "-1")  # a best-checkpoint file per validated epoch
    run = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2", *every_epoch,
        "--trainer.callbacks+=tests_support.SignalInValidation", "--trainer.callbacks.epoch", "0",
        root=tmp_path, val_batches=2,
    )  # fmt: skip
    assert run.returncode == 143, run.stderr[-3000:]
    assert "(global step 4) during its validation" in run.stderr
    path, saved = checkpoint(tmp_path)
    assert interrupted_state(saved) == {
        "signal": "SIGTERM", "epoch": 0, "batch": 4, "global_step": 4,
    }  # fmt: skip
    resumed = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2", *every_epoch,
        "--ckpt_path", str(path), root=tmp_path, val_batches=2,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    version = tmp_path / "lightning_logs" / "version_1"
    events = EventAccumulator(str(version)).Reload()
    for metric in ("val/top1", "val/knn_top1", "val/linear_top1"):
        assert len(events.Scalars(metric)) == 2, metric  # epochs 0 and 1
    files = sorted(p.name for p in (version / "checkpoints").iterdir())
    assert files == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]


def test_signal_after_the_last_epoch_was_validated_leaves_a_complete_run(tmp_path):
    # Lightning raises on the signal at the end of the epoch: nothing is left to train, so
    # the run is complete and its last.ckpt not marked interrupted.
    run = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2",
        "--trainer.callbacks+=tests_support.SignalAfterValidation",
        "--trainer.callbacks.epoch", "1", root=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    path, saved = checkpoint(tmp_path)
    assert (
        f"SIGTERM after the last epoch was trained and validated: the run is complete, {path} "
        "holds its final state"
    ) in run.stderr
    assert saved["global_step"] == 8 and saved["epoch"] == 1
    assert interrupted_state(saved) is None


def test_signal_during_the_sanity_check_says_nothing_was_written(tmp_path):
    run = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2",
        "--trainer.callbacks+=tests_support.SignalInSanityCheck", root=tmp_path, val_batches=2,
    )  # fmt: skip
    assert run.returncode == 143, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        "SIGTERM during the sanity check (the validation batches before training): nothing was "
        "trained and no checkpoint written; run the same command again to start"
    )
    assert list(tmp_path.iterdir()) == []  # the run's log folder is gone too


def test_checkpoint_of_another_method_is_refused_by_class(tmp_path):
    path = tmp_path / "kd.ckpt"
    torch.save(
        {"hyper_parameters": {"_class_path": "distill.methods.KD", "temperature": 4.0}}, path
    )
    run = distill("fit", "--config", QUICKSTART, "--ckpt_path", str(path), root=tmp_path)
    assert run.returncode == 2
    assert "is a checkpoint of distill.methods.KD, but the configured model is " in run.stderr
    assert "distill.methods.Supervised" in run.stderr and "Traceback" not in run.stderr


def test_changed_model_argument_applies_and_is_reported(tmp_path):
    first = distill("fit", "--config", QUICKSTART, "--trainer.max_epochs", "1", root=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    path, saved = checkpoint(tmp_path)
    assert saved["hyper_parameters"]["label_smoothing"] == 0.0
    resumed = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2", "--ckpt_path", str(path),
        "--model.init_args.label_smoothing", "0.5", root=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "label_smoothing: 0.0 -> 0.5" in resumed.stderr
    _, final = checkpoint(tmp_path, version=1)
    assert final["hyper_parameters"]["label_smoothing"] == 0.5 and final["global_step"] == 8


def test_nonfinite_loss_exits_non_zero_and_keeps_last_good_checkpoint(tmp_path):
    run = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2",
        "--trainer.callbacks+=tests_support.PoisonBatch", "--trainer.callbacks.step", "5",
        root=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    assert "training is not finite: train/loss at global step 5;" in run.stderr
    assert "nonfinite_loss: skip" in run.stderr and "Traceback" not in run.stderr
    _, saved = checkpoint(tmp_path)
    assert saved["global_step"] == 4  # the end of epoch 0: the last good state
    assert all(
        torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point()
    )


def test_finite_loss_over_an_infinite_state_exits_non_zero_without_a_checkpoint(tmp_path):
    # lr 1e6: the loss stays finite over these 4 steps, the weights and variances do not
    # (from step 2 on), and the checkpoints at the end of epoch 0 would hold them.
    run = distill(
        "fit", "--config", QUICKSTART, "--trainer.max_steps", "4",
        "--model.init_args.optimizer.init_args.lr", "1e6", root=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    assert "distill: error: training is not finite: " in run.stderr
    assert "parameter and buffer tensors from global step" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(tmp_path.rglob("*.ckpt")) == []
