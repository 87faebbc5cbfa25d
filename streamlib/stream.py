"""Streams: the state the store keeps for each stream, and the :class:`Stream` handle users hold.

A stream's offsets live in three places (docs/store.md, "The write path"):

```
start_offset ≤ committed_end ≤ acked_end ≤ assigned_end
   trimmed │ in committed objects │ in the log cache │ in the WAL, not yet durable
```

Appends take offsets under the stream's ``order`` lock, in call order, and enter the WAL in that
order; the WAL completes them in order, and :meth:`StreamState.drain` moves each durable batch to
the log cache and acknowledges it. Readers see ``[start_offset, acked_end)``. A commit moves
batches from the log cache's pending part (``log``) to its uploaded part (``kept_log``), where
they stay for tailing readers until the message cache evicts them (docs/cache.md).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sortedcontainers import SortedKeyList

from streamlib.errors import (
    FencedError,
    ReadOnlyError,
    SequenceError,
    StreamClosed,
    StreamNotFound,
    describe,
)
from streamlib.meta import StreamMeta, StreamObject
from streamlib.records import (
    INT64_MAX,
    AppendResult,
    FetchResult,
    Record,
    RecordBatch,
    check_int,
    check_timestamp,
)

if TYPE_CHECKING:
    from streamlib.store import StreamStore

log = logging.getLogger("streamlib.stream")

PRODUCER_WINDOW = 16
"""Sequences remembered per producer: a retry of any of its last 16 batches is recognised."""

DEFAULT_FETCH_BYTES = 1024 * 1024
POLL = 0.1
"""Seconds between looks at a shared manifest by a reader waiting on another node's stream."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream as the store sees it at one moment: readable offsets ``[start_offset,
    next_offset)``, the current ``epoch`` (bumped by every open for write)."""

    id: int
    name: str | None
    start_offset: int
    next_offset: int
    epoch: int


@dataclass(frozen=True, slots=True)
class ObjectSlice:
    """What one committed object holds of one stream: offsets ``[start, end)``."""

    start: int
    end: int
    key: str
    size: int


class _Inflight:
    """One append between its WAL submission and its acknowledgement."""

    __slots__ = ("batch", "durable_at", "future", "wal_future")

    def __init__(self, batch: RecordBatch, wal_future: Future[int]) -> None:
        self.batch = batch
        self.wal_future = wal_future
        # When the WAL write was seen complete (monotonic seconds, stamped by the store on a
        # shared manifest; None before): only a look at the manifest that started later may
        # acknowledge it.
        self.durable_at: float | None = None
        self.future: Future[AppendResult] = Future()
        # Running from the start: a caller cannot cancel it (asyncio.wait_for on
        # append_async tries to), since the append goes on in the WAL whatever happens.
        self.future.set_running_or_notify_cancel()

    def settled_before(self, moment: float | None) -> bool:
        """Whether its WAL write completed (and was seen to) before ``moment`` (None: ever)."""
        if not self.wal_future.done():
            return False
        return moment is None or (self.durable_at is not None and self.durable_at <= moment)


class _Producer:
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


Settle = tuple[Future, object, BaseException | None]


def settle(done: list[Settle]) -> None:
    """Complete user futures (outside every lock: their callbacks are user code)."""
    for future, result, error in done:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class StreamState:
    """Everything the store knows of one stream. ``order`` serialises appends (offsets and WAL
    order); ``lock`` guards the fields below, briefly."""

    def __init__(self, meta: StreamMeta) -> None:
        self.id = meta.id
        self.name = meta.name
        self.epoch = meta.epoch
        self.start_offset = meta.start_offset
        self.committed_end = meta.end_offset
        self.acked_end = meta.end_offset
        self.assigned_end = meta.end_offset
        self.order = threading.Lock()
        self.opening = threading.Lock()  # an open for write here vs. a fence scan of it
        self.lock = threading.Lock()
        self.inflight: deque[_Inflight] = deque()
        self.unsettled: deque[Settle] = deque()  # acknowledged, futures not completed yet
        self.settling = False  # a thread is completing futures (one at a time keeps order)
        self.log: list[RecordBatch] = []  # acknowledged, not yet committed, in offset order
        self.log_positions: list[int] = []  # each batch's WAL position
        self.log_bytes = 0
        # Committed batches still in memory, ending at committed_end (contiguous with ``log``):
        # tailing readers a little behind the tail read them without a GET.
        self.kept_log: list[RecordBatch] = []
        self.objects: SortedKeyList | None = None  # ObjectSlice by start, loaded on first read
        self.commits = 0  # bumped by every commit: a loader that raced one loads again
        self.producers: dict[object, _Producer] = {}
        self.destroyed = False
        self.written_here = False  # opened for write on this node (else: read other nodes')
        # A shared manifest's hand-over (docs/shared-stores.md). On the old owner: ``fenced``
        # (appends refused) and ``parked`` (durable appends not acknowledged, answered with
        # FencedError once the stream is released); on the new one: ``handover_from``, the
        # node whose release its appends wait for.
        self.fenced: BaseException | None = None
        self.parked: list[Future[AppendResult]] = []
        self.released = False
        self.releasing = False  # a release of it is being written
        self.handover_from: str | None = None
        self.damage: str | None = None  # why the stream is read-only after recovery
        self.kept: int | None = None  # the WAL is not trimmed past here (records after a gap)
        self.appended = threading.Condition(self.lock)  # acked_end moved (tailing readers)
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def info(self) -> StreamInfo:
        with self.lock:
            return StreamInfo(self.id, self.name, self.start_offset, self.acked_end, self.epoch)

    # ---- the log cache ----

    def add_to_log(self, batch: RecordBatch, position: int) -> None:
        """A durable batch, right after the last (caller holds ``lock`` or owns the state)."""
        self.log.append(batch)
        self.log_positions.append(position)
        self.log_bytes += batch.size
        self.acked_end = batch.next_offset

    def drain(self, publish: Callable[[int, int], None],
              looked: float | None = None) -> list[RecordBatch]:
        """Acknowledge the appends the WAL has completed (before ``looked``, the start of the
        last look at a shared manifest, if given), in order: each durable batch enters
        the log cache, then ``publish(last position, bytes added)`` runs (under ``lock``, so
        that no reader sees a batch the uploader's frontier does not cover yet), then the
        futures are settled — by one thread at a time, in offset order, outside the lock.
        Returns the batches that did not enter the log cache (failed, or of a destroyed
        stream): their reservations are the caller's to give back."""
        position = -1
        added = popped = 0
        dropped: list[RecordBatch] = []
        with self.lock:
            while self.inflight and self.inflight[0].settled_before(
                    None if self.fenced is not None else looked):
                item = self.inflight.popleft()
                popped += 1
                error = item.wal_future.exception()
                if error is not None:
                    self.unsettled.append((item.future, None, error))
                    dropped.append(item.batch)
                    continue
                if self.fenced is not None:  # durable after the hand-over was seen: parked
                    dropped.append(item.batch)
                    self.parked.append(item.future)
                    continue
                position = item.wal_future.result()
                if self.destroyed:  # nothing will upload it: not pending, not cached
                    dropped.append(item.batch)
                else:
                    self.add_to_log(item.batch, position)
                    added += item.batch.size
                self.unsettled.append((item.future, AppendResult(
                    item.batch.base_offset, item.batch.count), None))  # type: ignore[arg-type]
            if popped:
                publish(position, added)
                self.wake_readers()
            if self.settling or not self.unsettled:
                return dropped  # the thread settling now settles these too, after earlier ones
            self.settling = True
        while True:
            with self.lock:
                if not self.unsettled:
                    self.settling = False  # in the same hold as the check: nothing is left over
                    return dropped
                item = self.unsettled.popleft()
            try:
                settle([item])
            except Exception:  # a future completed elsewhere: never stop settling the rest
                log.exception("could not complete an append future")

    def wake_readers(self) -> None:
        """Tailing readers waiting for an append, or for the end: look again (caller holds
        ``lock``). Threads wait on ``appended``; asyncio readers on a future of their loop."""
        self.appended.notify_all()
        waiters, self.async_waiters = self.async_waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, future)

    def take(self, frontier: int) -> list[RecordBatch]:
        """The log cache's batches at WAL positions up to ``frontier`` (for an upload)."""
        with self.lock:
            if self.destroyed:
                return []
            return self.log[:bisect.bisect_right(self.log_positions, frontier)]

    def committed(self, end: int, slices: Sequence[ObjectSlice], *,
                  reset_index: bool = False) -> list[RecordBatch]:
        """Objects up to ``end`` are committed: their batches move from the pending part of the
        log cache to its uploaded part. Returns the batches moved. ``reset_index``: the object
        index is loaded again on the next read (the commit's objects are not known)."""
        with self.lock:
            self.committed_end = max(self.committed_end, end)
            cut = bisect.bisect_right(self.log, end, key=lambda b: b.next_offset)
            moved = self.log[:cut]
            del self.log[:cut], self.log_positions[:cut]
            self.log_bytes -= sum(b.size for b in moved)
            if not self.destroyed:
                self.kept_log.extend(moved)
            if reset_index:
                self.objects = None
            elif self.objects is not None:
                self.objects.update(slices)
            self.commits += 1
            return moved

    def release_kept(self, end: int) -> None:
        """The message cache evicted uploaded batches up to ``end``: drop them (readers of
        those offsets go to the objects)."""
        with self.lock:
            cut = bisect.bisect_right(self.kept_log, end, key=lambda b: b.next_offset)
            del self.kept_log[:cut]

    @property
    def memory_start(self) -> int:
        """The first offset the log cache holds, uploaded or not (caller holds ``lock``)."""
        if self.kept_log:
            return max(self.kept_log[0].base_offset, self.start_offset)  # type: ignore[type-var]
        return self.committed_end

    def log_slice(self, start: int, end: int) -> list[RecordBatch]:
        """Log-cache batches (uploaded or not) holding offsets of ``[start, end)`` (caller
        holds ``lock``; ``start`` at or above :attr:`memory_start`)."""
        found = []
        for run in (self.kept_log, self.log):
            i = bisect.bisect_right(run, start, key=lambda b: b.next_offset)
            j = bisect.bisect_left(run, end, lo=i, key=lambda b: b.base_offset)
            found.extend(run[i:j])
        return found


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def new_object_index(objects: Sequence[StreamObject]) -> SortedKeyList:
    """A stream's committed objects by the first offset each holds (O(log n) lookups)."""
    return SortedKeyList((ObjectSlice(o.range.start_offset, o.range.end_offset, o.key, o.size)
                          for o in objects), key=lambda s: s.start)


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds: "
                         f"timeout=`{timeout}`")
    return float(timeout)


