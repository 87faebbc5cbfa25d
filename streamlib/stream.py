"""The :class:`Stream` handle users hold: argument checks, then the store's write and read paths
through a documented internal interface (:class:`StreamPaths`). What the store keeps of each
stream is :class:`~streamlib.state.StreamState` (docs/store.md).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol

from streamlib import aio, codec
from streamlib.config import LONGEST_WAIT
from streamlib.errors import ReadOnlyError, StreamClosed, StreamNotFound, describe
from streamlib.meta import Retention, check_retention
from streamlib.records import (
    INT64_MAX,
    AppendResult,
    FetchResult,
    PlacedBatch,
    Record,
    RecordBatch,
    check_int,
    check_timestamp,
)
from streamlib.state import StreamInfo, StreamState

if TYPE_CHECKING:
    from streamlib.cache import Reader
    from streamlib.config import Config
    from streamlib.workers import Workers

DEFAULT_FETCH_BYTES = 1024 * 1024
"""A fetch's ``max_bytes`` unless given."""


class StreamPaths(Protocol):
    """What a :class:`Stream` handle asks of its store (implemented inside
    :mod:`streamlib.store`). Each call takes the stream's state; those that write take the
    handle's epoch."""

    config: Config
    workers: Workers
    """The store's threads for the asyncio face's calls that may wait (streamlib.workers)."""

    def check_open(self) -> None:
        """StreamClosed once the store is closed."""

    def closing(self) -> bool:
        """Whether the store is closing or closed (readers end)."""

    def append(self, state: StreamState, epoch: int, batch: RecordBatch,
               expected_offset: int | None, producer_id: object, sequence: int | None,
               timeout: float | None, lead: bool = False) -> Future[AppendResult]:
        """The write path: a future completed once the batch is durable (``lead``: the caller
        waits for it next, and may write the WAL itself)."""

    def trim(self, state: StreamState, epoch: int, offset: int) -> None:
        """Records below ``offset`` become unreadable."""

    def retention(self, state: StreamState) -> Retention | None:
        """The stream's retention as the metadata keeps it."""

    def set_retention(self, state: StreamState, epoch: int,
                      retention: Retention | None) -> None:
        """Keep ``retention`` with the stream (the writer's ``epoch``)."""

    def fetch(self, state: StreamState, start: int, end: int | None, max_bytes: int,
              cache_only: bool = False, reader: Reader | None = None) -> FetchResult:
        """The read path (``reader``: a ``read()`` iterator's own)."""

    def new_reader(self, state: StreamState, offset: int) -> Reader:
        """A reader of its own for a ``read()`` iterator (the cache keeps blocks for it)."""

    def forget_reader(self, reader: Reader) -> None:
        """A ``read()`` iterator ended."""

    def offset_for_timestamp(self, state: StreamState, timestamp: int) -> int | None:
        """The time lookup."""

    def remote(self, state: StreamState) -> bool:
        """Whether another node may be writing the stream (its appends wake nobody here)."""

    def sync(self) -> None:
        """Read other nodes' changes (a shared store)."""


