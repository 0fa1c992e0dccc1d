"""Checkpoint and weight files: written atomically, read with one message saying what is wrong.

A write goes to a hidden temporary file in the target's folder, flushed to disk, which is then
renamed over the target (``os.replace``, atomic within a file system): a write that fails
(disk full, read-only folder) or is killed half-way leaves the previous file as it was and no
partial file under the target's name. Lightning's own save stages the file in the system's
temporary folder and then moves it, which across file systems is a copy that a full disk
cuts short under the target's name.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import secrets
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.strategies import Strategy

from distill.errors import ConfigError, OutputError

#: What an ``OSError`` of a write means to the user, by errno.
WRITE_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or the process's file-size limit",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied (a read-only folder?)",
    errno.EPERM: "operation not permitted",
}

#: The errnos of a failed write that ``output_error`` turns into one message.
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)

#: Prefix of the temporary file a write goes to (hidden; no checkpoint pattern matches it).
PARTIAL_PREFIX = ".distill-partial-"


def os_error_cause(error: OSError) -> str:
    """What ``error`` means and the system's words: ``disk full (No space left on device)``."""
    detail = error.strerror or str(error)
    cause = WRITE_CAUSES.get(error.errno)
    return f"{cause} ({detail})" if cause else detail


def output_error(error: BaseException) -> OutputError | None:
    """``cannot write <file>: <cause>`` for an ``OSError`` of a write anywhere in a run (disk
    full, quota, file-size limit, read-only file system, no permission); ``None`` for any other
    error, and for a permission error on a file that exists but cannot be read (an input).

    ``os.makedirs`` and ``open`` name their file; a ``write`` or ``close`` that fails on a full
    disk does not (TensorBoard's event writer, Lightning's ``hparams.yaml``), so the file is
    taken from the open file object of the innermost frame that holds one.
    """
    if not isinstance(error, OSError) or error.errno not in OUTPUT_ERRNOS:
        return None
    path = error.filename or _open_file_in_traceback(error)
    path = os.fsdecode(path) if path is not None else None
    unreadable = path is not None and os.path.exists(path) and not os.access(path, os.R_OK)
    if error.errno == errno.EACCES and unreadable:
        return None
    return OutputError(f"cannot write {path or 'a file'}: {os_error_cause(error)}")


def _open_file_in_traceback(error: BaseException) -> str | None:
    """The name of the file object nearest to where ``error`` was raised, if a frame has one."""
    frames = []
    trace = error.__traceback__
    while trace is not None:
        frames.append(trace.tb_frame)
        trace = trace.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase):  # a file object; fsspec's local one keeps ``path``
                name = getattr(value, "name", None) or getattr(value, "path", None)
                if isinstance(name, str | bytes):  # TensorBoard opens its files by bytes
                    return os.fsdecode(name)
    return None


def write_atomically(
    files: Mapping[str | os.PathLike, Callable[[IO[bytes]], None]],
    what: str = "file",
    hint: str = "",
) -> None:
    """Writes each file to a temporary file beside it, then renames them all into place.

    All temporary files are written (and flushed to disk) before the first rename, so a
    failed write leaves every target as it was: absent, or the previous file. Folders are
    created if missing.

    Args:
        files: Path -> a function writing the file's whole content to the binary file object
            it is given (``lambda file: torch.save(state, file)``).
        what: What the files are, for the message (``"checkpoint"``, ``"results"``).
        hint: Appended to the message: what was kept, what to do.

    Raises:
        OutputError: A write failed with an ``OSError``; the message names the file and the
            cause (disk full, read-only, permission), then ``hint``.
    """
    partials: dict[Path, Path] = {}
    path = None
    try:
        for path, write in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.parent / f"{PARTIAL_PREFIX}{secrets.token_hex(6)}"
            # 0o666 before the umask, as for any new file (mkstemp would make it 0o600).
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            partials[path] = partial
            with os.fdopen(descriptor, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())  # a full disk may only say so here, not at write()
        for path in list(partials):
            os.replace(partials.pop(path), path)
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {os_error_cause(error)}{hint}") from error
    finally:
        for partial in partials.values():
            try:
                os.remove(partial)
            except OSError:
                pass  # the folder refuses even that: nothing more to do


