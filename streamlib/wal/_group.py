"""Group commit for the local backends (``file`` and ``block``).

Callers queue records; a **writer** takes everything queued (up to ``group_bytes``, after an
optional ``linger``), hands it to the backend's ``_write_group`` — one write and one sync — and
completes the group: every ticket's position first, then their callbacks in order (a caller of
:meth:`GroupCommitWal.submit` sees its whole group done at the first callback). One writer at
a time holds the **turn** (``_writing``): the writer thread, or an appending thread that leads
(:meth:`GroupCommitWal.lead`). A thread that appends and then waits for its append
(``Stream.append``) leads when no write is under way: it writes and syncs its own record (with
whatever else is queued) and completes the tickets itself, without a thread switch to the
writer thread and back. While a write is under way, appends queue, and the writer thread
writes them all as the next group once the turn is free (LevelDB's and RocksDB's write path,
with a thread for the followers). With ``linger`` nobody leads: the writer thread gathers. The
writer thread is woken only when it has something to do: by an append that nobody will lead,
by a writer that gives the turn back with records queued, by a close. Admission control bounds
memory and disk: an append that would take the WAL past its capacity waits on a condition that
``trim`` signals.

Lock order: one lock, ``_cond``, a leaf below the node's order (:mod:`streamlib.node`). It is
never held while writing, syncing, reclaiming space (``_trimmed``) or completing tickets: a
writer completes them with no lock held (a leader too: it leads only after letting go of its
stream's locks), so their callbacks (the store's acknowledgement) may take the node's locks. A
backend's own lock (``FileWal._trim_lock``, ``BlockWal._header_lock``) is never taken under
``_cond``, nor ``_cond`` under it. Fields a backend writes while writing a group are the turn's:
written and read by the writer that holds it (the turn passes under ``_cond``).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future

from streamlib.errors import StorageUnavailable, StreamClosed, WalFullError
from streamlib.wal import Recovery, Ticket, Wal, WalEntry, WalRecord
from streamlib.wal._admission import Admission
from streamlib.wal._format import record_size

log = logging.getLogger(__name__)


class Pending:
    """A queued append."""

    __slots__ = ("record", "size", "ticket")

    def __init__(self, record: WalRecord, size: int, ticket: Ticket) -> None:
        self.record = record
        self.size = size
        self.ticket = ticket


class _FutureTicket(Ticket):
    """:meth:`GroupCommitWal.append`'s future, behind a ticket."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        super().__init__()
        self.future: Future[int] = Future()

    def completed(self) -> None:
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            assert self.position is not None  # completed: a position or an error
            self.future.set_result(self.position)