def _check_timeout(timeout: object, what: str = "timeout") -> float | None:
    """A wait in seconds: None, or a non-negative number; ``inf`` (or anything above
    :data:`~streamlib.config.LONGEST_WAIT`) waits until the event or close."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{what} must be a number of seconds or None, "
                        f"not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{what} must be a non-negative number of seconds: {what}=`{timeout}`")
    return min(float(timeout), LONGEST_WAIT)


def _fetch_args(start: object, end: object, max_bytes: object, timeout: object,
                cache_only: object) -> tuple[int, int | None, int, float | None]:
    """A fetch's arguments checked: start, end, max_bytes and the long poll's wait."""
    start = check_int(start, "start_offset", 0, INT64_MAX)
    if end is not None:
        end = check_int(end, "end_offset", 0, INT64_MAX)
        if end < start:
            raise ValueError(describe("end_offset is below start_offset",
                                      start_offset=start, end_offset=end))
    max_bytes = check_int(max_bytes, "max_bytes", 0, INT64_MAX)
    wait = _check_timeout(timeout)
    if not isinstance(cache_only, bool):
        raise TypeError(f"cache_only must be a bool, not {type(cache_only).__name__}")
    return start, end, max_bytes, wait


def as_batch(batch: object, max_bytes: int) -> RecordBatch:
    """What an append accepts: a RecordBatch, or a non-empty sequence of Record / bytes, whose
    data (:func:`data_bytes`) is at most ``max_bytes`` and whose encoding (framed: the batch
    header, each record's framing, the data) at most twice that."""
    if isinstance(batch, RecordBatch):
        result = batch
    elif isinstance(batch, list | tuple):
        if not batch:
            raise ValueError("cannot append an empty batch: give at least one record")
        plain = all(type(value) is bytes for value in batch)  # values alone: no Records built
        records = batch if plain else [r if isinstance(r, Record) else Record(r) for r in batch]
        try:
            result = codec.encode_values(batch) if plain else RecordBatch.from_records(records)
        except ValueError:  # the format's own limit (64 MiB of payload), or a bad record
            data = sum(map(len, batch)) if plain else sum(map(_record_data_bytes, records))
            _check_size(data, None, max_bytes, len(records))
            raise
    else:
        raise TypeError(f"append takes a RecordBatch or a list of Record / bytes, "
                        f"not {type(batch).__name__}")
    if result.size > max_bytes:  # the payload holds the data and its framing: look closer
        _check_size(data_bytes(result), result.size, max_bytes, result.count)
    return result


def _check_size(data: int, payload: int | None, max_bytes: int, count: int) -> None:
    if data > max_bytes:
        raise ValueError(describe("batch too large for Config.max_batch_bytes (which counts "
                                  "the records' keys, values and headers, or an opaque "
                                  "batch's payload)",
                                  data=data, max_batch_bytes=max_bytes, records=count))
    # The bound a data block read back is checked against (Config.max_block_bytes) allows a
    # framed batch of twice max_batch_bytes: only many tiny records come near it.
    if payload is not None and codec.BATCH_HEADER_SIZE + payload > 2 * max_bytes:
        raise ValueError(describe("batch too large: with each record's framing its encoding "
                                  "exceeds twice Config.max_batch_bytes (many small records: "
                                  "split the batch)", encoded=codec.BATCH_HEADER_SIZE + payload,
                                  data=data, max_batch_bytes=max_bytes, records=count))


def _record_data_bytes(record: Record) -> int:
    value, key, headers, _ = record
    return (len(value) + (0 if key is None else len(key))
            + sum(len(name.encode("utf-8")) + len(v) for name, v in headers))


def data_bytes(batch: RecordBatch) -> int:
    """What ``Config.max_batch_bytes`` counts: the records' keys, values, header names (UTF-8)
    and header values — an opaque batch's payload — without the framing the codec adds."""
    if batch.encoding != "records":
        return batch.size
    index = codec.index_records(batch.payload, batch.count, batch.base_timestamp)
    spans, headers = index.records, index.headers
    keys = spans[2::7]  # a missing key's length is -1
    return (sum(keys) + keys.count(-1) + sum(spans[4::7]) + sum(headers[1::4])
            + sum(headers[3::4]))


class Stream:
    """A handle on one stream of a :class:`~streamlib.store.StreamStore`.

    Get one from ``store.create_stream()`` or ``store.open_stream()``. A writable handle holds
    the stream's epoch: opening the stream for write again (a new epoch) fences this one, whose
    next append or trim raises :class:`~streamlib.errors.FencedError`. A read-only handle
    reads and never fences anyone. Thread-safe; the ``_async`` twins serve asyncio code.
    """

    def __init__(self, paths: StreamPaths, state: StreamState, epoch: int | None) -> None:
        self._paths = paths
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
        each other (:class:`~streamlib.errors.SequenceError`). ``timeout`` (seconds; ``inf``:
        no bound) bounds the wait for room in a full WAL or cache
        (:class:`~streamlib.errors.WalFullError`); default ``Config.append_timeout_ms``."""
        return self._submit(batch, expected_offset, producer_id, sequence, timeout,
                            lead=True).result()

    async def append_async(self, batch: RecordBatch | Sequence[Record | bytes], *,
                           expected_offset: int | None = None,
                           producer_id: str | int | None = None, sequence: int | None = None,
                           timeout: float | None = None) -> AppendResult:
        """:meth:`append` for asyncio: many may be awaited at once; they complete in offset
        order, and take their offsets in the order of the calls. The batch is checked (and
        encoded) on the event loop, then handed to the write path by the store's appending
        thread, so the loop never waits — not for room in a full WAL or cache either: that
        append waits on that thread, and the ones called after it queue behind it (docs/
        asyncio.md). Cancelled while queued, the append is not made; once handed to the WAL it
        lands whatever happens (``producer_id`` / ``sequence`` make a retry safe)."""
        placed, expected, sequence, wait, epoch = self._checked(batch, expected_offset,
                                                                producer_id, sequence, timeout)
        return await aio.append_later(self._paths, self._state, epoch, placed, expected,
                                      producer_id, sequence, wait)

    def append_future(self, batch: RecordBatch | Sequence[Record | bytes], *,
                      expected_offset: int | None = None, producer_id: str | int | None = None,
                      sequence: int | None = None,
                      timeout: float | None = None) -> Future[AppendResult]:
        """:meth:`append` without waiting: a future that completes once the batch is durable
        (futures of one stream complete in offset order). Argument errors raise here. The
        future cannot be cancelled (the append goes on), and it completes on one of streamlib's
        threads, or in a thread inside :meth:`append` that writes the WAL for others too: a
        callback added to it must be quick and must not wait on the store."""
        return self._submit(batch, expected_offset, producer_id, sequence, timeout, lead=False)

    def _submit(self, batch: RecordBatch | Sequence[Record | bytes],
                expected_offset: int | None, producer_id: str | int | None,
                sequence: int | None, timeout: float | None, *,
                lead: bool) -> Future[AppendResult]:
        placed, expected_offset, sequence, wait, epoch = self._checked(
            batch, expected_offset, producer_id, sequence, timeout)
        return self._paths.append(self._state, epoch, placed, expected_offset, producer_id,
                                  sequence, wait, lead)

    def _checked(self, batch: RecordBatch | Sequence[Record | bytes],
                 expected_offset: int | None, producer_id: str | int | None,
                 sequence: int | None, timeout: float | None
                 ) -> tuple[RecordBatch, int | None, int | None, float | None, int]:
        """An append's arguments checked: the batch, expected offset, sequence, timeout and
        the epoch this handle writes with."""
        placed = as_batch(batch, self._paths.config.max_batch_bytes)
        if expected_offset is not None:
            expected_offset = check_int(expected_offset, "expected_offset", 0, INT64_MAX)
        if (producer_id is None) != (sequence is None):
            raise ValueError("producer_id and sequence go together: give both or neither")
        if producer_id is not None:
            if isinstance(producer_id, bool) or not isinstance(producer_id, str | int):
                raise TypeError(f"producer_id must be a str or an int, "
                                f"not {type(producer_id).__name__}")
            sequence = check_int(sequence, "sequence", 0, INT64_MAX)
        wait = _check_timeout(timeout)
        return placed, expected_offset, sequence, wait, self._check_writer()

    def trim(self, offset: int) -> None:
        """Make records below ``offset`` unreadable, at once and durably (their storage is
        reclaimed later). ``offset`` may be up to :attr:`next_offset`; trimming data not yet
        uploaded uploads it first. A lower offset than the current start changes nothing."""
        offset = check_int(offset, "offset", 0, INT64_MAX)
        self._paths.trim(self._state, self._check_writer(), offset)

    async def trim_async(self, offset: int) -> None:
        """:meth:`trim` for asyncio (on one of the store's threads: it may upload first).
        Cancelled, the trim goes on if it had started."""
        await self._paths.workers.run(functools.partial(self.trim, offset))

    @property
    def retention(self) -> Retention | None:
        """What of the stream is kept (None: everything, or the store's default retention if
        it has one): see :meth:`set_retention`."""
        self._check_usable()
        return self._paths.retention(self._state)

    def set_retention(self, retention: Retention | None) -> None:
        """Keep only what ``retention`` says: records younger than ``max_age`` seconds and the
        newest ``max_bytes`` bytes of uploaded data (either or both; None: the store's default,
        ``retention_max_age_ms`` / ``retention_max_bytes``, which keeps everything unless set).
        Kept in the metadata with the stream, and applied by the node that writes the stream
        as trims, in the background every ``compaction_interval_ms``, at block granularity
        (a little more than asked may stay; what is still in the WAL always stays)."""
        retention = check_retention(retention)
        self._paths.set_retention(self._state, self._check_writer(), retention)

    async def retention_async(self) -> Retention | None:
        """:attr:`retention` for asyncio (it reads the metadata)."""
        self._check_usable()
        return await self._paths.workers.run(functools.partial(self._paths.retention,
                                                               self._state))

    async def set_retention_async(self, retention: Retention | None) -> None:
        """:meth:`set_retention` for asyncio."""
        await self._paths.workers.run(functools.partial(self.set_retention, retention))

    # ---- reading ----

    def fetch(self, start_offset: int, end_offset: int | None = None, *,
              max_bytes: int = DEFAULT_FETCH_BYTES, timeout: float | None = None,
              cache_only: bool = False) -> FetchResult:
        """Batches holding the records of ``[start_offset, end_offset)`` (``None``: up to the
        end), in offset order and whole: the first may begin before ``start_offset``. The
        payloads add up to at most ``max_bytes``, except that one batch is always returned if
        there is one, however large. Fetching at :attr:`next_offset` returns nothing at once,
        or, with ``timeout`` (seconds; ``inf``: until one comes or the handle or store closes),
        waits that long for an append (a long poll: it wakes when one is acknowledged).
        Outside ``[start_offset, next_offset]`` raises
        :class:`~streamlib.errors.OffsetOutOfRange` with the readable range.

        ``cache_only``: answer from memory (the log cache, cached blocks and indexes) or raise
        :class:`~streamlib.errors.CacheMiss` at once, never waiting on the object store — for
        an event loop that hands slow reads to a worker (:meth:`fetch_async` does that)."""
        start_offset, end_offset, max_bytes, wait = _fetch_args(start_offset, end_offset,
                                                                max_bytes, timeout, cache_only)
        self._check_usable()
        if wait:
            self._wait_for_append(start_offset, wait)
            self._check_usable()
        return self._paths.fetch(self._state, start_offset, end_offset, max_bytes, cache_only)

    async def fetch_async(self, start_offset: int, end_offset: int | None = None, *,
                          max_bytes: int = DEFAULT_FETCH_BYTES, timeout: float | None = None,
                          cache_only: bool = False) -> FetchResult:
        """:meth:`fetch` for asyncio, with its answers and errors. A long poll (``timeout``)
        waits on the event loop for the acknowledgement that wakes it: no thread, no polling;
        cancelled, it leaves nothing behind. What the log cache holds is read on the loop;
        what needs the object store or the metadata, on one of the store's threads (cancelled,
        that read goes on and its answer is dropped)."""
        start_offset, end_offset, max_bytes, wait = _fetch_args(start_offset, end_offset,
                                                                max_bytes, timeout, cache_only)
        self._check_usable()
        if wait:
            await aio.wait_for_append(self._paths, self._state, start_offset, wait,
                                      self._is_closed)
            self._check_usable()
        return await aio.fetch(self._paths, self._state, start_offset, end_offset, max_bytes,
                               cache_only)

    def read(self, from_offset: int, *, max_bytes: int = DEFAULT_FETCH_BYTES,
             idle_timeout: float | None = None) -> Iterator[PlacedBatch]:
        """Every batch from ``from_offset`` on, following the tail: at the end it waits for the
        next append and wakes when it is acknowledged (no polling). Ends when this handle or
        the store closes, or when nothing arrives for ``idle_timeout`` seconds (None: never).
        The first batch may begin before ``from_offset`` (batch granularity)."""
        offset = check_int(from_offset, "from_offset", 0, INT64_MAX)
        max_bytes = check_int(max_bytes, "max_bytes", 0, INT64_MAX)
        idle = _check_timeout(idle_timeout, "idle_timeout")
        self._check_usable()
        reader = self._paths.new_reader(self._state, offset)  # the cache keeps blocks for it
        try:
            while True:
                if self._closed or self._paths.closing():
                    return
                if offset >= self._state.acked_end:
                    self._check_usable()
                    if not self._wait_for_append(offset, idle):
                        return
                    continue
                self._check_usable()
                result = self._paths.fetch(self._state, offset, None, max_bytes, False, reader)
                offset = result.next_fetch_offset  # before yielding: the caller may stop there
                yield from result.batches
        finally:  # ended, or closed by its user (or the garbage collector): not kept for it
            self._paths.forget_reader(reader)

    async def read_async(self, from_offset: int, *, max_bytes: int = DEFAULT_FETCH_BYTES,
                         idle_timeout: float | None = None) -> AsyncIterator[PlacedBatch]:
        """:meth:`read` for ``async for``: waits for appends on the event loop (an
        acknowledgement resolves a future of the loop: no thread, no polling); reads what the
        log cache holds on the loop, and what needs the object store on one of the store's
        threads. Leaving the loop early (``break``, an error, a cancellation) releases what it
        held — its wait and its reader in the cache, at once or when its read in flight ends —
        once the iterator is closed: at once with ``contextlib.aclosing(stream.read_async(...))``,
        else when the event loop finalizes it."""
        offset = check_int(from_offset, "from_offset", 0, INT64_MAX)
        max_bytes = check_int(max_bytes, "max_bytes", 0, INT64_MAX)
        idle = _check_timeout(idle_timeout, "idle_timeout")
        tail = self.tail(offset)
        try:
            while True:
                if tail.ended():
                    return
                if not tail.has_data():
                    self._check_usable()
                    if not await tail.wait(idle):
                        if not tail.ended():
                            self._check_usable()  # a destroyed stream: StreamNotFound
                        return
                    continue
                self._check_usable()
                result = await tail.fetch(max_bytes)
                for batch in result.batches:
                    yield batch
        finally:  # ended, or closed by its user (or the event loop's finalizer)
            tail.close()

    def tail(self, from_offset: int) -> aio.Tail:
        """A reader's place in the stream for asyncio code, from ``from_offset``
        (:class:`~streamlib.aio.Tail`): what :meth:`read_async` and
        :class:`~streamlib.Follower` are built on. Close it when done."""
        offset = check_int(from_offset, "from_offset", 0, INT64_MAX)
        self._check_usable()
        return aio.Tail(self._paths, self._state, offset, self._is_closed, self._check_usable)

    def _is_closed(self) -> bool:
        return self._closed

    def _wait_for_append(self, offset: int, timeout: float | None) -> bool:
        """Wait until the stream reaches past ``offset``: True if it did, False after
        ``timeout`` seconds or once the handle, the stream or the store is gone. A stream
        another node writes (a shared store) is looked up every ``reader_poll_ms``: its
        appends wake nobody here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        state = self._state
        while True:
            remote = self._paths.remote(state)  # changes with a hand-over
            with state.lock:
                if state.acked_end > offset:
                    return True
                if self._closed or state.destroyed or self._paths.closing():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if not remote:
                    state.changed.wait(left)
                    continue
                poll = self._paths.config.reader_poll_ms / 1000
                state.changed.wait(poll if left is None else min(left, poll))
            self._paths.sync()

    def offset_for_timestamp(self, timestamp: int) -> int | None:
        """The first readable offset whose record's timestamp is at least ``timestamp``
        (milliseconds), or None if there is none (Kafka's ListOffsets). Opaque batches count
        with their batch timestamps: the answer is the first offset of the first batch whose
        max timestamp reaches ``timestamp``."""
        timestamp = check_timestamp(timestamp, "timestamp")
        self._check_usable()
        return self._paths.offset_for_timestamp(self._state, timestamp)

    async def offset_for_timestamp_async(self, timestamp: int) -> int | None:
        """:meth:`offset_for_timestamp` for asyncio (on one of the store's threads: it may
        read object indexes)."""
        return await self._paths.workers.run(functools.partial(self.offset_for_timestamp,
                                                               timestamp))

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
        self._paths.check_open()
        if self._state.destroyed:
            raise StreamNotFound(describe("the stream was destroyed", stream=self.id))

    def _check_writer(self) -> int:
        """For appends and trims: the epoch this handle writes with (the write path checks it
        against the stream's under the stream's lock)."""
        self._check_usable()
        if self._epoch is None:
            raise ReadOnlyError(describe("this handle is read-only: open the stream for write "
                                         "to change it", stream=self.id))
        return self._epoch


__all__ = ["DEFAULT_FETCH_BYTES", "Stream", "StreamInfo", "StreamPaths", "as_batch", "data_bytes"]
