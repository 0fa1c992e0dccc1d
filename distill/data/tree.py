"""Lists an ImageFolder tree: its class folders, their images by real path, and broken links.

torchvision's ImageFolder walks with ``os.walk(followlinks=True)``: a folder link that points
back up the tree (``bird/loop -> .``) lists the same images again at every depth until the
path stops resolving (41 copies of each), and a link to nothing fails in whatever opens it
first. Here every link is resolved once; one that points to nothing, into a loop of links,
or to a folder that holds it is reported instead of followed. A link to a folder elsewhere
(a class folder on another disk) is followed as before. Every image comes with its real
path, so that two paths to one file can be told apart from two files.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension


def link_problem(path: str, enclosing: Iterable[str] = ()) -> str | None:
    """Why the link ``path`` cannot be followed, or ``None`` (also when it is no link).

    Args:
        path: A directory entry.
        enclosing: Real paths of the folders that hold ``path``: a link to one of them is a
            loop.
    """
    try:
        target = os.readlink(path)
    except OSError:
        return None
    try:
        status = os.stat(path)
    except OSError as error:
        if error.errno == errno.ENOENT:
            why = "which does not exist"
        elif error.errno == errno.ELOOP:
            why = "a loop of links that never reaches a file or folder"
        else:
            why = f"which cannot be opened ({error.strerror})"
        return f"-> {target!r}, {why}"
    real = os.path.realpath(path)
    if stat.S_ISDIR(status.st_mode) and real in set(enclosing):
        return (
            f"-> {target!r}, the folder {real!r} that holds the link: following it would list "
            f"the same images again at every depth"
        )
    return None


def _visible_entries(folder: str) -> list[os.DirEntry]:
    """The entries of ``folder`` by name, hidden ones (``.DS_Store``, ``.cache/``) left out."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def class_folders(split: str) -> tuple[list[str], dict[str, str]]:
    """The class folders of ``split`` and its entries that cannot be followed.

    Returns:
        The names of the visible sub-folders (links to folders included), sorted, and
        ``{path: reason}`` of the links among its entries that ``link_problem`` refuses.
    """
    enclosing = {os.path.realpath(split)}
    names, broken = [], {}
    for entry in _visible_entries(split):
        problem = link_problem(entry.path, enclosing) if entry.is_symlink() else None
        if problem is not None:
            broken[entry.path] = problem
        elif entry.is_dir():
            names.append(entry.name)
    return names, broken


def image_files(
    folder: str, enclosing: Iterable[str] = ()
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The images under ``folder`` in torchvision's order, each with its real path.

    Hidden files and folders are left out; links are followed unless ``link_problem``
    refuses them, and those are returned instead, as are folders that cannot be listed.

    Args:
        folder: A class folder.
        enclosing: Real paths of the folders above ``folder`` (the split folder): a link
            back to one of them is a loop too.

    Returns:
        ``(path, real path)`` of every image, sorted by folder then name as torchvision's
        ImageFolder sorts them, and ``{path: reason}`` of the links that cannot be followed
        and the folders that cannot be listed.
    """
    real = os.path.realpath(folder)
    pending = [(folder, real, frozenset(enclosing) | {real})]
    walked: list[tuple[str, list[tuple[str, str]]]] = []
    broken: dict[str, str] = {}
    while pending:
        parent, parent_real, chain = pending.pop()
        files = []
        try:
            entries = _visible_entries(parent)
        except OSError as error:  # os.walk would leave the folder out without a word
            broken[parent] = f"cannot be listed ({error.strerror})"
            continue
        for entry in entries:
            # Not a link: its real path follows from its folder's, without a system call.
            entry_real = os.path.join(parent_real, entry.name)
            if entry.is_symlink():
                problem = link_problem(entry.path, chain)
                if problem is not None:
                    broken[entry.path] = problem
                    continue
                entry_real = os.path.realpath(entry.path)
            if entry.is_dir():
                pending.append((entry.path, entry_real, chain | {entry_real}))
            elif has_file_allowed_extension(entry.name, IMG_EXTENSIONS):
                files.append((entry.path, entry_real))
        walked.append((parent, files))
    return [file for _, files in sorted(walked, key=lambda item: item[0]) for file in files], broken
