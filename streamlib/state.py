"""What a node keeps of each stream (:class:`StreamState`) and the table of them
(:class:`StreamTable`); docs/store.md, "Streams in memory".

A stream's offsets live in three places:

```
start_offset ≤ committed_end ≤ acked_end ≤ assigned_end
   trimmed │ in committed objects │ in the log cache │ in the WAL, not yet durable
```

Appends take offsets under the stream's ``order`` lock, in call order, and enter the WAL in that
order; the WAL completes them in order, and :meth:`StreamState.drain` moves each durable batch to
the log cache and acknowledges it. Readers see ``[start_offset, acked_end)``. A commit moves
batches from the log cache's pending part (``log``) to its uploaded part (``kept_log``), where
they stay for tailing readers until the message cache evicts them (docs/cache.md).

Lock order of a stream: ``order`` → ``opening`` → ``lock`` (the node's whole order is in
:mod:`streamlib.node`). ``lock`` is held briefly, never across I/O, and never while calling the
message cache (which calls :meth:`StreamState.release_kept` under its own lock).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedKeyList

from streamlib.errors import FencedError, SequenceError, describe
from streamlib.meta import StreamMeta, StreamObject
from streamlib.records import AppendResult, PlacedBatch
from streamlib.shared.handover import HandOver, Ownership
from streamlib.wal import Ticket

log = logging.getLogger(__name__)

PRODUCER_WINDOW = 16
"""Sequences remembered per producer: a retry of any of its last 16 batches is recognised."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream as the store sees it at one moment: readable offsets ``[start_offset,
    next_offset)``, the current ``epoch`` (bumped by every open for write); ``stored_bytes``,
    the bytes of its ranges in live objects as of the last lifecycle pass plus this node's
    uploads since (None before the first pass); ``last_append``, when this node last
    acknowledged an append to it (POSIX seconds; None: none since the store opened);
    ``created``, when the stream was created (POSIX seconds, by the creating node's clock, kept
    in the metadata; None for a stream created by a streamlib that did not record it)."""

    id: int
    name: str | None
    start_offset: int
    next_offset: int
    epoch: int
    stored_bytes: int | None = None
    last_append: float | None = None
    created: float | None = None

    @property
    def records(self) -> int:
        """Readable records: ``next_offset - start_offset``."""
        return self.next_offset - self.start_offset


@dataclass(frozen=True, slots=True)
class ObjectSlice:
    """What one committed object holds of one stream: offsets ``[start, end)``."""

    start: int
    end: int
    key: str
    size: int
    tier: str = ""
    """Which object store holds it (``ObjectMeta.tier``)."""


def new_object_index(objects: Sequence[StreamObject]) -> SortedKeyList:
    """A stream's committed objects by the first offset each holds (O(log n) lookups)."""
    return SortedKeyList((ObjectSlice(o.range.start_offset, o.range.end_offset, o.key, o.size,
                                      o.tier) for o in objects), key=lambda s: s.start)


INDEX_SLICES = 256
"""The most object slices one window of a stream's index holds in memory."""
INDEX_WINDOWS = 2
"""Windows of a stream's index held at once: the tail's, and one further back."""


@dataclass(slots=True)
class IndexWindow:
    """Consecutive object slices of a stream covering offsets ``[low, high)``; ``to_end``: the
    window reaches the stream's committed end (and commits extend it)."""

    slices: SortedKeyList
    low: int
    high: int
    to_end: bool

    def covers(self, offset: int) -> bool:
        return self.low <= offset and (self.to_end or offset < self.high)


