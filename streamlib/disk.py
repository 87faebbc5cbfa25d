"""Local-disk durability: the few system calls every local writer needs in the same careful way
(the file and block WALs, and ``file://`` objects in io.py)."""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (new, renamed or deleted names) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str) -> None:
    """``os.makedirs`` whose new directory entries are on stable storage when it returns."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue  # made by a concurrent writer: its entry is made durable by that writer
        fsync_dir(os.path.dirname(directory))


class Syncing:
    """Whether a local writer makes what it writes durable: :data:`DURABLE` (every ``fsync``
    and ``fdatasync`` made) or :data:`UNSAFE_NO_FSYNC` (none: a process crash loses nothing,
    the page cache keeps it, but a machine crash or power loss loses acknowledged writes — the
    store's ``durability="unsafe-no-fsync"``, for tests). Fixed once made: shared freely."""

    __slots__ = ("durable",)

    def __init__(self, durable: bool) -> None:
        self.durable = durable

    def __repr__(self) -> str:
        return "DURABLE" if self.durable else "UNSAFE_NO_FSYNC"

    def data(self, fd: int) -> None:
        """``fdatasync``: the file's data, and its size if that changed."""
        if self.durable:
            os.fdatasync(fd)

    def file(self, fd: int) -> None:
        """``fsync``: the file's data and all of its metadata."""
        if self.durable:
            os.fsync(fd)

    def directory(self, path: str) -> None:
        """The directory's entries (see :func:`fsync_dir`)."""
        if self.durable:
            fsync_dir(path)

    def makedirs(self, path: str) -> None:
        """The directory and its missing parents (see :func:`makedirs_durable`)."""
        if self.durable:
            makedirs_durable(path)
        else:
            os.makedirs(path, exist_ok=True)


DURABLE = Syncing(True)
UNSAFE_NO_FSYNC = Syncing(False)
