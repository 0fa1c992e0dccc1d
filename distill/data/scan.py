"""Checks every image of a split in parallel, caching each result by (path, size, mtime).

The cache is one gzipped JSON file per split in a user cache folder, never in the data
folder: a second setup of an unchanged split only ``stat``s its files. A cache that cannot
be read or written is skipped with a debug message.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from distill.data.images import check_image

log = logging.getLogger(__name__)

CheckLevel = Literal["header", "decode"]
#: A decode check also answers a header check; a failure answers both.
_DEPTH = {"header": 1, "decode": 2}
_CHUNK = 256
CACHE_VERSION = 1


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/distill/image-scan``, ``~/.cache/distill/image-scan`` by default."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "distill", "image-scan")


def _cache_path(root: str, cache_dir: str) -> str:
    digest = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"{digest}.json.gz")


def _read_cache(path: str, root: str) -> dict[str, list]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            content = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.debug("image check cache %s unreadable, ignored: %s", path, error)
        return {}
    if content.get("version") != CACHE_VERSION or content.get("root") != os.path.realpath(root):
        return {}
    return content["files"]


def _write_cache(path: str, root: str, files: dict[str, list]) -> None:
    content = {"version": CACHE_VERSION, "root": os.path.realpath(root), "files": files}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Written aside then renamed, so DDP ranks scanning together never read half a file.
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(handle, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as file:
            json.dump(content, file, separators=(",", ":"))
        os.replace(temporary, path)
    except OSError as error:
        log.debug("image check cache %s not written, continuing without: %s", path, error)


def find_bad_images(
    root: str,
    paths: Sequence[str],
    level: CheckLevel = "header",
    cache_dir: str | None = None,
    threads: int | None = None,
) -> dict[str, str]:
    """Checks the image files ``paths`` of the split ``root`` with ``check_image``.

    Args:
        root: The split folder (names the cache file; paths are cached relative to it).
        paths: Image files under ``root``.
        level: "header" (cheap, see ``check_image``) or "decode" (decode every file).
        cache_dir: Folder of the cache files; ``None``: ``default_cache_dir()``.
        threads: Checking threads; ``None``: the number of CPUs, at most 8.

    Returns:
        ``{path: reason}`` for every file that cannot become a training image.
    """
    start = time.perf_counter()
    cache_file = _cache_path(root, cache_dir or default_cache_dir())
    cached = _read_cache(cache_file, root)
    depth = _DEPTH[level]

    def check(chunk: Sequence[str]) -> list[tuple[str, str, list, bool]]:
        results = []
        for path in chunk:
            key = os.path.relpath(path, root)
            stat = os.stat(path)
            entry = cached.get(key)
            reused = (
                entry is not None
                and entry[:2] == [stat.st_size, stat.st_mtime_ns]
                and (entry[3] is not None or entry[2] >= depth)
            )
            if not reused:
                reason = check_image(path, decode=level == "decode")
                entry = [stat.st_size, stat.st_mtime_ns, depth, reason]
            results.append((path, key, entry, reused))
        return results

    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        results = [item for result in pool.map(check, chunks) for item in result]
    files = {key: entry for _, key, entry, _ in results}
    if files != cached:
        _write_cache(cache_file, root, files)
    bad = {path: entry[3] for path, _, entry, _ in results if entry[3] is not None}
    log.info(
        "checked %d images in %s (%s, %d from cache): %d bad, %.1fs",
        len(results), root, level, sum(item[3] for item in results), len(bad),
        time.perf_counter() - start,
    )  # fmt: skip
    return bad