class SliceIndex:
    """Which committed objects hold a stream's offsets, the part of it in memory bounded
    (docs/lifecycle.md, "The in-memory index of objects"): at most :data:`INDEX_WINDOWS`
    windows of at most :data:`INDEX_SLICES` slices, loaded from the metadata where a read
    needs them (``stream_objects(id, offset, limit)``), most recently used first. A window that
    reaches the committed end takes the slices of new commits and lets its oldest go past the
    bound, so a tailing reader's window follows the tail. Guarded by its stream's ``lock``."""

    __slots__ = ("windows",)

    def __init__(self) -> None:
        self.windows: list[IndexWindow] = []

    def __len__(self) -> int:
        return sum(len(w.slices) for w in self.windows)

    def clear(self) -> None:
        """Forget every window (the objects changed in a way a commit does not say)."""
        self.windows = []

    def find(self, offset: int) -> IndexWindow | None:
        for i, window in enumerate(self.windows):
            if window.covers(offset):
                if i:
                    self.windows.insert(0, self.windows.pop(i))
                return window
        return None

    def install(self, offset: int, objects: Sequence[StreamObject]) -> IndexWindow:
        """A window loaded from the metadata: ``objects`` from ``offset``, as many as the
        metadata gave up to :data:`INDEX_SLICES` (fewer: they reach the end)."""
        slices = new_object_index(objects)
        to_end = len(objects) < INDEX_SLICES
        window = IndexWindow(slices, offset, slices[-1].end if slices else offset, to_end)
        self.windows = [w for w in self.windows if not (to_end and w.to_end)]
        self.windows.insert(0, window)
        del self.windows[INDEX_WINDOWS:]
        return window

    def committed(self, slices: Sequence[ObjectSlice]) -> None:
        """New slices at the end: the windows reaching the end take them."""
        for window in self.windows:
            if window.to_end:
                window.slices.update(slices)
                if window.slices:
                    window.high = window.slices[-1].end
                while len(window.slices) > INDEX_SLICES:
                    window.slices.pop(0)
                    window.low = window.slices[0].start


class Inflight:
    """One append between its WAL submission and its acknowledgement: ``wal`` is its
    :class:`~streamlib.wal.Ticket` (done once the WAL write completed)."""

    __slots__ = ("batch", "durable_at", "future", "started", "wal")

    def __init__(self, batch: PlacedBatch, wal: Ticket, started: float) -> None:
        self.batch = batch
        self.wal = wal
        self.started = started  # when the append was called (monotonic seconds)
        # When the WAL write was seen complete (monotonic seconds, stamped on a shared store;
        # None before): only a look at the metadata that started later may acknowledge it.
        self.durable_at: float | None = None
        self.future: Future[AppendResult] = Future()
        # Running from the start: a caller cannot cancel it (asyncio.wait_for on
        # append_async tries to), since the append goes on in the WAL whatever happens.
        self.future.set_running_or_notify_cancel()

    def settled_before(self, moment: float | None) -> bool:
        """Whether its WAL write completed (and was seen to) before ``moment`` (None: ever)."""
        wal = self.wal
        if wal.position is None and wal.error is None:
            return False
        return moment is None or (self.durable_at is not None and self.durable_at <= moment)


class Producer:
    """The last sequences of one idempotent producer and where their batches went."""

    __slots__ = ("last", "recent")

    def __init__(self) -> None:
        self.last: int | None = None
        self.recent: OrderedDict[int, tuple[int, Future[AppendResult]]] = OrderedDict()

    def known(self, stream_id: int, producer_id: object, sequence: int,
              count: int) -> Future[AppendResult] | None:
        """The future of an earlier append of ``sequence`` (a retry), or None for the next
        sequence; SequenceError for anything else."""
        if self.last is None or sequence == self.last + 1:
            return None
        found = self.recent.get(sequence)
        if found is not None:
            if found[0] != count:
                raise SequenceError(describe(
                    "a retried sequence carries a batch of another size", stream=stream_id,
                    producer=producer_id, sequence=sequence, count=count, original=found[0]))
            return found[1]
        if sequence <= self.last:
            raise SequenceError(describe(
                "sequence too old: the stream no longer remembers it", stream=stream_id,
                producer=producer_id, sequence=sequence, last=self.last,
                remembered=PRODUCER_WINDOW))
        raise SequenceError(describe("sequence gap: the producer skipped sequences",
                                     stream=stream_id, producer=producer_id, sequence=sequence,
                                     expected=self.last + 1))

    def remember(self, sequence: int, count: int, future: Future[AppendResult]) -> None:
        self.last = sequence
        self.recent[sequence] = (count, future)
        while len(self.recent) > PRODUCER_WINDOW:
            self.recent.popitem(last=False)


Settle = tuple["Future[Any]", object, BaseException | None]
"""A future to complete: with a result, or with an error (when the third item is set)."""

Publish = Callable[[int, int, BaseException | None, Sequence[Inflight]], None]
"""Called by :meth:`StreamState.drain` under the stream's lock: ``(last WAL position
acknowledged, payload bytes added to the log cache, the first WAL error met, the appends
acknowledged)``."""


