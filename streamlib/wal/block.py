"""The ``block`` WAL: a ring on a preallocated file or a raw block device (docs/wal.md).

Two 4 KiB header slots, then the ring. Each group commit is laid out from a 4 KiB-aligned
position, padded to a 4 KiB boundary and written with one ``pwrite`` (two when it wraps), with
``O_DIRECT`` when the file or device accepts it.

Lock order: ``_header_lock`` (one header write at a time; it also guards closing ``_fd``) is a
leaf, taken by the writer that holds the turn (a group about to overwrite bytes whose trim is
not on disk yet) and by trimming threads, never together with ``GroupCommitWal._cond``
(:mod:`streamlib.wal._group`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import secrets
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from streamlib import codec
from streamlib.disk import fsync_dir
from streamlib.errors import ConfigError, CorruptDataError, NodeLockedError
from streamlib.wal import Capabilities, Recovery, WalEntry
from streamlib.wal._format import (
    HEADER_SIZE,
    MAGIC,
    POSITION_LIMIT,
    TYPE_PADDING,
    examine,
    header,
    padding,
    record_parts,
)
from streamlib.wal._group import GroupCommitWal, Pending

log = logging.getLogger(__name__)

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 4 * KiB
"""The alignment of every write: group positions, lengths, buffers."""
RING_START = 2 * BLOCK
"""The ring's first byte in the file: after the two header slots."""
MIN_RING = 64 * KiB
_SCAN_CHUNK = 4 * MiB  # recovery reads the ring in chunks of at least this
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # absent on macOS: buffered writes + fdatasync there

_HEADER_MAGIC = b"SLWH"
_HEADER_VERSION = 1
# version, reserved[3], generation, ring size, trim position, node id, epoch, created (ms)
_HEADER_TAIL = struct.Struct("<B3xQQQQQQ")
_HEADER_END = 12 + _HEADER_TAIL.size  # the checksum covers [12, 64)
_U64 = struct.Struct("<Q")
GENERATION_LIMIT = 1 << 63
"""A header's generation is below it: each header write adds one, and the field has 64 bits,
so a ring can never run out of generations."""


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _padded(size: int) -> int:
    """The length of a group of ``size`` record bytes once padded to a 4 KiB boundary: a gap
    too short for a padding record's header reaches to the boundary after."""
    end = _round_up(size)
    if 0 < end - size < HEADER_SIZE:
        end += BLOCK
    return end