def torch_save(obj: Any, file: IO[bytes]) -> None:
    """``torch.save(obj, file)`` that fails with the file's own ``OSError`` (its errno says
    why: disk full, read-only), where torch's zip writer reports a failed write as a
    ``RuntimeError`` about stream positions."""
    failures: list[OSError] = []

    class Recording:
        def write(self, data: bytes) -> int:
            try:
                return file.write(data)
            except OSError as error:
                failures.append(error)
                raise

        def flush(self) -> None:
            file.flush()

    try:
        torch.save(obj, Recording())
    except RuntimeError:
        if failures:
            raise failures[0] from None
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with local files written by ``write_atomically``.

    Every checkpoint the trainer writes goes through it (``last.ckpt``, the best, the
    interrupted ``last.ckpt`` of a SIGTERM or Ctrl-C, SLURM's ``hpc_ckpt_*.ckpt``); a failed
    write ends the run with one ``OutputError`` and leaves earlier checkpoints intact.
    Remote paths (``s3://``...) and ``storage_options`` go to Lightning's save unchanged.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        hint = (
            "; no file was written under that name and earlier checkpoints are unchanged. "
            "Free space, or write the run elsewhere (--trainer.default_root_dir)"
        )
        write_atomically({path: lambda file: torch_save(checkpoint, file)}, "checkpoint", hint)


def use_atomic_checkpoint_io(strategy: Strategy) -> bool:
    """Gives ``strategy`` an ``AtomicCheckpointIO`` if it has Lightning's default one.

    A checkpoint plugin of the user's own (any other class) is left in place.

    Returns:
        Whether it was installed.
    """
    if type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True


def load_torch_file(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load`` of a local file on the CPU (weights only), or one message saying why not.

    Args:
        path: The file.
        mmap: Memory-map the tensors (zip files only) instead of reading them: for a look
            at the small entries of a large checkpoint.

    Raises:
        ConfigError: The path is missing or a folder, the file cannot be read, is truncated
            or corrupt, or holds objects a weights-only load refuses. The message begins
            with the path, so callers may prefix the option that named it.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path)
        )
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EIO):
            raise _unreadable(path, error) from error  # torch's seek past a short file: EINVAL
        raise ConfigError(f"{path} cannot be read: {os_error_cause(error)}") from error
    except pickle.UnpicklingError as error:
        refused = _weights_only_refusal(error)
        if refused is None:
            raise _unreadable(path, error) from error
        raise ConfigError(
            f"{path} holds Python objects that a weights-only torch.load refuses ({refused}); "
            "distill reads only tensors and plain values"
        ) from error
    except Exception as error:
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: Exception) -> ConfigError:
    cause = f"{type(error).__name__} {_first_sentence(str(error))}".strip()
    return ConfigError(
        f"{path} is truncated, corrupt or not a torch.save file ({path.stat().st_size} bytes; "
        f"torch.load: {cause}): a file cut short by a full disk or an interrupted copy cannot "
        "be read; use another copy or checkpoint"
    )


def _weights_only_refusal(error: pickle.UnpicklingError) -> str | None:
    """What torch's weights-only unpickler refused (e.g. ``Unsupported global: ...``), if that
    is the error."""
    text = str(error)
    if "Weights only load failed" not in text:
        return None
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return _first_sentence(line.split("WeightsUnpickler error:", 1)[1])
    return "Weights only load failed"


def _first_sentence(text: str) -> str:
    """The first sentence of a message (torch's run over several lines)."""
    lines = text.strip().splitlines()
    return lines[0].split(". ")[0].strip().rstrip(".") if lines else ""