def settle(done: Sequence[Settle]) -> None:
    """Complete futures (outside every lock: their callbacks are user code)."""
    for future, result, error in done:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class StreamState:
    """Everything this node knows of one stream. ``order`` serialises appends (offsets and WAL
    order); ``opening`` serialises an open for write here with a fence decision about the
    stream (shared stores); ``lock`` guards the fields below, briefly; ``changed`` (on
    ``lock``) wakes whoever waits for the stream: tailing readers, opens and appends waiting
    for a hand-over."""

    def __init__(self, meta: StreamMeta, handover: Ownership = Ownership.READER, *,
                 reason: BaseException | None = None, source: str | None = None) -> None:
        self.id = meta.id
        self.name = meta.name
        # When it was created (POSIX seconds, from the metadata; None: not recorded). Fixed.
        self.created = None if meta.created_ms is None else meta.created_ms / 1000
        self.order = threading.Lock()
        self.opening = threading.Lock()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        # The epoch this node writes with. GUARDED_BY(lock); an open here also holds ``order``,
        # so an appender holding ``order`` may read it without ``lock``.
        self.epoch = meta.epoch
        self.start_offset = meta.start_offset  # GUARDED_BY(lock); read alone for a snapshot
        self.committed_end = meta.end_offset  # GUARDED_BY(lock)
        self.acked_end = meta.end_offset  # GUARDED_BY(lock); read alone for a snapshot
        self.assigned_end = meta.end_offset  # GUARDED_BY(order)
        self.inflight: deque[Inflight] = deque()  # GUARDED_BY(lock); appended under order too
        # Appends inside their WAL call, not in ``inflight`` yet: counted with the check that
        # the stream is not fenced (one hold of ``lock``), so that a release waits for them.
        self.entering = 0  # GUARDED_BY(lock)
        self.unsettled: list[Settle] = []  # GUARDED_BY(lock): acknowledged, not answered
        self.settling = False  # GUARDED_BY(lock): a thread is answering (one keeps the order)
        self.log: list[PlacedBatch] = []  # GUARDED_BY(lock): acknowledged, not yet committed
        self.log_positions: list[int] = []  # GUARDED_BY(lock): each batch's WAL position
        self.log_bytes = 0  # GUARDED_BY(lock)
        # Committed batches still in memory, ending at committed_end (contiguous with ``log``):
        # tailing readers a little behind the tail read them without a GET. GUARDED_BY(lock)
        self.kept_log: list[PlacedBatch] = []
        self.index = SliceIndex()  # GUARDED_BY(lock): where the committed offsets are
        self.commits = 0  # GUARDED_BY(lock): bumped by every commit; a racing loader reloads
        self.producers: dict[object, Producer] = {}  # GUARDED_BY(order)
        self.destroyed = False  # GUARDED_BY(lock); read alone: once True, it stays
        # Appends acknowledged here since the store opened, their records and payload bytes,
        # and the time of the last (POSIX seconds). GUARDED_BY(lock); read alone for metrics.
        self.appends = self.appended_records = self.appended_bytes = 0
        self.last_append: float | None = None
        # Bytes of its ranges in live objects: the last lifecycle pass's count plus this
        # node's commits since (None before a pass). GUARDED_BY(lock); read alone for metrics.
        self.stored_bytes: int | None = None
        self.damage: str | None = None  # set at recovery only: why the stream is read-only
        self.kept: int | None = None  # set at recovery only: the WAL is kept from here
        self.handover = HandOver(self.changed, handover, reason=reason,
                                 source=source)  # GUARDED_BY(lock)
        # asyncio readers waiting at the tail: a future of their loop each. GUARDED_BY(lock)
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return (f"<StreamState id={self.id} epoch={self.epoch} "
                f"offsets=[{self.start_offset}, {self.committed_end}, {self.acked_end}, "
                f"{self.assigned_end}] {self.handover!r}>")

    def info(self) -> StreamInfo:
        with self.lock:
            return StreamInfo(self.id, self.name, self.start_offset, self.acked_end, self.epoch,
                              self.stored_bytes, self.last_append, self.created)

    def check_writer(self, epoch: int) -> None:
        """FencedError if the stream was opened for write again since a handle of ``epoch``
        was (caller holds ``order`` or ``lock``). A hand-over to another node is checked apart
        (``handover.reason``)."""
        if epoch != self.epoch:
            raise FencedError(describe("the stream was opened for write again: this handle is "
                                       "fenced", stream=self.id, epoch=epoch, current=self.epoch))

    def move_ends(self, end: int) -> bool:
        """Another node committed up to ``end``: the stream's ends move there, and the object
        index is loaded again on the next read (caller holds ``lock``). Returns whether they
        moved."""
        if end <= self.committed_end:
            return False
        self.committed_end = self.acked_end = self.assigned_end = end
        self.index.clear()
        self.commits += 1
        self.wake_readers()
        return True

    # ---- the log cache ----

    def add_to_log(self, batch: PlacedBatch, position: int) -> None:
        """A durable batch, right after the last (caller holds ``lock`` or owns the state)."""
        self.log.append(batch)
        self.log_positions.append(position)
        self.log_bytes += batch.size
        self.acked_end = batch.next_offset

    def drain(self, publish: Publish, looked: float | None = None) -> list[PlacedBatch]:
        """Acknowledge the appends the WAL has completed (before ``looked``, the start of the
        last look at a shared metadata store, if given), in order: each durable batch enters
        the log cache, then ``publish`` runs (under ``lock``, so that no reader sees a batch the
        uploader's frontier does not cover yet), then the futures are settled — by one thread
        at a time, in offset order, outside the lock. A stream being handed over parks its
        durable appends instead (answered once it is released). Returns the batches that did
        not enter the log cache (failed, parked, or of a destroyed stream): their reservations
        are the caller's to give back."""
        position = -1
        added = popped = 0
        failure: BaseException | None = None
        acked: list[Inflight] = []
        records = size = 0
        dropped: list[PlacedBatch] = []
        with self.lock:
            fenced = self.handover.fenced
            while self.inflight and self.inflight[0].settled_before(None if fenced else looked):
                item = self.inflight.popleft()
                popped += 1
                error = item.wal.error
                if error is not None:
                    self.unsettled.append((item.future, None, error))
                    dropped.append(item.batch)
                    failure = failure or error
                    continue
                if fenced:  # durable after the hand-over was seen: parked
                    dropped.append(item.batch)
                    self.handover.parked.append(item.future)
                    continue
                at = item.wal.position
                assert at is not None  # settled: a position or an error
                position = at
                if self.destroyed:  # nothing will upload it: not pending, not cached
                    dropped.append(item.batch)
                else:
                    self.add_to_log(item.batch, position)
                    added += item.batch.size
                acked.append(item)
                records += item.batch.count
                size += item.batch.size
                self.unsettled.append((item.future, AppendResult(
                    item.batch.base_offset, item.batch.count), None))
            if popped:
                if acked:
                    self.appends += len(acked)
                    self.appended_records += records
                    self.appended_bytes += size
                    self.last_append = time.time()
                publish(position, added, failure, acked)
                self.wake_readers()
            if self.settling or not self.unsettled:
                return dropped  # the thread settling now settles these too, after earlier ones
            self.settling = True
            answers, self.unsettled = self.unsettled, []
        while True:  # all that waits, in one hold of the lock a round
            for future, result, error in answers:
                try:
                    if error is None:
                        future.set_result(result)
                    else:
                        future.set_exception(error)
                except Exception:  # a future completed elsewhere: never stop settling the rest
                    log.exception("could not complete an append future")
            with self.lock:
                if not self.unsettled:
                    self.settling = False  # in the same hold as the check: nothing is left over
                    return dropped
                answers, self.unsettled = self.unsettled, []

    def first_durable(self) -> bool:
        """Whether the stream's first append in flight has finished its WAL write."""
        with self.lock:
            return bool(self.inflight) and self.inflight[0].wal.done

    def wal_done(self) -> bool:
        """Whether every append in flight has finished its WAL write (caller holds
        ``lock``)."""
        return all(item.wal.done for item in self.inflight)

    def wake_readers(self) -> None:
        """Whoever waits for the stream (tailing readers, hand-over waits): look again (caller
        holds ``lock``). Threads wait on ``changed``; asyncio readers on a future of their
        loop."""
        self.changed.notify_all()
        if not self.async_waiters:
            return
        waiters, self.async_waiters = self.async_waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, future)

    def take(self, frontier: int) -> list[PlacedBatch]:
        """The log cache's batches at WAL positions up to ``frontier`` (for an upload)."""
        with self.lock:
            if self.destroyed:
                return []
            return self.log[:bisect.bisect_right(self.log_positions, frontier)]

    def committed(self, end: int, slices: Sequence[ObjectSlice], *,
                  reset_index: bool = False, stored: int = 0) -> list[PlacedBatch]:
        """Objects up to ``end`` are committed: their batches move from the pending part of the
        log cache to its uploaded part. Returns the batches moved. ``reset_index``: the object
        index is loaded again on the next read (the commit's objects are not known).
        ``stored``: the bytes of the stream's ranges in them."""
        with self.lock:
            self.committed_end = max(self.committed_end, end)
            if self.stored_bytes is not None:
                self.stored_bytes += stored
            cut = bisect.bisect_right(self.log, end, key=lambda b: b.next_offset)
            moved = self.log[:cut]
            del self.log[:cut], self.log_positions[:cut]
            self.log_bytes -= sum(b.size for b in moved)
            if not self.destroyed:
                self.kept_log.extend(moved)
            if reset_index:
                self.index.clear()
            else:
                self.index.committed(slices)
            self.commits += 1
            return moved

    def objects_replaced(self) -> None:
        """Compaction or deletion swapped some of the stream's objects for others: the object
        index is loaded again on the next read (reads that resolved the old objects finish:
        they stay for the grace period)."""
        with self.lock:
            self.index.clear()
            self.commits += 1

    def release_kept(self, end: int) -> None:
        """The message cache evicted uploaded batches up to ``end``: drop them (readers of
        those offsets go to the objects)."""
        with self.lock:
            cut = bisect.bisect_right(self.kept_log, end, key=lambda b: b.next_offset)
            del self.kept_log[:cut]

    def forget(self) -> tuple[int, list[PlacedBatch]] | None:
        """The stream was destroyed: drop its log cache. Returns the payload bytes that no
        longer wait for upload and the batches that were pinned, or None if it was forgotten
        before."""
        with self.lock:
            if self.destroyed:
                return None
            self.destroyed = True
            self.wake_readers()
            freed, pinned = self.log_bytes, list(self.log)
            self.log.clear()
            self.log_positions.clear()
            self.log_bytes = 0
            self.kept_log.clear()
            return freed, pinned

    @property
    def memory_start(self) -> int:
        """The first offset the log cache holds, uploaded or not (caller holds ``lock``)."""
        if self.kept_log:
            return max(self.kept_log[0].base_offset, self.start_offset)
        return self.committed_end

    def log_slice(self, start: int, end: int) -> list[PlacedBatch]:
        """Log-cache batches (uploaded or not) holding offsets of ``[start, end)`` (caller
        holds ``lock``; ``start`` at or above :attr:`memory_start`)."""
        found = []
        for run in (self.kept_log, self.log):
            i = bisect.bisect_right(run, start, key=lambda b: b.next_offset)
            j = bisect.bisect_left(run, end, lo=i, key=_base_of)
            found.extend(run[i:j])
        return found


