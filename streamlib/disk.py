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
