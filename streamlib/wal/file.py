"""The ``file`` WAL: segment files in a local directory, group commit with one ``fdatasync``
a group (docs/wal.md).

Lock order: ``_trim_lock`` (one TRIM write and segment sweep at a time) is a leaf, taken by a
trimming thread after it has let go of ``GroupCommitWal._cond``; the two are never held together
(:mod:`streamlib.wal._group`). The writer that holds the turn takes neither while it writes.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import threading
from collections.abc import Iterator

from streamlib.disk import fsync_dir
from streamlib.errors import NodeLockedError
from streamlib.wal import Capabilities, Recovery, WalEntry
from streamlib.wal._format import record_parts, record_size, scan_run
from streamlib.wal._group import GroupCommitWal, Pending

log = logging.getLogger("streamlib.wal")

GiB = 1 << 30
MiB = 1 << 20
_SEGMENT = re.compile(r"(\d{20})\.wal")
_IOV_MAX = 1024


def _write_all(fd: int, parts: list[bytes]) -> None:
    """``writev`` everything, however the kernel splits it (at most IOV_MAX parts a call)."""
    if len(parts) <= _IOV_MAX:  # most often one call writes it all: no views to make
        written = os.writev(fd, parts)
        total = sum(map(len, parts))
        if written == total:
            return
        parts = [b"".join(parts)[written:]]
    views = [memoryview(p) for p in parts if len(p)]
    first = 0  # views before it are written
    while first < len(views):
        written = os.writev(fd, views[first:first + _IOV_MAX])
        while written:
            if written >= len(views[first]):
                written -= len(views[first])
                first += 1
            else:
                views[first] = views[first][written:]
                written = 0


class FileWal(GroupCommitWal):
    """A directory of segment files ``<start position>.wal``, a ``LOCK`` and a ``TRIM`` file.

    ``capacity`` bounds the bytes between the trim position and the end (back-pressure past
    it); ``segment_bytes`` is the roll size; ``group_bytes`` bounds one write + fdatasync;
    ``linger`` (seconds) lets a group wait for more appends; ``full_timeout`` (seconds) is how
    long an append waits for room by default."""

    capabilities = Capabilities(aligned_writes=False, shared_storage=False)

    def __init__(self, path: str | os.PathLike[str], *, capacity: int = 2 * GiB,
                 segment_bytes: int = 64 * MiB, group_bytes: int = 4 * MiB,
                 linger: float = 0.0, full_timeout: float = 30.0) -> None:
        super().__init__(capacity=capacity, group_bytes=group_bytes, linger=linger,
                         full_timeout=full_timeout)
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive: segment_bytes=`{segment_bytes}`")
        self.path = os.fspath(path)
        self._segment_bytes = segment_bytes
        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise NodeLockedError(f"WAL is locked by another process: path=`{self.path}`") from None
        self._trim = self._read_trim()
        self._trim_lock = threading.Lock()  # one TRIM file write and segment sweep at a time
        # The segment being appended to: these three are recovery's, then the turn's (the writer
        # that holds it; see streamlib.wal._group), alone (close releases them after the last
        # writer gave the turn back). ``_trimmed`` reads
        # ``_segment_start`` alone: it only grows, so a stale value keeps more segments, not fewer.
        self._fd = -1
        self._segment_start = 0
        self._segment_size = 0

    # ---- files ----

    def _segments(self) -> list[tuple[int, str]]:
        found = []
        for name in os.listdir(self.path):
            match = _SEGMENT.fullmatch(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.path, name)))
        return sorted(found)

    def _read_trim(self) -> int:
        try:
            with open(os.path.join(self.path, "TRIM")) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            log.error("WAL TRIM file unreadable, recovering from the first segment: path=`%s`",
                      self.path)
            return 0

    def _write_trim(self, position: int) -> None:
        tmp = os.path.join(self.path, "TRIM.tmp")
        with open(tmp, "w") as f:
            f.write(str(position))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.path, "TRIM"))
        fsync_dir(self.path)

    def _open_segment(self, start: int, *, create: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1  # if the open below fails, close() must not close a reused number
        path = os.path.join(self.path, f"{start:020d}.wal")
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0)
        self._fd = os.open(path, flags, 0o644)
        if create:
            fsync_dir(self.path)  # the new name must be durable before its records are acked
        self._segment_start = start
        self._segment_size = os.fstat(self._fd).st_size

    # ---- recovery ----

    def _scan(self, recovery: Recovery) -> Iterator[WalEntry]:
        segments = self._segments()
        expected: int | None = None  # where the next segment should start
        end = self._trim
        last_index = len(segments) - 1
        for index, (start, path) in enumerate(segments):
            following = segments[index + 1][0] if index < last_index else None
            if following is not None and following <= self._trim:
                continue  # wholly trimmed; its deletion was interrupted
            if expected is not None and start != expected:
                reason = "missing WAL data between segments" if start > expected else \
                    "overlapping WAL segments"
                recovery.drop(min(start, expected), max(start, expected), reason)
            # The segment holding the trim position is read from there (a record's start: the
            # WAL is trimmed at positions it gave), not from its first record.
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                skip = min(max(self._trim - start, 0), size)
                f.seek(skip)
                data = f.read()
            entries, valid = scan_run(data, start + skip, recovery, last=index == last_index,
                                      groups_from=start)
            valid += skip
            for entry in entries:
                if entry.position >= max(self._trim, end):
                    end = entry.position + record_size(entry.record)
                    yield entry
            if valid < size:
                if index == last_index:
                    recovery.drop(start + valid, start + size, "torn tail (never acknowledged)")
                    self._truncate(path, valid)
                else:
                    recovery.drop(start + valid, start + size, "damaged end of a segment")
            if index == last_index:
                end = max(end, start + valid)
            expected = start + size
        recovery.end = max(end, self._trim)
        if segments and segments[-1][0] <= recovery.end:
            self._open_segment(segments[-1][0], create=False)
            if self._segment_start + self._segment_size != recovery.end:
                self._open_segment(recovery.end, create=True)
        else:
            self._open_segment(recovery.end, create=True)

    def _truncate(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- writing ----

    def _write_group(self, group: list[Pending], start: int) -> tuple[list[int], int]:
        size = sum(item.size for item in group)
        if self._segment_size and self._segment_size + size > self._segment_bytes:
            self._open_segment(start, create=True)
        parts: list[bytes] = []
        positions = []
        position = start
        for item in group:
            parts.extend(record_parts(position, item.record, start))
            positions.append(position)
            position += item.size
        _write_all(self._fd, parts)
        os.fdatasync(self._fd)
        self._segment_size += size
        return positions, position

    # ---- trim and close ----

    def _trimmed(self, position: int) -> None:
        with self._trim_lock:
            position = max(position, self._trim)  # a later trim may have overtaken this one
            self._write_trim(position)
            segments = self._segments()
            for (_start, path), (following, _) in itertools.pairwise(segments):
                if following <= position and following <= self._segment_start:
                    os.unlink(path)

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