def _base_of(batch: PlacedBatch) -> int:
    return batch.base_offset


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class StreamTable:
    """The streams a node knows, by id (destroyed ones leave it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[int, StreamState] = {}  # GUARDED_BY(_lock)

    def get(self, stream_id: int) -> StreamState | None:
        with self._lock:
            return self._states.get(stream_id)

    def add(self, state: StreamState) -> StreamState:
        """``state``, or the one the table holds for its id already (a sync may have added
        it)."""
        with self._lock:
            return self._states.setdefault(state.id, state)

    def remove(self, state: StreamState) -> None:
        with self._lock:
            if self._states.get(state.id) is state:
                del self._states[state.id]

    def all(self) -> list[StreamState]:
        """Every stream, in no particular order (a copy: the table may change meanwhile)."""
        with self._lock:
            return list(self._states.values())

    def __contains__(self, stream_id: int) -> bool:
        with self._lock:
            return stream_id in self._states

    def __len__(self) -> int:
        return len(self._states)  # one len(), atomic without the lock: a moment's value

    def wake_all(self) -> None:
        """Wake whoever waits on any stream (the store closes, or its node failed)."""
        for state in self.all():
            with state.lock:
                state.wake_readers()


__all__ = ["Inflight", "ObjectSlice", "Producer", "StreamInfo", "StreamState", "StreamTable",
           "new_object_index", "settle"]
