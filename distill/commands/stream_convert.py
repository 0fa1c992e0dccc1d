"""``distill stream-convert``: an ImageFolder split as streaming shards for ``StreamingDataModule``.

    distill stream-convert --root ../shared/data/cifar10-5k --split train \\
        --output data/cifar10-5k-shards/train

The shards are written into a new folder beside ``--output`` and renamed into place when
complete, so an interrupted or failed conversion leaves nothing under that name, and an
earlier conversion there stays whole until the new one replaces it (``--overwrite true``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Literal

from distill.data.shards import (
    INDEX,
    SIDECAR,
    is_remote,
    list_split,
    require_litdata,
    write_shards,
)
from distill.errors import ConfigError

#: The files a shard folder holds: what ``--overwrite true`` may replace.
SHARD_FILE = re.compile(rf"^(chunk-\d+-\d+\.bin|{re.escape(INDEX)}|{re.escape(SIDECAR)})$")


def check_output(output: str, split_dir: str, overwrite: bool) -> None:
    """Raises unless the shards may be written to ``output``.

    A missing or empty folder may; one holding an earlier conversion only with
    ``overwrite``; one holding anything else never (nothing that is not a shard is deleted),
    nor a file, a remote URL, or a folder inside the split being converted.
    """
    if is_remote(output):
        raise ConfigError(
            f"--output {output}: write the shards to a local folder, then copy that folder to "
            f"your storage (e.g. aws s3 sync); StreamingDataModule reads them from there"
        )
    real = os.path.realpath(output)
    if real == os.path.realpath(split_dir) or real.startswith(os.path.realpath(split_dir) + os.sep):
        raise ConfigError(
            f"--output {output} is inside the split {split_dir!r}, where it would become a "
            f"class folder; choose a folder outside it"
        )
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output {output} is a file; give a folder for the shards")
    entries = sorted(os.listdir(output)) if os.path.isdir(output) else []
    if not entries:
        return
    others = [name for name in entries if not SHARD_FILE.match(name)]
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ConfigError(
            f"--output {output} is not empty and holds files that are not streaming shards "
            f"({shown}); they are never replaced, even with --overwrite true. Choose a new "
            f"folder"
        )
    if not overwrite:
        raise ConfigError(
            f"--output {output} already holds streaming shards ({len(entries)} files); choose "
            f"a new folder, or replace them with --overwrite true"
        )


def stream_convert(
    root: str,
    split: str,
    output: str,
    chunk_bytes: str = "64MB",
    num_workers: int = 1,
    verify_images: Literal["header", "decode", "off"] = "header",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Converts an ImageFolder split into streaming shards (litdata) for StreamingDataModule.

    Every sample keeps the image file's bytes as they are (PNG, JPEG: no re-encoding), its
    class and its row in the split; rows and classes are ImageFolderDataModule's, so the
    sample with index i is the folder's sample i, with the same views. The shards hold the
    samples in a random order (litdata shuffles files and blocks within a file, so a
    class-sorted layout would give batches of one or two classes).

    Args:
        root: The ImageFolder root holding the split (``<root>/<split>/<class>/<image>``).
        split: The split folder under root (train, val).
        output: New or empty local folder for the shards (copy it to s3://, gs://... after).
        chunk_bytes: Size of a shard file (litdata's chunk_bytes, e.g. 64MB).
        num_workers: Processes writing shards.
        verify_images: Check of every file before converting: header (cheap), decode, off.
        seed: Seed of the order the samples are written in.
        overwrite: Replace shards an earlier stream-convert wrote at output (nothing else).

    Returns:
        The shard folder.
    """
    require_litdata("distill stream-convert")  # before the split is listed and checked
    if num_workers < 1:
        raise ConfigError(f"--num_workers {num_workers}; valid: an integer >= 1")
    split_dir = os.path.join(root, split)
    check_output(output, split_dir, overwrite)
    samples = list_split(split_dir, f"--root {root} --split {split}", verify_images)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.abspath(output))
    # Made with os.mkdir, not mkdtemp: the shard folder gets the umask's permissions.
    partial = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")
    os.mkdir(partial)
    try:
        info = write_shards(samples, partial, chunk_bytes, num_workers, seed)
        if os.path.isdir(output):  # empty, or the earlier shards --overwrite replaces
            earlier = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=parent)
            os.rename(output, os.path.join(earlier, name))
            os.rename(partial, output)
            shutil.rmtree(earlier)
        else:
            os.rename(partial, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    chunks = sum(1 for entry in os.listdir(output) if entry.endswith(".bin"))
    print(
        f"wrote {info['num_samples']} images of {len(info['classes'])} classes from "
        f"{split_dir} to {output} ({chunks} shard file(s)); read them with "
        f"distill.data.StreamingDataModule"
    )
    return Path(output)
