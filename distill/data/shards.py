"""Streaming shards of an ImageFolder split: what ``distill stream-convert`` writes and
``StreamingDataModule`` reads, through Lightning's ``litdata`` (the ``stream`` extra).

A shard folder is litdata's ``index.json`` and ``chunk-*.bin`` files, whose samples are
``{"image": the file's bytes as on disk, "target": class, "index": row}``, plus distill's
``distill.json``: the split's classes, its size, the rows in shard order and the labels in
row order (what k-NN, linear probes and CRD ask of a training set without reading it).
A row is the sample's index in ``ImageFolderDataModule`` on the same folder, so the
sample with index ``i`` has the folder's sample ``i``'s views for the same (seed, epoch,
index); the shards hold the samples in a random order (``write_shards``).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import tempfile
from types import ModuleType

import numpy as np
from PIL import Image

from distill.data.folder import SHOWN, ImageFolderSplit, split_images
from distill.data.images import to_rgb
from distill.data.scan import find_bad_images
from distill.data.tree import class_folders
from distill.errors import ConfigError

#: distill's description of a shard folder, beside litdata's ``index.json``.
SIDECAR = "distill.json"
#: litdata's index of the chunks.
INDEX = "index.json"
#: The version of the sample layout written to ``distill.json``.
FORMAT = 1
#: How to install the extra; the one line every message about a missing litdata gives.
INSTALL = "pip install -e '.[stream]'"
#: Location prefixes litdata reads from remote storage (``litdata.streaming.resolver``).
REMOTE_PREFIXES = ("s3://", "gs://", "r2://", "azure://", "hf://", "local:")


def require_litdata(user: str) -> ModuleType:
    """The ``litdata`` module, or one ``ConfigError`` naming ``user`` and the install line."""
    try:
        import litdata
    except ImportError as error:
        raise ConfigError(
            f"{user} needs Lightning's litdata, which is not installed: {INSTALL} "
            f"(the 'stream' extra) ({error})"
        ) from error
    return litdata


def is_remote(location: str) -> bool:
    """Whether litdata reads ``location`` from remote storage (``s3://bucket/train``)."""
    return location.startswith(REMOTE_PREFIXES)


def join(root: str, location: str) -> str:
    """``location`` under ``root``, unless it is absolute or remote itself."""
    if is_remote(location) or os.path.isabs(location):
        return location
    return f"{root.rstrip('/')}/{location}" if is_remote(root) else os.path.join(root, location)


def decode(data: bytes, location: str, index: int) -> Image.Image:
    """A sample's image bytes as the RGB image ``ImageFolderDataModule`` would open.

    Raises:
        ConfigError: The bytes do not decode (naming the shard folder and the row).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            return to_rgb(image)
    except Exception as error:
        raise ConfigError(
            f"cannot decode the image of row {index} of the shards {location!r} "
            f"({type(error).__name__}: {error}); convert the split again with distill "
            f"stream-convert --verify_images decode"
        ) from error


def read_sidecar(location: str, key: str, cache_dir: str | None = None) -> dict:
    """The ``distill.json`` of the shard folder ``location`` (a folder or a remote URL).

    Args:
        location: The shard folder, as ``StreamingDataModule`` was given it.
        key: The configuration key naming it, for error messages.
        cache_dir: Where a remote ``distill.json`` is downloaded (``None``: a temporary folder).

    Raises:
        ConfigError: The folder is missing, is not a shard folder, or was written by another
            version of the format.
    """
    if is_remote(location):
        from litdata.streaming.downloader import get_downloader

        folder = tempfile.mkdtemp(prefix="distill-shards-", dir=cache_dir)
        local = os.path.join(folder, SIDECAR)
        try:
            get_downloader(location, folder, []).download_file(f"{location}/{SIDECAR}", local)
        except Exception as error:  # each storage's client raises its own errors
            raise ConfigError(
                f"{key}: cannot read {location}/{SIDECAR} ({type(error).__name__}: {error}); "
                f"point it at shards written by distill stream-convert"
            ) from error
    else:
        local = os.path.join(location, SIDECAR)
        if not os.path.isdir(location):
            raise ConfigError(
                f"{key}: folder {location!r} does not exist (working directory "
                f"{os.getcwd()!r}). Write it with: distill stream-convert --root <ImageFolder "
                f"root> --split <split> --output {location}"
            )
        if not (os.path.isfile(local) and os.path.isfile(os.path.join(location, INDEX))):
            raise ConfigError(
                f"{key}: {location!r} holds no streaming shards ({SIDECAR} and {INDEX}); write "
                f"them with: distill stream-convert --root <ImageFolder root> --split <split> "
                f"--output {location}"
            )
    with open(local) as file:
        info = json.load(file)
    if info.get("format") != FORMAT:
        raise ConfigError(
            f"{key}: {location!r} has shards of format {info.get('format')!r}; this distill "
            f"reads format {FORMAT}: convert the split again with distill stream-convert"
        )
    return info


def _sample(item: tuple[str, int, int]) -> dict:
    """litdata's sample of one listed image (module level: optimize's workers import it)."""
    path, target, index = item
    with open(path, "rb") as file:
        return {"image": file.read(), "target": target, "index": index}


def list_split(split_dir: str, key: str, verify_images: str = "header") -> ImageFolderSplit:
    """The samples of the ImageFolder split ``split_dir`` in ``ImageFolderDataModule``'s order,
    checked as it checks them (``verify_images``: "header", "decode" or "off").

    Raises:
        ConfigError: The folder is missing, has no class folder, holds links that cannot be
            followed or files that cannot be read (named), or an empty class.
    """
    if not os.path.isdir(split_dir):
        raise ConfigError(
            f"{key}: folder {split_dir!r} does not exist (working directory {os.getcwd()!r}). "
            f"Point --root at a folder holding the split's <class>/<image> tree."
        )
    classes, broken = class_folders(split_dir)
    listed, unlisted = split_images(split_dir, classes)
    broken.update(unlisted)
    if broken:
        names = "; ".join(f"{path!r} {reason}" for path, reason in list(broken.items())[:SHOWN])
        raise ConfigError(
            f"{key}: {len(broken)} link(s) in {split_dir!r} cannot be followed: {names}. "
            f"Remove or repair them."
        )
    if not classes:
        raise ConfigError(f"{key}: {split_dir!r} has no class folder; expected <class>/<image>")
    split = ImageFolderSplit(split_dir, key, listed)
    if verify_images != "off":
        paths = [path for path, _ in split.samples]
        bad = find_bad_images(split_dir, paths, verify_images)
        if bad:
            names = "; ".join(f"{path!r} ({reason})" for path, reason in list(bad.items())[:SHOWN])
            raise ConfigError(
                f"{key}: {len(bad)} image file(s) cannot be read (--verify_images "
                f"{verify_images}): {names}. Re-encode or remove them."
            )
    return split


def write_shards(
    split: ImageFolderSplit, output: str, chunk_bytes: str, num_workers: int, seed: int
) -> dict:
    """Writes the samples of ``split`` as litdata shards and ``distill.json`` into the empty
    folder ``output`` and returns what ``distill.json`` holds.

    The samples are written in a random order (a permutation drawn from ``seed``): litdata
    shuffles shard files and blocks of samples within a file, so shards in the split's
    class-sorted order would give batches of one or two classes. Each sample keeps its row
    in the split (``index``); ``distill.json`` lists the rows in shard order (``rows``)
    and the targets in row order. Each optimize worker writes its own slice of the order
    (``keep_data_ordered``), and litdata's index lists the chunks worker by worker, so the
    shards hold the samples in that order.
    """
    litdata = require_litdata("distill stream-convert")
    order = np.random.default_rng(seed).permutation(len(split.samples)).tolist()
    items = [(split.samples[row][0], split.samples[row][1], row) for row in order]
    # fork: the workers only read files, and need not import torch again as spawned ones do.
    start = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    litdata.optimize(
        fn=_sample,
        inputs=items,
        output_dir=output,
        chunk_bytes=chunk_bytes,
        num_workers=num_workers,
        reorder_files=False,
        keep_data_ordered=True,
        start_method=start,
        verbose=False,
    )
    info = {
        "format": FORMAT,
        "source": os.path.abspath(split.root),
        "classes": list(split.classes),
        "num_samples": len(items),
        "seed": seed,
        "rows": order,
        "targets": [target for _, target in split.samples],
    }
    with open(os.path.join(output, SIDECAR), "w") as file:
        json.dump(info, file)
    return info