def as_batch(batch: object, max_bytes: int) -> RecordBatch:
    """What an append accepts: a RecordBatch, or a non-empty sequence of Record / bytes."""
    if isinstance(batch, RecordBatch):
        result = batch
    elif isinstance(batch, list | tuple):
        if not batch:
            raise ValueError("cannot append an empty batch: give at least one record")
        records = [r if isinstance(r, Record) else Record(r) for r in batch]
        result = RecordBatch.from_records(records)
    else:
        raise TypeError(f"append takes a RecordBatch or a list of Record / bytes, "
                        f"not {type(batch).__name__}")
    if result.size > max_bytes:
        raise ValueError(describe("batch too large (see Config.max_batch_bytes)",
                                  size=result.size, max=max_bytes))
    return result


class Stream:
    """A handle on one stream of a :class:`~streamlib.store.StreamStore`.

    Get one from ``store.create_stream()`` or ``store.open_stream()``. A writable handle holds
    the stream's epoch: opening the stream for write again (a new epoch) fences this one, whose
    next append or trim raises :class:`~streamlib.errors.FencedError`. A read-only handle
    reads and never fences anyone. Thread-safe; :meth:`append_async` serves asyncio code.
    """

    def __init__(self, store: StreamStore, state: StreamState, epoch: int | None) -> None:
        self._store = store
        self._state = state
        self._epoch = epoch  # None: read only
        self._closed = False

    def __repr__(self) -> str:
        mode = "read-only" if self._epoch is None else f"epoch={self._epoch}"
        name = "" if self._state.name is None else f" name={self._state.name!r}"
        return f"<Stream id={self._state.id}{name} {mode}>"

    # ---- what it is ----

    @property
    def id(self) -> int:
        return self._state.id

    @property
    def name(self) -> str | None:
        return self._state.name

    @property
    def epoch(self) -> int | None:
        """The epoch this handle writes with (None for a read-only handle)."""
        return self._epoch

    @property
    def writable(self) -> bool:
        return self._epoch is not None

    @property
    def start_offset(self) -> int:
        """The first readable offset (everything below was trimmed)."""
        self._check_usable()
        return self._state.start_offset

    @property
    def next_offset(self) -> int:
        """The offset after the last acknowledged record: the end of what is readable. Appends
        still in flight land at or above it, in call order."""
        self._check_usable()
        return self._state.acked_end

    def info(self) -> StreamInfo:
        self._check_usable()
        return self._state.info()

    # ---- writing ----

    def append(self, batch: RecordBatch | Sequence[Record | bytes], *,
               expected_offset: int | None = None, producer_id: str | int | None = None,
               sequence: int | None = None, timeout: float | None = None) -> AppendResult:
        """Append ``batch`` and return where it landed, once it is durable.

        ``batch`` is a :class:`~streamlib.RecordBatch` or a list of records (``Record`` or
        bytes values). ``expected_offset``: append only if this batch would land there (the
        stream's next offset, counting appends still in flight), else
        :class:`~streamlib.errors.OffsetMismatchError` and nothing is written. ``producer_id``
        and ``sequence`` make the append idempotent: a retry of a sequence already appended
        gets the original result back and writes nothing; sequences of one producer must follow
        each other (:class:`~streamlib.errors.SequenceError`). ``timeout`` (seconds) bounds the
        wait for room in a full WAL (:class:`~streamlib.errors.WalFullError`); default
        ``Config.append_timeout_ms``."""
        return self.append_future(batch, expected_offset=expected_offset,
                                  producer_id=producer_id, sequence=sequence,
                                  timeout=timeout).result()

    async def append_async(self, batch: RecordBatch | Sequence[Record | bytes], *,
                           expected_offset: int | None = None,
                           producer_id: str | int | None = None, sequence: int | None = None,
                           timeout: float | None = None) -> AppendResult:
        """:meth:`append` for asyncio: many may be awaited at once; they complete in offset
        order. The call itself waits only when the WAL is full (back-pressure)."""
        future = self.append_future(batch, expected_offset=expected_offset,
                                    producer_id=producer_id, sequence=sequence, timeout=timeout)
        return await asyncio.wrap_future(future)

    def append_future(self, batch: RecordBatch | Sequence[Record | bytes], *,
                      expected_offset: int | None = None, producer_id: str | int | None = None,
                      sequence: int | None = None,
                      timeout: float | None = None) -> Future[AppendResult]:
        """:meth:`append` without waiting: a future that completes once the batch is durable
        (futures of one stream complete in offset order). Argument errors raise here. The
        future cannot be cancelled (the append goes on), and it completes on one of streamlib's
        threads: a callback added to it must be quick and must not wait on the store."""
        placed = as_batch(batch, self._store.config.max_batch_bytes)
        if expected_offset is not None:
            expected_offset = check_int(expected_offset, "expected_offset", 0, INT64_MAX)
        if (producer_id is None) != (sequence is None):
            raise ValueError("producer_id and sequence go together: give both or neither")
        if producer_id is not None:
            if isinstance(producer_id, bool) or not isinstance(producer_id, str | int):
                raise TypeError(f"producer_id must be a str or an int, "
                                f"not {type(producer_id).__name__}")
            sequence = check_int(sequence, "sequence", 0, INT64_MAX)
        return self._store._submit(self, placed, expected_offset, producer_id, sequence,
                                   _check_timeout(timeout))

    def trim(self, offset: int) -> None:
        """Make records below ``offset`` unreadable, at once and durably (their storage is
        reclaimed later). ``offset`` may be up to :attr:`next_offset`; trimming data not yet
        uploaded uploads it first. A lower offset than the current start changes nothing."""
        offset = check_int(offset, "offset", 0, INT64_MAX)
        self._check_writer()
        self._store._trim(self, offset)

    # ---- reading ----

    def fetch(self, start_offset: int, end_offset: int | None = None, *,
              max_bytes: int = DEFAULT_FETCH_BYTES, timeout: float | None = None,
              cache_only: bool = False) -> FetchResult:
        """Batches holding the records of ``[start_offset, end_offset)`` (``None``: up to the
        end), in offset order and whole: the first may begin before ``start_offset``. The
        payloads add up to at most ``max_bytes``, except that one batch is always returned if
        there is one, however large. Fetching at :attr:`next_offset` returns nothing at once,
        or, with ``timeout`` (seconds), waits that long for an append (a long poll: it wakes
        when one is acknowledged). Outside ``[start_offset, next_offset]`` raises
        :class:`~streamlib.errors.OffsetOutOfRange` with the readable range.

        ``cache_only``: answer from memory (the log cache, cached blocks and indexes) or raise
        :class:`~streamlib.errors.CacheMiss` at once, never waiting on the object store — for
        an event loop that hands slow reads to a worker."""
        start_offset = check_int(start_offset, "start_offset", 0, INT64_MAX)
        if end_offset is not None:
            end_offset = check_int(end_offset, "end_offset", 0, INT64_MAX)
            if end_offset < start_offset:
                raise ValueError(describe("end_offset is below start_offset",
                                          start_offset=start_offset, end_offset=end_offset))
        max_bytes = check_int(max_bytes, "max_bytes", 0, INT64_MAX)
        wait = _check_timeout(timeout)
        if not isinstance(cache_only, bool):
            raise TypeError(f"cache_only must be a bool, not {type(cache_only).__name__}")
        self._check_usable()
        if wait:
            self._wait_for_append(start_offset, wait)
            self._check_usable()
        return self._store._fetch(self._state, start_offset, end_offset, max_bytes, cache_only)

    def read(self, from_offset: int, *, max_bytes: int = DEFAULT_FETCH_BYTES,
             idle_timeout: float | None = None) -> Iterator[RecordBatch]:
        """Every batch from ``from_offset`` on, following the tail: at the end it waits for the
        next append and wakes when it is acknowledged (no polling). Ends when this handle or
        the store closes, or when nothing arrives for ``idle_timeout`` seconds (None: never).
        The first batch may begin before ``from_offset`` (batch granularity)."""
        offset = check_int(from_offset, "from_offset", 0, INT64_MAX)
        max_bytes = check_int(max_bytes, "max_bytes", 0, INT64_MAX)
        idle = _check_timeout(idle_timeout)
        self._check_usable()
        reader = self._store._new_reader(self._state, offset)  # the cache keeps blocks for it
        try:
            while True:
                if self._closed or self._store._closing_or_closed():
                    return
                if offset >= self._state.acked_end:
                    self._check_usable()
                    if not self._wait_for_append(offset, idle):
                        return
                    continue
                self._check_usable()
                result = self._store._fetch(self._state, offset, None, max_bytes, False, reader)
                offset = result.next_fetch_offset  # before yielding: the caller may stop there
                yield from result.batches
        finally:  # ended, or closed by its user (or the garbage collector): not kept for it
            self._store._forget_reader(reader)

    async def read_async(self, from_offset: int, *, max_bytes: int = DEFAULT_FETCH_BYTES,
                         idle_timeout: float | None = None) -> AsyncIterator[RecordBatch]:
        """:meth:`read` for ``async for``: waits for appends without blocking the event loop
        (an acknowledgement resolves a future of this loop); fetches run in a worker thread,
        since reading uploaded data may wait on GETs."""
        offset = check_int(from_offset, "from_offset", 0, INT64_MAX)
        max_bytes = check_int(max_bytes, "max_bytes", 0, INT64_MAX)
        idle = _check_timeout(idle_timeout)
        loop = asyncio.get_running_loop()
        state = self._state
        self._check_usable()
        reader = self._store._new_reader(state, offset)
        waited_since: float | None = None
        try:
            while True:
                if self._closed or self._store._closing_or_closed():
                    return
                if offset >= state.acked_end:
                    self._check_usable()
                    if waited_since is None:
                        waited_since = time.monotonic()
                    waiter: asyncio.Future[None] = loop.create_future()
                    with state.lock:
                        if offset >= state.acked_end and not state.destroyed:
                            state.async_waiters.append((loop, waiter))
                        else:
                            waiter.set_result(None)
                    if self._store._remote(state):  # another node writes it: look every POLL
                        try:
                            await asyncio.wait_for(waiter, POLL)
                        except TimeoutError:
                            with state.lock:  # not woken: take it back
                                state.async_waiters = [(lp, f) for lp, f in state.async_waiters
                                                       if f is not waiter]
                            await asyncio.to_thread(self._store._sync)
                            if idle is not None and time.monotonic() - waited_since > idle:
                                return
                        continue
                    try:
                        await asyncio.wait_for(waiter, idle)
                    except TimeoutError:
                        return
                    continue
                self._check_usable()
                waited_since = None
                result = await asyncio.to_thread(self._store._fetch, state, offset, None,
                                                 max_bytes, False, reader)
                offset = result.next_fetch_offset
                for batch in result.batches:
                    yield batch
        finally:  # ended, or closed by its user (or the garbage collector): not kept for it
            self._store._forget_reader(reader)

    def _wait_for_append(self, offset: int, timeout: float | None) -> bool:
        """Wait until the stream reaches past ``offset``: True if it did, False after
        ``timeout`` seconds or once the handle, the stream or the store is gone. A stream
        another node writes (a shared manifest) is looked up every ``POLL`` seconds: its
        appends wake nobody here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        state = self._state
        while True:
            remote = self._store._remote(state)  # changes with a hand-over
            with state.lock:
                if state.acked_end > offset:
                    return True
                if self._closed or state.destroyed or self._store._closing_or_closed():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if not remote:
                    state.appended.wait(left)
                    continue
                state.appended.wait(POLL if left is None else min(left, POLL))
            self._store._sync()

    def offset_for_timestamp(self, timestamp: int) -> int | None:
        """The first readable offset whose record's timestamp is at least ``timestamp``
        (milliseconds), or None if there is none (Kafka's ListOffsets). Opaque batches count
        with their batch timestamps: the answer is the first offset of the first batch whose
        max timestamp reaches ``timestamp``."""
        timestamp = check_timestamp(timestamp, "timestamp")
        self._check_usable()
        return self._store._offset_for_timestamp(self._state, timestamp)

    # ---- life ----

    def close(self) -> None:
        """Stop using this handle (appends already made stay; the stream stays open in the
        store); its readers waiting at the tail end. Closing twice is fine."""
        self._closed = True
        with self._state.lock:
            self._state.wake_readers()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_usable(self) -> None:
        if self._closed:
            raise StreamClosed(describe("this stream handle is closed", stream=self.id))
        self._store._check_open()
        if self._state.destroyed:
            raise StreamNotFound(describe("the stream was destroyed", stream=self.id))

    def _check_writer(self) -> None:
        """For appends and trims (caller may hold ``order``)."""
        self._check_usable()
        if self._epoch is None:
            raise ReadOnlyError(describe("this handle is read-only: open the stream for write "
                                         "to change it", stream=self.id))
        if self._epoch != self._state.epoch:
            raise FencedError(describe("the stream was opened for write again: this handle is "
                                       "fenced", stream=self.id, epoch=self._epoch,
                                       current=self._state.epoch))


__all__ = ["DEFAULT_FETCH_BYTES", "ObjectSlice", "Stream", "StreamInfo", "StreamState"]
