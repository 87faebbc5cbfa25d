"""The ``file`` WAL: segment files in a local directory, group commit with one ``fdatasync``
a group (docs/wal.md).

Lock order: ``_trim_lock`` (one TRIM write and segment sweep at a time) is taken by a trimming
thread after it has let go of ``GroupCommitWal._cond``; the two are never held together
(:mod:`streamlib.wal._group`). ``_spares_lock`` (the list of spare files) is a leaf, taken
under ``_trim_lock`` by a sweep and alone by the writer that rolls into a spare; it is held for
no I/O. The writer that holds the turn takes no other lock while it writes.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import NamedTuple

from streamlib.disk import DURABLE, Syncing
from streamlib.errors import NodeLockedError
from streamlib.wal import Capabilities, Recovery, WalEntry
from streamlib.wal._format import (
    HEADER_SIZE,
    end_marker,
    ends_at,
    record_parts,
    record_size,
    scan_run,
)
from streamlib.wal._group import GroupCommitWal, Pending

log = logging.getLogger(__name__)

GiB = 1 << 30
MiB = 1 << 20
_SEGMENT = re.compile(r"(\d{20})\.wal")
_SPARE = re.compile(r"\d{20}\.spare")
_FIRST_READ = 1 << 20
"""Recovery's first read of the last segment: reads double until they reach its end marker."""
_IOV_MAX = 1024
ZERO_AHEAD = 512 << 10
"""How far ahead of its records a small group fills a growing segment with zeros, in the same
write: the syncs of the groups that follow write over blocks already written, data only."""
_ZEROS = memoryview(bytes(ZERO_AHEAD + 4096))
_PAGE = 4096


def _pwrite_all(fd: int, parts: list[bytes | memoryview], offset: int) -> None:
    """``pwritev`` everything at ``offset``, at most IOV_MAX parts a call. A short write (rare:
    a signal, a full disk) writes the rest of that call's parts as one buffer."""
    for first in range(0, len(parts), _IOV_MAX):
        chunk = parts[first:first + _IOV_MAX] if len(parts) > _IOV_MAX else parts
        size = sum(map(len, chunk))
        written = os.pwritev(fd, chunk, offset)
        if written < size:
            rest = memoryview(b"".join(chunk))[written:]
            at = offset + written
            while rest:
                done = os.pwrite(fd, rest, at)
                rest, at = rest[done:], at + done
        offset += size


class _Scanned(NamedTuple):
    """What recovery found in one segment file."""

    entries: list[WalEntry]
    valid: int
    """File offset where its valid records end."""
    size: int
    """The file's size."""
    ended: bool
    """The records end at an end marker (or exactly at the file's end): no torn tail."""