def _check_u64(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be an int in [0, 2^64): {name}=`{value}`")


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """One ``pwrite``, repeated only if the kernel writes less than asked."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _pread_all(fd: int, into: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(into):
        got = os.preadv(fd, [into[done:]], offset + done)
        if got == 0:
            raise CorruptDataError("the ring ends before its header says it does",
                                   position=offset + done, source=path)
        done += got


@dataclass(frozen=True, slots=True)
class RingHeader:
    """One header slot (docs/wal.md): 64 bytes of fields, zero-padded to 4 KiB."""

    generation: int
    ring_size: int
    trim: int
    node_id: int
    epoch: int
    created_ms: int

    @property
    def slot(self) -> int:
        """Generation *g* goes to slot *g* mod 2, so a torn write never hits the current one."""
        return self.generation % 2

    def pack(self) -> bytes:
        tail = _HEADER_TAIL.pack(_HEADER_VERSION, self.generation, self.ring_size, self.trim,
                                 self.node_id, self.epoch, self.created_ms)
        head = _HEADER_MAGIC + _U64.pack(codec.xxh64(tail)) + tail
        return head + bytes(BLOCK - len(head))

    @classmethod
    def unpack(cls, slot: bytes) -> RingHeader | None:
        """The header in ``slot``, or None if the slot is empty, torn or damaged."""
        if len(slot) < _HEADER_END or slot[:4] != _HEADER_MAGIC:
            return None
        if _U64.unpack_from(slot, 4)[0] != codec.xxh64(slot[12:_HEADER_END]):
            return None
        version, *fields = _HEADER_TAIL.unpack_from(slot, 12)
        if version != _HEADER_VERSION:
            return None
        return cls(*fields)


class _Window:
    """Recovery's view of the logical log, read chunk by chunk from the ring.

    ``at(position)`` returns a buffer holding at least ``span`` bytes from ``position`` (the
    longest record there can be), fewer only at ``limit``: the live window ends there, so the
    buffer does too, and a record crossing it cannot pass as valid."""

    def __init__(self, read: Callable[[int, int], bytes], limit: int, span: int) -> None:
        self._read = read
        self._limit = limit
        self._span = span
        self._chunk = _round_up(max(_SCAN_CHUNK, 2 * span))
        self._start = self._end = 0
        self._data = b""

    def at(self, position: int) -> tuple[bytes, int]:
        need = min(self._limit, position + self._span)
        if not self._start <= position or need > self._end:
            self._fill(position, need)
        return self._data, position - self._start

    def _fill(self, position: int, need: int) -> None:
        start = position - position % BLOCK  # reads stay block-aligned (O_DIRECT)
        end = min(self._limit, max(need, start + self._chunk))
        if self._start <= start < self._end and self._end % BLOCK == 0:
            data = self._data[start - self._start:] + self._read(self._end,
                                                                 _round_up(end) - self._end)
        else:
            data = self._read(start, _round_up(end) - start)
        self._data = data[:end - start]
        self._start, self._end = start, end


class BlockWal(GroupCommitWal):
    """A ring of ``size`` bytes after two 4 KiB header slots, in a file or on a block device.

    ``path`` is an existing ring (file or device), a file to create (``size`` required: the
    ring's bytes, a multiple of 4 KiB, at least 64 KiB; the file gets ``size`` + 8 KiB,
    preallocated), or an existing file or device whose two header slots are zero (an empty
    file too), which is formatted with ``size``. Any other file is refused, never formatted
    over: :class:`~streamlib.errors.CorruptDataError` when it holds no valid header slot (or
    one whose fields the ring cannot use), :class:`~streamlib.errors.ConfigError` when it is
    too short to be a ring and not empty. A new ring's positions start at a random 4 KiB-aligned
    value, so the stale records of a ring the space held before never pass for live ones.

    ``group_bytes`` bounds one group write (at most a quarter of the ring); ``linger`` (seconds)
    lets a group wait for more appends; ``full_timeout`` (seconds) is how long an append waits
    for room by default. ``node_id`` and ``epoch`` are written into the header at open.
    ``direct_io``: None uses ``O_DIRECT`` if the file accepts it, True requires it, False
    uses buffered writes and ``fdatasync``; ``direct_io`` (the attribute) says which runs.
    ``persist_trims``: write the header's trim position at every trim (the default: recovery
    starts at the newest trim), or, with False, only when the writer must, before it overwrites
    trimmed space (one header write a lap instead of one a trim; recovery then replays from an
    older trim and skips what is committed)."""

    capabilities = Capabilities(aligned_writes=True, shared_storage=False)

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None,
                 group_bytes: int = 4 * MiB, linger: float = 0.0, full_timeout: float = 30.0,
                 node_id: int = 0, epoch: int = 0, direct_io: bool | None = None,
                 persist_trims: bool = True) -> None:
        self.path = os.fspath(path)
        self.persist_trims = persist_trims
        _check_u64("node_id", node_id)
        _check_u64("epoch", epoch)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size < MIN_RING or size % BLOCK):
            raise ValueError(f"size (the ring's bytes) must be a multiple of {BLOCK} and at "
                             f"least {MIN_RING}: size=`{size}`")
        self.node_id = node_id
        self.epoch = epoch
        self.direct_io = False  # fixed once open, as the ring's sizes and buffers below
        # ``_fd``: the writer that holds the turn writes through it alone (close waits for the
        # turn first); closing it is GUARDED_BY(_header_lock), so a late trim never writes to a
        # closed or reused descriptor.
        self._lock_fd = self._fd = -1
        self._header_lock = threading.Lock()  # one header write at a time; guards _fd's close
        try:
            self._lock_fd = self._open_and_lock(size)
            found = self._read_header(size)
            ring = found.ring_size
            max_record = min(Capabilities().max_record_bytes, ring // 4)
            super().__init__(capacity=ring, group_bytes=min(group_bytes, max_record),
                             linger=linger, full_timeout=full_timeout)
            self.capabilities = Capabilities(aligned_writes=True, shared_storage=False,
                                             max_record_bytes=max_record)
            # Room for the padding a group can add beyond its records: its own tail (less
            # than a block and a record header) and, at the ring's end, the jump to the
            # next lap (less than one padded group).
            self.admission_slack = self._group_bytes + 2 * (BLOCK + HEADER_SIZE)
            self._ring_size = ring
            self._span = max_record + 2 * BLOCK  # the longest record, wrap padding included
            # Page-aligned buffers: the first two the turn's alone, the header's
            # GUARDED_BY(_header_lock) (after the open's own header write).
            self._buffer = mmap.mmap(-1, _padded(self._group_bytes))
            self._wrap_buffer = mmap.mmap(-1, BLOCK)
            self._header_buffer = mmap.mmap(-1, BLOCK)
            self._open_data(direct_io, replace(found, generation=found.generation + 1,
                                               node_id=node_id, epoch=epoch))
        except BaseException:
            self._close_files()
            raise
        # ``_header`` (set by the open's header write) and ``_persisted_trim``, the trim in it:
        # GUARDED_BY(_header_lock). The writer reads ``_persisted_trim`` alone to skip the lock:
        # it only grows, and ``_persist_trim`` looks again under the lock.
        self._trim = self._end = self._persisted_trim = found.trim

    # ---- opening ----

    def _open_and_lock(self, size: int | None) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR)
            created = False
        except FileNotFoundError:
            if size is None:
                raise ValueError(f"a new block WAL needs its ring size: path=`{self.path}` "
                                 f"size=`None`") from None
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeLockedError(f"WAL is locked by another process: path=`{self.path}`") from None
        if created:
            assert size is not None  # a file is created only with its ring size
            try:
                os.posix_fallocate(fd, 0, RING_START + size)
                os.fsync(fd)
                fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            except BaseException:
                os.close(fd)
                os.unlink(self.path)  # no half-made ring left behind (e.g. ENOSPC)
                raise
        return fd

    def _read_header(self, size: int | None) -> RingHeader:
        """The newer valid header slot, or a new header for a file whose slots are zero."""
        fd = self._lock_fd
        length = os.lseek(fd, 0, os.SEEK_END)  # st_size is 0 for a block device
        slots = os.pread(fd, min(length, RING_START), 0)
        found = [RingHeader.unpack(slots[i * BLOCK:(i + 1) * BLOCK]) for i in (0, 1)]
        valid = [h for h in found if h is not None]
        if valid:
            best = max(valid, key=lambda h: h.generation)
            if len(valid) == 1 and slots[(1 - best.slot) * BLOCK:(2 - best.slot) * BLOCK].strip(
                    b"\0"):
                log.warning("WAL header slot %d is damaged or torn; using generation %d: "
                            "path=`%s`", 1 - best.slot, best.generation, self.path)
            self._check_header(best, length)
            if size is not None and size != best.ring_size:
                raise ValueError(f"size does not match the existing ring: path=`{self.path}` "
                                 f"size=`{size}` ring=`{best.ring_size}`")
            return best
        if slots.strip(b"\0"):
            if any(slots[i * BLOCK:i * BLOCK + 4] == _HEADER_MAGIC for i in (0, 1)):
                state = ["empty" if not slots[i * BLOCK:(i + 1) * BLOCK].strip(b"\0")
                         else "damaged" for i in (0, 1)]
                raise CorruptDataError(f"no valid header slot: slot 0 {state[0]}, slot 1 "
                                       f"{state[1]}", source=self.path)
            if length < RING_START:
                # Too short to have been a ring (its file is made whole before its first
                # header), and not empty: someone else's file, not to be formatted over.
                raise ConfigError("wal_path", "not a block WAL, and not empty (no ring header, "
                                  "and too short for one): refusing to format over it",
                                  self.path)
            raise CorruptDataError("no valid header slot: not a block WAL, or both slots "
                                   "damaged", source=self.path)
        if size is None:
            raise ValueError(f"formatting a block WAL needs its ring size: path=`{self.path}` "
                             f"size=`None`")
        if length < RING_START + size:
            if stat.S_ISBLK(os.fstat(fd).st_mode):
                raise ValueError(f"the device is too small for the ring: path=`{self.path}` "
                                 f"size=`{size}` device=`{length}`")
            os.posix_fallocate(fd, 0, RING_START + size)
            os.fsync(fd)
        # A fresh ring starts at a random logical position (4 KiB-aligned, below 2^52): the
        # records of any ring this space held before claim positions the new one never has.
        start = secrets.randbits(40) * BLOCK
        return RingHeader(0, size, start, 0, 0, int(time.time() * 1000))

    def _check_header(self, header: RingHeader, length: int) -> None:
        """Refuse a header whose checksum holds but whose fields this ring cannot use: a ring
        that does not fit the file, a generation with no room for the next header writes, or
        a live window ``[trim, trim + ring size)`` beyond the positions the record format
        holds (docs/wal.md). Such a header was never written by a BlockWal."""
        where = header.slot * BLOCK
        ring = header.ring_size
        if ring < MIN_RING or ring % BLOCK or RING_START + ring > length:
            raise CorruptDataError(f"the header's ring size does not fit the file: ring="
                                   f"`{ring}` file=`{length}`", position=where, source=self.path)
        if header.generation >= GENERATION_LIMIT:
            raise CorruptDataError(f"the header's generation is out of range: generation="
                                   f"`{header.generation}` valid=`[0, 2^63)`", position=where,
                                   source=self.path)
        if header.trim > POSITION_LIMIT - ring:
            raise CorruptDataError(f"the header's trim position is out of range: trim="
                                   f"`{header.trim}` ring=`{ring}` valid=`[0, 2^63 - ring]`",
                                   position=where, source=self.path)

    def _open_data(self, direct_io: bool | None, first: RingHeader) -> None:
        """Open the data descriptor, O_DIRECT if accepted, and write the open's header (which
        doubles as the aligned test write that O_DIRECT needs to prove itself)."""
        if direct_io is not False and _O_DIRECT:
            try:
                # O_DSYNC: O_DIRECT skips the page cache but not the device's write cache, nor
                # the extent changes of a preallocated file; with it, pwrite returns durable.
                self._fd = os.open(self.path, os.O_RDWR | _O_DIRECT | os.O_DSYNC)
                self.direct_io = True
                self._write_header(first)
                self._header = first
                return
            except OSError as e:
                if e.errno != errno.EINVAL or direct_io:
                    raise
                log.info("O_DIRECT not accepted, using buffered writes + fdatasync: path=`%s`",
                         self.path)
                if self._fd >= 0:
                    os.close(self._fd)
                self._fd = -1
        elif direct_io:
            raise ValueError(f"direct_io=True but this platform has no O_DIRECT: "
                             f"path=`{self.path}`")
        self._fd = os.open(self.path, os.O_RDWR)
        self.direct_io = False
        self._write_header(first)
        self._header = first

    def _write_header(self, new: RingHeader) -> None:
        self._header_buffer[:] = new.pack()
        _pwrite_all(self._fd, memoryview(self._header_buffer), new.slot * BLOCK)
        if not self.direct_io:
            os.fdatasync(self._fd)

    # ---- recovery ----

    def _read_ring(self, position: int, length: int) -> bytes:
        """``length`` bytes of the logical log from ``position`` (both block-aligned)."""
        buffer = mmap.mmap(-1, length)  # page-aligned, as O_DIRECT reads need
        view = memoryview(buffer)
        done = 0
        while done < length:
            offset = (position + done) % self._ring_size
            n = min(length - done, self._ring_size - offset)
            _pread_all(self._fd, view[done:done + n], RING_START + offset, self.path)
            done += n
        return bytes(buffer)

    def _scan(self, recovery: Recovery) -> Iterator[WalEntry]:
        """Records are held back a group at a time: a hole inside the *last* group means a
        machine crash tore that group's write, so it was never synced and none of it was
        acknowledged — it is dropped whole. A hole before a later group, or inside a group
        that began before the trim, is damage."""
        limit = self._trim + self._ring_size  # beyond it lies data older than the trim
        window = _Window(self._read_ring, limit, self._span)
        position = end = self._trim
        group: int | None = None
        held: list[WalEntry] = []  # the current group's records
        holed: list[tuple[int, int]] = []  # holes inside the current group
        pending: list[tuple[int, int]] = []  # holes whose group the next record tells
        while position < limit:
            buf, at = window.at(position)
            found, step = examine(buf, at, position)
            if found is None:
                resume = self._next_valid(window, position + step, limit)
                if resume is None:
                    break  # a torn group or a previous lap's bytes: the log ends here
                pending.append((position, resume))
                position = resume
                continue
            record, length, started = found
            if started != group:  # a new group: the one before it was written whole
                yield from held
                for hole in holed:
                    recovery.drop(*hole, "damaged bytes between valid records")
                held, holed, group = [], [], started
            for hole in pending:
                if hole[0] >= started:
                    holed.append(hole)
                else:
                    recovery.drop(*hole, "damaged bytes between valid records")
            pending = []
            if record is not None:
                held.append(WalEntry(position, record))
            position += length
            end = position
        if holed and group is not None and group >= self._trim:
            held, end = [], group  # the last group was torn: drop it whole
        else:
            # A group that began before the trim was synced whole (trims come after syncs):
            # its holes are damage, and appends must not go on before the trim.
            for hole in holed:
                recovery.drop(*hole, "damaged bytes between valid records")
        yield from held
        if position > end:
            # The dropped group's surviving records claim the very positions the next appends
            # take: left on the ring, those beyond a shorter append would pass for live at the
            # next recovery, or make its group look torn. Every valid record beyond ``end``
            # lies before ``position`` (the search above found none further on). The group's
            # first block goes first, durably: if a crash cuts the rest short, what survives
            # of the group no longer has its start and is dropped again, never taken as live.
            head = min(position, end - end % BLOCK + BLOCK)
            self._overwrite(end, bytes(head - end))
            if position > head:
                self._overwrite(head, bytes(position - head))
        recovery.end = self._seal(end)

    def _seal(self, end: int) -> int:
        """Where appends go on after recovery: groups start block-aligned. If the last group's
        padding was lost (a torn group), write it now, so that the next recovery finds a
        padding record there instead of torn bytes it would take for damage."""
        if end % BLOCK == 0:
            return end
        gap = _round_up(end) - end
        if gap < HEADER_SIZE:
            gap += BLOCK  # as _padded does: a padding record needs room for its header
        sealed = end + gap
        if sealed - self._trim > self._ring_size:  # a full ring: no room to pad (rare)
            log.warning("block WAL full at recovery: the lost padding at `%s` is not "
                        "rewritten; the next recovery will report it as damage", end)
            return _round_up(end)
        self._overwrite(end, padding(end, gap, end))
        return sealed

    def _overwrite(self, start: int, data: bytes) -> None:
        """Put ``data`` at logical position ``start`` durably, before any append: the blocks
        around it are read, patched and written back whole (O_DIRECT writes whole blocks)."""
        first = start - start % BLOCK
        length = _round_up(start + len(data)) - first
        buffer = mmap.mmap(-1, length)  # page-aligned, as O_DIRECT writes need
        buffer[:] = self._read_ring(first, length)
        buffer[start - first:start - first + len(data)] = data
        view = memoryview(buffer)
        offset = first % self._ring_size
        split = min(length, self._ring_size - offset)  # a piece never crosses the ring's end
        self._write_piece(view[:split], offset)
        if split < length:
            self._write_piece(view[split:], 0)
        if not self.direct_io:
            os.fdatasync(self._fd)

    @staticmethod
    def _next_valid(window: _Window, after: int, limit: int) -> int | None:
        """The first block boundary at or after ``after`` that holds a valid record at its own
        position (groups start at boundaries, so the next intact group is found). A candidate
        whose header is valid but whose body is not is skipped whole (see ``examine``), so that
        no byte is hashed twice."""
        candidate = _round_up(after)
        while candidate < limit:
            buf, at = window.at(candidate)
            if buf[at:at + 4] != MAGIC:
                candidate += BLOCK
                continue
            found, step = examine(buf, at, candidate)
            if found is not None:
                return candidate
            candidate = _round_up(candidate + step)
        return None

    # ---- writing ----

    def _write_group(self, group: list[Pending], start: int) -> tuple[list[int], int]:
        if start % BLOCK:
            raise RuntimeError(f"a block WAL group must start block-aligned: start=`{start}`")
        ring = self._ring_size
        size = sum(item.size for item in group)
        length = _padded(size)
        offset = start % ring
        jump = ring - offset if offset + length > ring else 0  # wrap padding to the ring's end
        first = start + jump
        end = first + length
        # ``_trim`` read alone: a stale value is lower, and _wait_for_room looks under _cond.
        if end - self._trim > ring:  # padding took it past the room admission saw
            self._wait_for_room(end, time.monotonic() + self._full_timeout)
        if end - ring > self._persisted_trim:
            # The bytes about to be overwritten must be trimmed on disk too, or a crash now
            # would leave a header whose live window starts in overwritten data.
            self._persist_trim(end - ring)
        if jump:
            self._wrap_buffer[:HEADER_SIZE] = header(TYPE_PADDING, jump - HEADER_SIZE, start, 0,
                                                     start)
            # Only the padding's header block: its body is never read.
            self._write_piece(memoryview(self._wrap_buffer), offset)
        buffer = self._buffer if length <= len(self._buffer) else mmap.mmap(-1, length)
        positions = []
        at = 0
        for item in group:
            positions.append(first + at)
            for part in record_parts(first + at, item.record, first):
                buffer[at:at + len(part)] = part
                at += len(part)
        if length > size:
            buffer[size:length] = padding(first + size, length - size, first)
        self._write_piece(memoryview(buffer)[:length], first % ring)
        if not self.direct_io:
            os.fdatasync(self._fd)
        return positions, end

    def _write_piece(self, data: memoryview, ring_offset: int) -> None:
        _pwrite_all(self._fd, data, RING_START + ring_offset)

    # ---- trim and close ----

    def _trimmed(self, position: int) -> None:
        if self.persist_trims:
            self._persist_trim(position)

    def _persist_trim(self, needed: int) -> None:
        """Make the header's trim position at least ``needed`` (it is never beyond the trim
        asked for: ``self._trim`` is that, and concurrent trims coalesce into one write)."""
        with self._header_lock:
            if self._persisted_trim >= needed or self._fd < 0:
                return
            target = self._trim  # read alone (GUARDED_BY GroupCommitWal._cond): the newest asked
            new = replace(self._header, generation=self._header.generation + 1, trim=target)
            self._write_header(new)
            self._header = new
            self._persisted_trim = target

    def _release(self) -> None:
        self._close_files()

    def _close_files(self) -> None:
        with self._header_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1
