"""Checkpoint files written atomically and read with one message (``distill.checkpoint_io``),
down to a real ``distill fit`` whose checkpoint write fails as on a full disk."""

import contextlib
import errno
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from tests_support import ColourDataModule, FrozenModel, quiet_trainer

from distill.callbacks import MethodCheckpoint
from distill.checkpoint_io import (
    PARTIAL_PREFIX,
    AtomicCheckpointIO,
    load_torch_file,
    write_atomically,
)
from distill.errors import ConfigError, OutputError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

#: A file-size limit below any checkpoint here (the quickstart's is about 680 KB), above
#: every other file a short run writes (logs, config).
SIZE_LIMIT = 256 * 1024


def limit_file_size(limit: int = SIZE_LIMIT) -> None:
    """Makes every write past ``limit`` bytes fail with EFBIG, as a full disk fails with ENOSPC
    (SIGXFSZ ignored so the write returns the error instead of killing the process)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@contextlib.contextmanager
def file_size_limit(limit: int = SIZE_LIMIT):
    """``limit_file_size`` within the block, in this process."""
    previous_handler = signal.getsignal(signal.SIGXFSZ)
    previous_limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit_file_size(limit)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limits)
        signal.signal(signal.SIGXFSZ, previous_handler)


def big_checkpoint() -> dict:
    return {"state_dict": {"weight": torch.arange(4 * SIZE_LIMIT, dtype=torch.float32)}}


def test_write_that_fails_half_way_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"the previous last.ckpt")
    with file_size_limit(), pytest.raises(OutputError) as failure:
        AtomicCheckpointIO().save_checkpoint(big_checkpoint(), path)
    message = str(failure.value)
    assert f"cannot write checkpoint {path}: file too large" in message
    assert "earlier checkpoints are unchanged" in message
    assert isinstance(failure.value.__cause__, OSError)
    assert failure.value.__cause__.errno == errno.EFBIG  # torch's RuntimeError is not the cause
    assert path.read_bytes() == b"the previous last.ckpt"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file


def test_saved_checkpoint_loads_and_gets_the_usual_file_mode(tmp_path):
    path = tmp_path / "new" / "epoch=0-step=1.ckpt"  # the folder is created
    checkpoint = {"state_dict": {"weight": torch.randn(3, 4)}, "epoch": 0}
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["epoch"] == 0 and torch.equal(
        loaded["state_dict"]["weight"], checkpoint["state_dict"]["weight"]
    )
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (errno.ENOSPC, "disk full"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied (a read-only folder?)"),
    ],
)
def test_failed_write_names_the_file_and_the_cause_and_changes_nothing(tmp_path, code, cause):
    first, second = tmp_path / "model.pt", tmp_path / "model.json"
    first.write_bytes(b"earlier weights")
    partials = []

    def fails(file):
        file.write(b"half of it")
        partials.extend(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        raise OSError(code, os.strerror(code))

    with pytest.raises(OutputError) as failure:
        write_atomically({first: lambda file: file.write(b"new weights"), second: fails}, "export")
    assert str(failure.value) == f"cannot write export {second}: {cause} ({os.strerror(code)})"
    assert first.read_bytes() == b"earlier weights"  # not renamed: the second write failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    # Both were written beside their targets, under names no checkpoint search matches
    # (Lightning finds SLURM's by "hpc_ckpt_" anywhere in a name, the others by .ckpt).
    assert len(partials) == 2
    assert all(name.startswith(PARTIAL_PREFIX) and "ckpt" not in name for name in partials)


def test_installed_on_the_default_plugin_only(tmp_path):
    class OwnIO(TorchCheckpointIO):
        pass

    for plugins, expected in (([], AtomicCheckpointIO), ([OwnIO()], OwnIO)):
        callback = MethodCheckpoint(dirpath=str(tmp_path / expected.__name__))
        trainer = quiet_trainer(
            tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0,
            enable_checkpointing=True, callbacks=[callback], plugins=plugins,
        )  # fmt: skip
        trainer.fit(FrozenModel(), datamodule=ColourDataModule())
        assert type(trainer.strategy.checkpoint_io) is expected
        assert torch.load(callback.last_model_path, weights_only=True)["epoch"] == 0


def distill_fit(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m distill fit`` on the quickstart in a process whose writes stop at
    ``SIZE_LIMIT`` bytes, its checkpoints in ``root / "checkpoints"`` (no best checkpoint and
    no ``last-v1.ckpt``: the first write is ``last.ckpt`` itself, over the one there)."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "distill", "fit", "--config", QUICKSTART,
        "--trainer.default_root_dir", str(root), "--checkpoint.dirpath", str(root / "checkpoints"),
        "--checkpoint.save_top_k", "0", "--checkpoint.enable_version_counter", "false",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", *args,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size,
    )  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        [],  # the save at the end of the epoch
        ["--trainer.callbacks+=tests_support.SignalAt", "--trainer.callbacks.step", "1"],
    ],
    ids=["epoch-end", "sigterm"],
)
def test_fit_whose_checkpoint_write_fails_ends_in_one_message_and_keeps_the_last(tmp_path, extra):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"an earlier last.ckpt")
    run = distill_fit(tmp_path, *extra)
    assert run.returncode == 74, run.stderr[-3000:]
    assert ("Received SIGTERM" in run.stderr) == bool(extra)  # the interrupted checkpoint's write
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"distill: error: cannot write checkpoint {last}: file too large for the file system "
        "or the process's file-size limit (File too large); no file was written under that "
        "name and earlier checkpoints are unchanged. Free space, or write the run elsewhere "
        "(--trainer.default_root_dir)"
    )
    assert last.read_bytes() == b"an earlier last.ckpt"
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]


def test_truncated_file_is_named_with_its_size(tmp_path):
    whole = tmp_path / "whole.ckpt"
    torch.save(big_checkpoint(), whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ConfigError) as failure:
        load_torch_file(cut)
    message = str(failure.value)
    assert message.startswith(f"{cut} is truncated, corrupt or not a torch.save file (")
    assert f"({cut.stat().st_size} bytes; torch.load: RuntimeError " in message
    assert "\n" not in message


def test_folder_missing_file_and_refused_objects_are_one_line_each(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path} is a folder, not a file$"):
        load_torch_file(tmp_path)
    with pytest.raises(ConfigError, match="nowhere.ckpt: no such file$"):
        load_torch_file(tmp_path / "nowhere.ckpt")
    pickled = tmp_path / "object.pt"
    torch.save({"path": Path("x")}, pickled)  # a Python object, not tensors and plain values
    with pytest.raises(ConfigError) as failure:
        load_torch_file(pickled)
    assert "holds Python objects that a weights-only torch.load refuses (Unsupported global" in (
        str(failure.value)
    )
    assert "\n" not in str(failure.value)