class FileWal(GroupCommitWal):
    """A directory of segment files ``<start position>.wal``, a ``LOCK`` and a ``TRIM`` file.

    ``capacity`` bounds the bytes between the trim position and the end (back-pressure past
    it); ``segment_bytes`` is the roll size; ``group_bytes`` bounds one write + fdatasync;
    ``linger`` (seconds) lets a group wait for more appends; ``full_timeout`` (seconds) is how
    long an append waits for room by default; ``spares`` is how many wholly trimmed segment
    files are kept to be written over (their blocks written before, a sync of a write into them
    is of data only, where a sync of a growing file also commits its new size)."""

    capabilities = Capabilities(aligned_writes=False, shared_storage=False)

    def __init__(self, path: str | os.PathLike[str], *, capacity: int = 2 * GiB,
                 segment_bytes: int = 64 * MiB, group_bytes: int = 4 * MiB,
                 linger: float = 0.0, full_timeout: float = 30.0, spares: int = 2,
                 syncing: Syncing = DURABLE) -> None:
        super().__init__(capacity=capacity, group_bytes=group_bytes, linger=linger,
                         full_timeout=full_timeout)
        if segment_bytes <= HEADER_SIZE:
            raise ValueError(f"segment_bytes must be above {HEADER_SIZE}: "
                             f"segment_bytes=`{segment_bytes}`")
        if spares < 0:
            raise ValueError(f"spares must not be negative: spares=`{spares}`")
        self.path = os.fspath(path)
        self._segment_bytes = segment_bytes  # these three: fixed
        self._most_spares = spares
        self._sync = syncing
        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise NodeLockedError(f"WAL is locked by another process: path=`{self.path}`") from None
        self._trim = self._read_trim()
        self._trim_lock = threading.Lock()  # one TRIM file write and segment sweep at a time
        # Wholly trimmed segment files kept for reuse, renamed ``<old start>.spare``: added by
        # a sweep (under ``_trim_lock``), taken by the writer that rolls
        self._spares_lock = threading.Lock()  # a leaf: nothing is taken under it
        self._spares: list[str] = self._find_spares()  # GUARDED_BY(_spares_lock)
        # The segment being appended to: these four are recovery's, then the turn's (the writer
        # that holds it; see streamlib.wal._group), alone (close releases them after the last
        # writer gave the turn back). ``_trimmed`` reads ``_segment_start`` alone: it only
        # grows, so a stale value keeps more segments, not fewer.
        self._fd = -1
        self._segment_start = 0
        self._used = 0  # bytes of records in it: the next group is written at this offset
        self._written = 0  # how far its blocks have been written (records, marker, zeros)

    # ---- files ----

    def _segments(self) -> list[tuple[int, str]]:
        found = []
        for name in os.listdir(self.path):
            match = _SEGMENT.fullmatch(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.path, name)))
        return sorted(found)

    def _find_spares(self) -> list[str]:
        """The spare files a previous run left, as many as may be kept; the others deleted
        (and those of another ``segment_bytes``: writing over them would change their size)."""
        kept: list[str] = []
        for name in sorted(os.listdir(self.path)):
            if not _SPARE.fullmatch(name):
                continue
            path = os.path.join(self.path, name)
            if len(kept) < self._most_spares and os.path.getsize(path) == self._segment_bytes:
                kept.append(path)
            else:
                os.unlink(path)
        return kept

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
            self._sync.file(f.fileno())
        os.replace(tmp, os.path.join(self.path, "TRIM"))
        self._sync.directory(self.path)

    def _open_segment(self, start: int, used: int) -> None:
        """Write from now on into the existing segment ``start``, whose records end at file
        offset ``used``."""
        self._close_segment()
        self._fd = os.open(os.path.join(self.path, f"{start:020d}.wal"), os.O_WRONLY)
        self._segment_start = start
        self._used = used
        self._written = os.fstat(self._fd).st_size

    def _new_segment(self, start: int) -> None:
        """Start the segment ``start``: a spare file renamed, or a new one. Its name is durable
        before any of its records is written (and so acknowledged)."""
        self._close_segment()
        path = os.path.join(self.path, f"{start:020d}.wal")
        with self._spares_lock:
            spare = self._spares.pop() if self._spares else None
        if spare is not None:
            os.rename(spare, path)
            self._fd = os.open(path, os.O_WRONLY)
            self._written = self._segment_bytes
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._written = 0
        # An end marker at its start, so that a crash before its first group leaves an empty
        # segment, not a torn tail the size of a spare (not synced: the first group's sync is
        # the one that matters, and a lost marker only makes the report longer).
        os.pwrite(self._fd, end_marker(start, start), 0)
        self._sync.directory(self.path)
        self._segment_start = start
        self._used = 0

    def _close_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1  # if an open fails next, close() must not close a reused number

    # ---- recovery ----

    def _scan(self, recovery: Recovery) -> Iterator[WalEntry]:
        segments = self._segments()
        end = self._trim
        last: tuple[int, _Scanned] | None = None
        for index, (start, path) in enumerate(segments):
            following = segments[index + 1][0] if index + 1 < len(segments) else None
            if following is not None and following <= self._trim:
                continue  # wholly trimmed; its deletion was interrupted
            # The segment holding the trim position is read from there (a record's start: the
            # WAL is trimmed at positions it gave), not from its first record.
            skip = max(self._trim - start, 0)
            scanned = self._scan_segment(path, start, skip, following, recovery)
            for entry in scanned.entries:
                if entry.position >= max(self._trim, end):
                    end = entry.position + record_size(entry.record)
                    yield entry
            if following is not None:
                if start + scanned.valid < following:
                    reason = ("missing WAL data between segments" if scanned.ended else
                              "damaged end of a segment")
                    recovery.drop(max(start + scanned.valid, self._trim), following, reason)
            else:
                last = start, scanned
        recovery.end = max(end, self._trim)
        if last is None:
            self._new_segment(recovery.end)
            return
        start, scanned = last
        if not scanned.ended:
            recovery.drop(start + scanned.valid, start + scanned.size,
                          "torn tail (never acknowledged)")
            self._clear_tail(os.path.join(self.path, f"{start:020d}.wal"), scanned.valid)
        recovery.end = max(recovery.end, start + scanned.valid)
        if start + scanned.valid == recovery.end:
            self._open_segment(start, scanned.valid)
        else:  # its records end before the trim position
            self._new_segment(recovery.end)

    def _scan_segment(self, path: str, start: int, skip: int, following: int | None,
                      recovery: Recovery) -> _Scanned:
        """The records of one segment from file offset ``skip``. A segment with a next one is
        read up to where that one starts (and its end marker there); the last one up to its
        end marker, in reads that double until they reach it or the file's end — so a reopen
        reads what the WAL holds, not the preallocated rest of the file."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            skip = min(skip, size)
            if following is not None:
                stop = min(size, following - start + HEADER_SIZE)
                want = stop - skip
            else:
                stop = size
                want = min(stop - skip, _FIRST_READ)
            while True:
                f.seek(skip)
                data = f.read(want)
                whole = skip + len(data) >= stop
                # a read short of the end may cut a record: its damage is only reported when
                # the read that is kept saw it
                found = recovery if whole else Recovery(_nothing, start)
                entries, valid = scan_run(data, start + skip, found, last=following is None,
                                          groups_from=start, ends=True)
                ended = ends_at(data, valid, start + skip + valid)
                if ended or whole:
                    if found is not recovery:
                        recovery.dropped.extend(found.dropped)
                    break
                want *= 2
        if following is not None:  # what lies past the next segment's start is not this one's
            limit = following - start
            entries = [e for e in entries if e.position + record_size(e.record) <= following]
            valid = min(skip + valid, limit)
        else:
            valid += skip
        return _Scanned(entries, valid, size, ended or valid == size)

    def _clear_tail(self, path: str, valid: int) -> None:
        """Cut a torn tail off before the first new append: what a torn group left must not
        come back after records written later at its positions."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, valid)
            self._sync.file(fd)
        finally:
            os.close(fd)

    # ---- writing ----

    def _write_group(self, group: list[Pending], start: int) -> tuple[list[int], int]:
        size = sum(item.size for item in group)
        if self._used and self._used + size + HEADER_SIZE > self._segment_bytes:
            self._new_segment(start)
        parts: list[bytes | memoryview] = []
        positions = []
        position = start
        for item in group:
            parts.extend(record_parts(position, item.record, start))
            positions.append(position)
            position += item.size
        parts.append(end_marker(position, start))  # overwritten by the next group
        end = self._used + size + HEADER_SIZE
        if end > self._written:
            self._written = end
            if size < ZERO_AHEAD // 4 and end < self._segment_bytes:
                # A small group growing the file: zeros ahead, so the next syncs are of data
                # only (a growing file's sync also commits its size). Big groups just grow it.
                ahead = min(-(-(end + ZERO_AHEAD) // _PAGE) * _PAGE, self._segment_bytes)
                parts.append(_ZEROS[:ahead - end])
                self._written = ahead
        _pwrite_all(self._fd, parts, self._used)
        self._sync.data(self._fd)
        self._used += size
        return positions, position

    # ---- trim and close ----

    def _trimmed(self, position: int) -> None:
        with self._trim_lock:
            position = max(position, self._trim)  # a later trim may have overtaken this one
            self._write_trim(position)
            segments = self._segments()
            for (start, path), (following, _) in itertools.pairwise(segments):
                if following <= position and following <= self._segment_start:
                    self._retire(start, path)

    def _retire(self, start: int, path: str) -> None:
        """A wholly trimmed segment: kept as a spare if there is room (filled out with zeros to
        ``segment_bytes``, so that every block of it has been written once), else deleted. The
        rename needs no directory sync: if a crash loses it, the old name is a wholly trimmed
        segment again."""
        with self._spares_lock:
            keep = len(self._spares) < self._most_spares
        if keep and os.path.getsize(path) <= self._segment_bytes:
            fd = os.open(path, os.O_WRONLY)
            try:
                size = os.fstat(fd).st_size
                if size < self._segment_bytes:
                    os.pwrite(fd, bytes(self._segment_bytes - size), size)
                    self._sync.data(fd)
            finally:
                os.close(fd)
            spare = os.path.join(self.path, f"{start:020d}.spare")
            os.rename(path, spare)
            with self._spares_lock:
                self._spares.append(spare)
        else:
            os.unlink(path)

    def _release(self) -> None:
        self._close_segment()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def _nothing(_recovery: Recovery) -> Iterator[WalEntry]:
    return iter(())
