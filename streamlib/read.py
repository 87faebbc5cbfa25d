"""The read path: fetches, tailing reads' data and time lookups, from the log cache and from
committed objects through the block cache, with readahead (docs/cache.md, docs/store.md "The
read path").

```
fetch ─► [start_offset, acked_end] check ─► objects below the log cache's first offset:
         index ─► block runs (block cache; ranged GETs on a miss) ─► readahead in the background
      ─► the log cache from there (uploaded or not)
```

A fetch takes one consistent picture of the stream under its lock (range, object index slices,
log-cache batches), then reads outside it. Batches come back whole and dense: a gap between two
of them is :class:`~streamlib.errors.CorruptDataError`, never silently skipped.

Lock order: as :mod:`streamlib.node`; this module holds ``StreamState.lock`` only to take the
picture, never while loading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamlib.cache import Uncached, weight
from streamlib.config import READAHEAD_THREADS
from streamlib.errors import CacheMiss, CorruptDataError, OffsetOutOfRange, describe
from streamlib.objects import IndexCache, ObjectReader
from streamlib.records import FetchResult, RecordBatch
from streamlib.state import ObjectSlice, StreamState, new_object_index

if TYPE_CHECKING:
    from sortedcontainers import SortedKeyList

    from streamlib.cache import Reader
    from streamlib.io import ObjectStore
    from streamlib.node import Node
    from streamlib.shared.coordination import Coordination

log = logging.getLogger("streamlib.read")


@dataclass(frozen=True, slots=True)
class _Picture:
    """What a fetch reads, as the stream was at one moment: the readable range ``[low,
    high)``, the end of this fetch, the first offset held in memory, the object slices below
    it and the log-cache batches from it, and the committed end."""

    low: int
    high: int
    end: int
    memory: int
    slices: list[ObjectSlice]
    logged: list[RecordBatch]
    committed: int


class ReadPath:
    """Reads of one node's streams."""

    def __init__(self, node: Node, objects: ObjectStore, coordination: Coordination) -> None:
        self._node = node
        self._objects = objects
        self._coordination = coordination
        self._index_cache = IndexCache(node.config.index_cache_bytes)
        self._prefetcher = ThreadPoolExecutor(READAHEAD_THREADS,
                                              thread_name_prefix="streamlib-readahead")

    def stop(self) -> None:
        """No more readahead (the store closes)."""
        self._prefetcher.shutdown(wait=True, cancel_futures=True)

    # ---- readers ----

    def new_reader(self, state: StreamState, offset: int) -> Reader:
        """A reader of its own for a ``read()`` iterator starting at ``offset``: the cache keeps
        blocks ahead of it."""
        return self._node.cache.reader_at(self._node.stream_key(state), offset, None)

    def forget_reader(self, reader: Reader) -> None:
        """A ``read()`` iterator ended: the cache stops keeping blocks for it."""
        self._node.cache.forget(reader)

    # ---- fetch ----

    def fetch(self, state: StreamState, start: int, end: int | None, max_bytes: int,
              cache_only: bool = False, mine: Reader | None = None) -> FetchResult:
        """Batches of ``[start, end)`` (None: to the end) up to ``max_bytes`` (at least one).
        ``mine``: the reader of a ``read()`` iterator (else the cache finds or makes one)."""
        if start >= state.acked_end and self._coordination.remote(state):
            self._coordination.sync()  # at the end of another node's stream: has it moved?
        picture = self._picture(state, start, end)
        reader = self._node.cache.reader_at(self._node.stream_key(state), start, mine)
        try:
            return self._read(state, reader, start, max_bytes, cache_only, picture)
        except BaseException:
            self._node.cache.advance(reader, start)  # a retry of this fetch continues it
            raise

    def _picture(self, state: StreamState, start: int, end: int | None) -> _Picture:
        while True:
            self._load_index(state)
            with state.lock:  # one consistent picture: the index, the log cache, the range
                index = state.objects
                if index is None:
                    continue  # reset by a commit of unknown outcome: load it again
                low, high = state.start_offset, state.acked_end
                if not low <= start <= high:
                    raise OffsetOutOfRange(state.id, start, low, high)
                end = high if end is None else min(end, high)
                memory = state.memory_start  # below: read from objects; from here: memory
                slices = _slices(index, start, min(end, memory))
                logged = (state.log_slice(max(start, memory), end) if end > max(start, memory)
                          else [])
                return _Picture(low, high, end, memory, slices, logged, state.committed_end)

    def _read(self, state: StreamState, reader: Reader, start: int, max_bytes: int,
              cache_only: bool, picture: _Picture) -> FetchResult:
        batches: list[RecordBatch] = []
        total = 0
        end = picture.end

        def budget() -> int:  # what this fetch may still return, as it goes
            return max_bytes - total

        cursor = start
        full = False
        for piece in picture.slices:
            if batches and total >= max_bytes:
                full = True
                break
            for block in self._blocks_of(state.id, piece, cursor, min(end, piece.end),
                                         budget, cache_only):
                for batch in block:
                    if batch.next_offset <= cursor:
                        continue
                    _check_dense(state, batch, cursor)
                    base = batch.base_offset
                    assert base is not None
                    if base >= end or (batches and total + batch.size > max_bytes):
                        full = True
                        break
                    batches.append(batch)
                    total += batch.size
                    cursor = batch.next_offset
                if full:
                    break
            if full:
                break
            if cursor < min(end, piece.end):  # stopped inside this object: no gap after
                full = True
                break
        if not full and picture.logged:
            cursor, total = self._read_log(state, picture, batches, cursor, total, max_bytes)
        next_fetch = batches[-1].next_offset if batches else start
        self._node.cache.advance(reader, next_fetch)
        if picture.slices and not cache_only and next_fetch < picture.memory:
            self._schedule_readahead(state, reader)
        return FetchResult(tuple(batches), next_fetch, picture.low, picture.high)

    def _read_log(self, state: StreamState, picture: _Picture, batches: list[RecordBatch],
                  cursor: int, total: int, max_bytes: int) -> tuple[int, int]:
        """The fetch goes on in the log cache: adds to ``batches``; returns the new cursor and
        total."""
        from_log = 0
        for batch in picture.logged:
            if batch.next_offset <= cursor:
                continue
            _check_dense(state, batch, cursor)
            if batches and total + batch.size > max_bytes:
                break
            batches.append(batch)
            total += batch.size
            cursor = batch.next_offset
            from_log += 1
        if from_log:
            first = picture.logged[0].base_offset
            assert first is not None
            self._node.cache.count_log_read(first < picture.committed)
        return cursor, total

    # ---- objects and blocks ----

    def _load_index(self, state: StreamState) -> None:
        """Load the stream's object index if it is not (caller reads ``state.objects`` under
        ``state.lock`` afterwards, and calls again if it was reset meanwhile)."""
        while True:
            with state.lock:
                if state.objects is not None:
                    return
                commits = state.commits
            objects = self._node.meta.stream_objects(state.id, 0)
            with state.lock:
                if state.commits == commits and state.objects is None:
                    state.objects = new_object_index(objects)
                    return

    def _reader(self, piece: ObjectSlice, stream_id: int, offset: int,
                cache_only: bool) -> ObjectReader:
        reader = ObjectReader(self._objects, piece.key, piece.size, cache=self._index_cache,
                              max_block_bytes=self._node.config.max_block_bytes)
        if (self._objects.url, piece.key) not in self._index_cache:
            if cache_only:
                raise CacheMiss(stream_id, offset, f"the index of object `{piece.key}`")
            gets, fetched = reader.gets, reader.fetched_bytes
            reader.index()
            self._node.cache.count_index_gets(reader, gets, fetched)
        return reader

    def _blocks_of(self, stream_id: int, piece: ObjectSlice, start: int, end: int,
                   budget: Callable[[], int], cache_only: bool) -> Iterator[list[RecordBatch]]:
        """The batches of each block of ``piece`` holding ``[start, end)``, loaded through the
        block cache a run at a time: as many blocks as the fetch's remaining ``budget()`` of
        bytes may use (decoded sizes, as the index gives them; at least one), so that a fetch
        bounded by max_bytes does not load, nor decompress, far beyond it, and what it loads is
        kept for the next fetch."""
        reader = self._reader(piece, stream_id, start, cache_only)
        entries = reader.index().blocks(stream_id, start, end)
        i = 0
        while i < len(entries):
            left = budget()
            j = i
            decoded = 0
            while j < len(entries) and (j == i or decoded < left):
                decoded += reader.decoded_bound(entries[j])
                j += 1
            try:
                loaded = self._node.cache.load(reader, entries[i:j], cache_only=cache_only)
            except Uncached:
                raise CacheMiss(stream_id, max(start, entries[i].start_offset),
                                f"blocks of object `{piece.key}`") from None
            yield from loaded
            i = j

    # ---- readahead ----

    def _schedule_readahead(self, state: StreamState, reader: Reader) -> None:
        todo = self._node.cache.start_readahead(reader)
        if todo is None:
            return
        try:
            self._prefetcher.submit(self._readahead, state, reader, *todo)
        except RuntimeError:  # shut down: the store is closing
            self._node.cache.readahead_done(reader)

    def _readahead(self, state: StreamState, reader: Reader, start: int, want: int) -> None:
        """Load about ``want`` decoded bytes of the stream's blocks from ``start`` into the
        cache, in the background, for ``reader`` (as many as the cache's room allows)."""
        cache = self._node.cache
        try:
            self._load_index(state)
            with state.lock:
                index = state.objects
                slices = [] if index is None else _slices(index, start, state.memory_start)
            for piece in slices:
                if want <= 0 or self._node.closing.is_set():
                    return
                objects = self._reader(piece, state.id, start, False)
                chosen = []
                for entry in objects.index().blocks(state.id, max(start, piece.start), piece.end):
                    if want <= 0:
                        break
                    if cache.holds(objects, entry):
                        continue  # loaded by a fetch's own run, or loading: not ours to count
                    chosen.append(entry)
                    want -= objects.decoded_bound(entry)
                if chosen:
                    found = cache.load(objects, chosen, ahead_of=reader)
                    loaded = [(entry, weight(batches))
                              for entry, batches in zip(chosen, found, strict=True)
                              if batches is not None]
                    cache.prefetched(reader, [e for e, _ in loaded], [w for _, w in loaded])
                    if len(loaded) < len(chosen):
                        return  # the cache had no more room for this reader's readahead
        except Exception as error:  # a readahead is a guess: the read itself will report
            log.debug("readahead of stream %d failed: %r", state.id, error)
        finally:
            cache.readahead_done(reader)

    # ---- time lookup ----

    def offset_for_timestamp(self, state: StreamState, timestamp: int) -> int | None:
        """The first readable offset whose record's timestamp is at least ``timestamp``."""
        while True:
            self._load_index(state)
            with state.lock:
                index = state.objects
                if index is None:
                    continue  # reset meanwhile: load it again
                start, memory = state.start_offset, state.memory_start
                slices = _slices(index, start, memory)
                logged = state.log_slice(max(start, memory), state.acked_end)
                break
        for piece in slices:
            reader = self._reader(piece, state.id, start, False)
            for entry in reader.index().blocks(state.id, max(start, piece.start), piece.end):
                if entry.max_timestamp >= timestamp:
                    found = _first_at(self._node.cache.load(reader, [entry], lookup=True)[0],
                                      timestamp, start)
                    if found is not None:
                        return found
        for batch in logged:
            found = _first_at([batch], timestamp, start)
            if found is not None:
                return found
        return None


