"""Fake training runs (``<run>/lightning_logs/version_N/`` with a tiny ``last.ckpt``)."""

import pytest
import torch
import yaml


@pytest.fixture
def write_run(tmp_path):
    """``write_run(version, epoch=..., ...)`` writes one version of ``tmp_path/run``.

    The checkpoint has what Lightning and ``MethodCheckpoint`` save (``epoch``,
    ``global_step``: 10 per epoch unless given, the callback's monitor, best score and
    ``interrupted``); the version's ``config.yaml`` has ``trainer.max_epochs`` and
    ``trainer.max_steps`` (none with ``config=False``).
    """

    def write(
        version: int,
        epoch: int = 39,
        max_epochs: int | None = 40,
        state_dict: dict | None = None,
        best_score: float | None = 0.625,
        interrupted: dict | None = None,
        global_step: int | None = None,
        max_steps: int = -1,
        config: bool = True,
    ):
        folder = tmp_path / "run" / "lightning_logs" / f"version_{version}"
        (folder / "checkpoints").mkdir(parents=True)
        callback = {
            "monitor": "val/top1",
            "best_model_score": None if best_score is None else torch.tensor(best_score),
            "best_model_path": str(folder / "checkpoints" / "epoch=2-step=30.ckpt"),
            "interrupted": interrupted,
        }
        checkpoint = {
            "state_dict": state_dict or {},
            "epoch": epoch,
            "global_step": 10 * (epoch + 1) if global_step is None else global_step,
            "callbacks": {"MethodCheckpoint{'monitor': 'val/top1', 'mode': 'max'}": callback},
        }
        torch.save(checkpoint, folder / "checkpoints" / "last.ckpt")
        if config:
            trainer = {"max_epochs": max_epochs, "max_steps": max_steps}
            (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": trainer}))
        return folder / "checkpoints" / "last.ckpt"

    return write