class GroupCommitWal(Wal):
    """The queue, the writer thread and the back-pressure; backends add the storage.

    Backends implement :meth:`_scan` (recovery), :meth:`_write_group` (assign positions, write,
    sync; return the positions) and :meth:`_trimmed` (reclaim space), and may raise
    ``admission_slack`` for bytes a group can add beyond its records (padding)."""

    admission_slack = 0

    def __init__(self, *, capacity: int, group_bytes: int, linger: float,
                 full_timeout: float) -> None:
        if capacity <= 0 or group_bytes <= 0 or linger < 0 or full_timeout < 0:
            raise ValueError("capacity and group_bytes must be positive, linger and "
                             "full_timeout non-negative")
        self._capacity = capacity  # these four: fixed
        self._group_bytes = group_bytes
        self._linger = linger
        self._full_timeout = full_timeout
        self._cond = threading.Condition()
        self._queue: deque[Pending] = deque()  # GUARDED_BY(_cond)
        self._queued_bytes = 0  # GUARDED_BY(_cond)
        self._admission = Admission(self._cond)  # GUARDED_BY(_cond): first come, first served
        # GUARDED_BY(_cond); read alone (``trim_position``, a backend reclaiming space): it only
        # grows, so a stale value is an older trim
        self._trim = 0
        # The position after the last written record. GUARDED_BY(_cond) for writes, made by
        # recovery and then the writer holding the turn, which reads it alone; others read it alone
        # (``end_position``): a stale value is lower
        self._end = 0
        self._recovered = False  # recover()'s caller's alone: it is called once, first
        self._closed = False  # GUARDED_BY(_cond)
        self._failure: BaseException | None = None  # GUARDED_BY(_cond)
        # A writer holds the turn: it writes a group and completes its futures. GUARDED_BY(_cond)
        self._writing = False
        # Set once, alone, by recovery, which its caller finishes before appending or closing;
        # read after that by ``_check_open`` and close
        self._writer: threading.Thread | None = None

    # ---- for backends ----

    @abc.abstractmethod
    def _scan(self, recovery: Recovery) -> Iterator[WalEntry]:
        """Yield the recovered entries; set ``recovery.end``; report damage."""

    @abc.abstractmethod
    def _write_group(self, group: list[Pending], start: int) -> tuple[list[int], int]:
        """Write the group durably starting at position ``start``. Returns each record's
        position and the position after the group. Called by the writer that holds the turn
        only."""

    def _trimmed(self, position: int) -> None:
        """Reclaim space before ``position`` (called outside the lock)."""

    def _wait_for_room(self, end: int, deadline: float) -> None:
        """For the writer: block until ``end - trim <= capacity``, or raise WalFullError."""
        with self._cond:
            while end - self._trim > self._capacity and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WalFullError(f"WAL full: no room for a group ending at `{end}`: "
                                       f"trim=`{self._trim}` capacity=`{self._capacity}`")
                self._cond.wait(left)
            if self._closed:
                raise StreamClosed("WAL closed while a group waited for room")

    # ---- the interface ----

    def recover(self) -> Recovery:
        if self._recovered:
            raise RuntimeError("recover() may be called only once")
        self._recovered = True

        def scan(recovery: Recovery) -> Iterator[WalEntry]:
            yield from self._scan(recovery)
            with self._cond:
                self._end = recovery.end
            self._start_writer()

        return Recovery(scan, self._trim)

    def _start_writer(self) -> None:
        self._writer = threading.Thread(target=self._write_loop,
                                        name=f"streamlib-{type(self).__name__}",
                                        daemon=True)
        self._writer.start()

    def append(self, record: WalRecord, timeout: float | None = None) -> Future[int]:
        ticket = _FutureTicket()
        self.submit(record, ticket, timeout)
        return ticket.future

    def submit(self, record: WalRecord, ticket: Ticket, timeout: float | None = None, *,
               lead: bool = False) -> None:
        if not isinstance(record, WalRecord):
            raise TypeError(f"record must be a WalRecord, not {type(record).__name__}")
        size = record_size(record)
        limit = min(self.capabilities.max_record_bytes, self._capacity - self.admission_slack)
        if size > limit:
            raise ValueError(f"WAL record too large: size=`{size}` max=`{limit}`")
        pending = Pending(record, size, ticket)
        with self._cond:
            self._check_open()
            if self._admission.waiting or not self._fits(size):  # else no queue to join
                deadline = time.monotonic() + (self._full_timeout if timeout is None
                                               else timeout)
                self._admission.wait(
                    lambda: self._fits(size), deadline,
                    lambda: (f"WAL full: append waited for room: "
                             f"usage=`{self._end - self._trim}` queued=`{self._queued_bytes}` "
                             f"size=`{size}` capacity=`{self._capacity}`"),
                    self._check_open)
            self._queue.append(pending)
            self._queued_bytes += size
            # The writer thread waits for a queued record with nobody writing; a writer that
            # holds the turn wakes it when it gives the turn back, and a leader writes its own.
            if not self._writing and (self._linger or not lead):
                self._cond.notify_all()

    def _fits(self, size: int) -> bool:
        """Whether ``size`` more bytes fit in the WAL (caller holds ``_cond``)."""
        return (self._end - self._trim + self._queued_bytes + size + self.admission_slack
                <= self._capacity)

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("the WAL is closed")
        if self._failure is not None:
            raise StorageUnavailable(f"the WAL failed and accepts no appends: {self._failure}")
        if self._writer is None:
            raise RuntimeError("call recover() and iterate it before appending")

    def trim(self, position: int) -> None:
        with self._cond:
            if position <= self._trim:
                return
            if position > self._end:
                raise ValueError(f"trim beyond the end: position=`{position}` end=`{self._end}`")
            self._trim = position
            self._cond.notify_all()
        self._trimmed(position)

    @property
    def waiting_appends(self) -> int:
        with self._cond:
            return self._admission.waiting

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def trim_position(self) -> int:
        return self._trim

    @property
    def end_position(self) -> int:
        return self._end

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        with self._cond:  # a leader's group is written and answered before the files go
            while self._writing:
                self._cond.wait()
        self._release()

    def _release(self) -> None:
        """Free files and locks after the writer stopped."""

    # ---- the writers ----

    def lead(self) -> None:
        with self._cond:
            if self._writing or not self._queue or self._linger or self._closed:
                return  # the writer thread takes what is queued
            group = self._take()
        self._write(group)

    def _take_group(self) -> list[Pending] | None:
        """For the writer thread: the next group, with the turn (None: closed, all written)."""
        with self._cond:
            while (self._writing or not self._queue) and not self._closed:
                self._cond.wait()
            while self._writing:  # closing: a leader finishes first
                self._cond.wait()
            if not self._queue:
                return None
            if self._linger:
                deadline = time.monotonic() + self._linger
                while self._queued_bytes < self._group_bytes and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            return self._take()

    def _take(self) -> list[Pending]:
        """Take the turn and the next group: what is queued, up to ``group_bytes`` (caller
        holds ``_cond``, and nobody has the turn)."""
        self._writing = True
        group: list[Pending] = []
        size = 0
        while self._queue and (not group or size + self._queue[0].size <= self._group_bytes):
            item = self._queue.popleft()
            group.append(item)
            size += item.size
        return group

    def _write_loop(self) -> None:
        while True:
            group = self._take_group()
            if group is None:
                return
            self._write(group)

    def _write(self, group: list[Pending]) -> None:
        """Write ``group`` and complete its tickets (the caller has the turn): every position
        first, then their callbacks in order; then give the turn back."""
        try:
            try:
                positions, end = self._write_group(group, self._end)
            except BaseException as e:
                self._fail(group, e)
                return
            with self._cond:
                self._end = end
                self._queued_bytes -= sum(p.size for p in group)
            for item, position in zip(group, positions, strict=True):
                item.ticket.position = position
            _completed(group)
        finally:
            with self._cond:
                self._writing = False
                if self._queue or self._closed:  # else nobody waits for the turn
                    self._cond.notify_all()

    def _fail(self, group: list[Pending], error: BaseException) -> None:
        """A group that could not be written fails, and with it everything queued behind it,
        and the WAL accepts no more appends: later appends may depend on it (offsets), and the
        WAL's state after a failed sync is unknown. That holds for a group that found no room
        too (admission already let later appends in behind it). Only a close is not a fault."""
        fatal = not isinstance(error, StreamClosed)
        if fatal:
            log.error("WAL write failed; the WAL accepts no more appends: %r", error)
        with self._cond:
            if fatal:
                self._failure = error
            failed = group + list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
        for item in failed:
            if isinstance(error, WalFullError | StreamClosed):
                item.ticket.error = error  # already says what happened
            else:
                wrapped = StorageUnavailable(f"WAL write failed: {error!r}")
                wrapped.__cause__ = error
                item.ticket.error = wrapped
        _completed(failed)


def _completed(group: list[Pending]) -> None:
    """Call the tickets' callbacks in order; one that raises does not stop the others."""
    for item in group:
        try:
            item.ticket.completed()
        except Exception:
            log.exception("a WAL ticket's callback failed")