def _check_dense(state: StreamState, batch: RecordBatch, cursor: int) -> None:
    """A batch that starts past the offset the read has reached would skip records: never
    return that silently."""
    base = batch.base_offset
    assert base is not None
    if base > cursor:
        raise CorruptDataError(describe("a gap in the stream's data as read", stream=state.id,
                                        expected=cursor, found=base))


def _slices(index: SortedKeyList, start: int, end: int) -> list[ObjectSlice]:
    """The object slices of a stream's index holding offsets of ``[start, end)``."""
    if start >= end:
        return []
    found = []
    for piece in index.islice(max(index.bisect_key_right(start) - 1, 0)):
        if piece.start >= end:
            break
        if piece.end > start:
            found.append(piece)
    return found


def _first_at(batches: Sequence[RecordBatch], timestamp: int, start: int) -> int | None:
    """The first offset at or above ``start`` in ``batches`` with a timestamp of at least
    ``timestamp``."""
    for batch in batches:
        base = batch.base_offset
        assert base is not None
        if batch.next_offset <= start or batch.max_timestamp < timestamp:
            continue
        if batch.encoding != "records":
            return max(base, start)
        for offset, record in enumerate(batch.records(), base):
            if offset >= start and record.timestamp is not None and record.timestamp >= timestamp:
                return offset
    return None


__all__ = ["ReadPath"]
