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
picture, never while loading. ``ReadPath._tailing_lock`` (the open ``read()`` iterators) is a
leaf.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from streamlib.cache import Part, Uncached
from streamlib.errors import (
    CacheMiss,
    ConfigError,
    CorruptDataError,
    OffsetOutOfRange,
    describe,
)
from streamlib.objects import IndexCache, ObjectReader
from streamlib.records import FetchResult, PlacedBatch
from streamlib.state import INDEX_SLICES, ObjectSlice, StreamState

if TYPE_CHECKING:
    from sortedcontainers import SortedKeyList

    from streamlib.cache import Reader
    from streamlib.io import ObjectStore
    from streamlib.node import Node
    from streamlib.shared.coordination import Coordination

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    logged: list[PlacedBatch]
    committed: int


class ReadPath:
    """Reads of one node's streams."""

    def __init__(self, node: Node, objects: ObjectStore, coordination: Coordination,
                 archive: ObjectStore | None = None) -> None:
        self._node = node
        self._objects = objects
        self._stores = {"": objects} if archive is None else {"": objects, "archive": archive}
        self._coordination = coordination
        self._index_cache = IndexCache(node.config.index_cache_bytes)
        # Plans readahead and runs its parts: one ranged GET each, as many at once as threads.
        self._prefetcher = ThreadPoolExecutor(node.cache.readahead_gets,
                                              thread_name_prefix="streamlib-readahead")
        self._tailing_lock = threading.Lock()  # a leaf
        # The read() iterators open now, by reader id. GUARDED_BY(_tailing_lock)
        self._tailing: dict[int, tuple[StreamState, Reader]] = {}

    def stop(self) -> None:
        """No more readahead (the store closes). Parts already claimed still run: a read may
        be waiting for their blocks (plans not started yet see ``closing`` and stop)."""
        self._prefetcher.shutdown(wait=True)

    # ---- readers ----

    def new_reader(self, state: StreamState, offset: int) -> Reader:
        """A reader of its own for a ``read()`` iterator starting at ``offset``: the cache keeps
        blocks ahead of it."""
        reader = self._node.cache.reader_at(self._node.stream_key(state), offset, None)
        with self._tailing_lock:
            self._tailing[reader.id] = (state, reader)
        return reader

    def forget_reader(self, reader: Reader) -> None:
        """A ``read()`` iterator ended: the cache stops keeping blocks for it."""
        with self._tailing_lock:
            self._tailing.pop(reader.id, None)
        self._node.cache.forget(reader)

    def tailing(self) -> list[tuple[StreamState, int]]:
        """Each ``read()`` iterator open now: its stream and how many records it is behind
        the stream's end."""
        with self._tailing_lock:
            readers = list(self._tailing.values())
        # Read alone: a moment's values (the reader's position is the cache's to change).
        return [(state, max(0, state.acked_end - reader.position)) for state, reader in readers]

    # ---- fetch ----

    def fetch(self, state: StreamState, start: int, end: int | None, max_bytes: int,
              cache_only: bool = False, mine: Reader | None = None) -> FetchResult:
        """Batches of ``[start, end)`` (None: to the end) up to ``max_bytes`` (at least one).
        ``mine``: the reader of a ``read()`` iterator (else the cache finds or makes one)."""
        if start >= state.acked_end and self._coordination.remote(state):
            # At the end of another node's stream: has it moved? A cache-only fetch answers
            # from this node's view, and the fence thread's next look moves it.
            self._coordination.sync(wait=not cache_only)
        started = time.monotonic()
        reader = self._node.cache.reader_at(self._node.stream_key(state), start, mine)
        try:
            result = self._after_replacements(state, lambda: self._read(
                state, reader, start, max_bytes, cache_only,
                self._picture(state, start, end, cache_only)))
        except BaseException:
            self._node.cache.advance(reader, start)  # a retry of this fetch continues it
            raise
        self._node.metrics.fetched(time.monotonic() - started,
                                   sum(batch.size for batch in result.batches))
        return result

    def _after_replacements(self, state: StreamState, read: Callable[[], T]) -> T:
        """``read()``, and once more from a freshly loaded index if it found an object gone:
        compaction or deletion replaced it and its grace period passed under a slow reader
        (docs/lifecycle.md, "Readers across a swap"). Gone again: the object is really lost,
        and its FileNotFoundError stands."""
        try:
            return read()
        except FileNotFoundError as error:
            log.info("stream %d: an object was gone (%s); reading from the metadata's objects "
                     "again", state.id, error)
        self._coordination.sync(True)  # a shared store: another node may have swapped it
        state.objects_replaced()
        return read()

    def _picture(self, state: StreamState, start: int, end: int | None,
                 cache_only: bool = False) -> _Picture:
        while True:
            with state.lock:  # one consistent picture: the index, the log cache, the range
                low, high = state.start_offset, state.acked_end
                if not low <= start <= high:
                    raise OffsetOutOfRange(state.id, start, low, high)
                end = high if end is None else min(end, high)
                memory = state.memory_start  # below: read from objects; from here: memory
                slices: list[ObjectSlice] = []
                if start < min(end, memory):
                    window = state.index.find(start)
                    if window is None:
                        commits = state.commits
                    else:
                        if not window.to_end and window.high < min(end, memory):
                            end = window.high  # the rest is the next fetch's (another window)
                        slices = _slices(window.slices, start, min(end, memory))
                if start >= min(end, memory) or window is not None:
                    logged = (state.log_slice(max(start, memory), end)
                              if end > max(start, memory) else [])
                    return _Picture(low, high, end, memory, slices, logged, state.committed_end)
            if cache_only:  # loading the window reads the metadata, which may be slow
                raise CacheMiss(state.id, start, "the stream's object index")
            self._load_window(state, start, commits)

    def _read(self, state: StreamState, reader: Reader, start: int, max_bytes: int,
              cache_only: bool, picture: _Picture) -> FetchResult:
        batches: list[PlacedBatch] = []
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
                                         budget, cache_only, (reader, max_bytes)):
                for batch in block:
                    if batch.next_offset <= cursor:
                        continue
                    _check_dense(state, batch, cursor)
                    if batch.base_offset >= end or (batches and total + batch.size > max_bytes):
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

    def _read_log(self, state: StreamState, picture: _Picture, batches: list[PlacedBatch],
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
            self._node.cache.count_log_read(picture.logged[0].base_offset < picture.committed)
        return cursor, total

    # ---- objects and blocks ----

    def _load_window(self, state: StreamState, offset: int, commits: int) -> None:
        """Load the window of the stream's object index from ``offset`` (caller saw none
        covering it, with ``state.commits`` at ``commits``), unless a commit came meanwhile:
        then the caller looks again."""
        objects = self._node.meta.stream_objects(state.id, offset, limit=INDEX_SLICES)
        with state.lock:
            if state.commits == commits and state.index.find(offset) is None:
                state.index.install(offset, objects)

    def _window_slices(self, state: StreamState, start: int, end: int
                       ) -> tuple[list[ObjectSlice], int]:
        """The object slices holding ``[start, end)`` as far as one window of the index goes
        (loading it if needed), and where they end (``end`` or the window's end)."""
        while True:
            with state.lock:
                window = state.index.find(start)
                if window is not None:
                    stop = end if window.to_end else min(end, window.high)
                    return _slices(window.slices, start, stop), stop
                commits = state.commits
            self._load_window(state, start, commits)

    def _reader(self, piece: ObjectSlice, stream_id: int, offset: int,
                cache_only: bool) -> ObjectReader:
        store = self._stores.get(piece.tier)
        if store is None:
            raise ConfigError("archive_url", describe(
                "an object is in the archive tier and this store has none: set archive_url to "
                "read it", stream=stream_id, key=piece.key), "")
        reader = ObjectReader(store, piece.key, piece.size, cache=self._index_cache,
                              max_block_bytes=self._node.config.max_block_bytes)
        if (store.url, piece.key) not in self._index_cache:
            if cache_only:
                raise CacheMiss(stream_id, offset, f"the index of object `{piece.key}`")
            gets, fetched = reader.gets, reader.fetched_bytes
            reader.index()
            self._node.cache.count_index_gets(reader, gets, fetched)
        return reader

    def _blocks_of(self, stream_id: int, piece: ObjectSlice, start: int, end: int,
                   budget: Callable[[], int], cache_only: bool,
                   sequential: tuple[Reader, int] | None = None
                   ) -> Iterator[list[PlacedBatch]]:
        """The batches of each block of ``piece`` holding ``[start, end)``, loaded through the
        block cache a run at a time: as many blocks as the fetch's remaining ``budget()`` of
        bytes may use (decoded sizes, as the index gives them; at least one), so that a fetch
        bounded by max_bytes does not load, nor decompress, far beyond it, and what it loads is
        kept for the next fetch. ``sequential``: the fetch's reader and max_bytes: a run that
        goes to the store starts that reader's readahead beside its GET (the blocks after it
        in this object, as many as the cache gives the reader, in parallel ranged GETs:
        docs/cache.md)."""
        reader = self._reader(piece, stream_id, start, cache_only)
        entries = reader.index().blocks(stream_id, start, end)
        cache = self._node.cache
        i = 0
        while i < len(entries):
            left = budget()
            j = i
            decoded = 0
            while j < len(entries) and (j == i or decoded < left):
                decoded += reader.decoded_bound(entries[j])
                j += 1
            then = None
            if sequential is not None and not cache_only and j < len(entries):
                want = cache.sync_readahead(sequential[0], sequential[1])
                k = j
                while k < len(entries) and reader.decoded_bound(entries[k]) <= want:
                    want -= reader.decoded_bound(entries[k])
                    k += 1
                if k > j:
                    then = (sequential[0], entries[j:k])
            try:
                loaded = cache.load(reader, entries[i:j], cache_only=cache_only, then=then,
                                    spawn=self._spawn)
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

    def _spawn(self, part: Part) -> None:
        """Run a readahead's part on the pool (on this thread if the pool is shut down: the
        store is closing, and a read may be waiting for the part's blocks)."""
        try:
            self._prefetcher.submit(self._run_part, part)
        except RuntimeError:
            self._run_part(part)

    @staticmethod
    def _run_part(part: Part) -> None:
        try:
            part.run()
        except Exception as error:  # a read waiting for its blocks has the error
            log.debug("readahead of %r failed: %r", part.reader, error)

    def _readahead(self, state: StreamState, reader: Reader, start: int, want: int) -> None:
        """Claim about ``want`` decoded bytes of the stream's blocks from ``start`` for
        ``reader`` (as many as the cache's room allows), in parts that load on the pool, each
        with a ranged GET of its own, several at once."""
        cache = self._node.cache
        try:
            with state.lock:
                memory = state.memory_start
            slices = self._window_slices(state, start, memory)[0] if start < memory else []
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
                    parts, complete = cache.claim_ahead(objects, chosen, reader)
                    for part in parts:
                        self._spawn(part)
                    if not complete:
                        return  # the cache had no more room for this reader's readahead
        except Exception as error:  # a readahead is a guess: the read itself will report
            log.debug("readahead of stream %d failed: %r", state.id, error)
        finally:
            cache.readahead_done(reader)

    # ---- time lookup ----

    def offset_for_timestamp(self, state: StreamState, timestamp: int) -> int | None:
        """The first readable offset whose record's timestamp is at least ``timestamp``."""
        return self._after_replacements(state,
                                        lambda: self._offset_for_timestamp(state, timestamp))

    def _offset_for_timestamp(self, state: StreamState, timestamp: int) -> int | None:
        with state.lock:
            start, memory = state.start_offset, state.memory_start
            logged = state.log_slice(max(start, memory), state.acked_end)
        at = start
        while at < memory:  # window after window of the index, as far as it needs to look
            slices, at = self._window_slices(state, at, memory)
            for piece in slices:
                reader = self._reader(piece, state.id, start, False)
                for entry in reader.index().blocks(state.id, max(start, piece.start),
                                                   piece.end):
                    if entry.max_timestamp >= timestamp:
                        found = _first_at(self._node.cache.load(reader, [entry],
                                                                lookup=True)[0],
                                          timestamp, start)
                        if found is not None:
                            return found
            if not slices:
                break
        for batch in logged:
            found = _first_at([batch], timestamp, start)
            if found is not None:
                return found
        return None


def _check_dense(state: StreamState, batch: PlacedBatch, cursor: int) -> None:
    """A batch that starts past the offset the read has reached would skip records: never
    return that silently."""
    if batch.base_offset > cursor:
        raise CorruptDataError(describe("a gap in the stream's data as read", stream=state.id,
                                        expected=cursor, found=batch.base_offset))


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


def _first_at(batches: Sequence[PlacedBatch], timestamp: int, start: int) -> int | None:
    """The first offset at or above ``start`` in ``batches`` with a timestamp of at least
    ``timestamp``."""
    for batch in batches:
        base = batch.base_offset
        if batch.next_offset <= start or batch.max_timestamp < timestamp:
            continue
        if batch.encoding != "records":
            return max(base, start)
        for offset, record in enumerate(batch.records(), base):
            if offset >= start and record.timestamp >= timestamp:
                return offset
    return None


__all__ = ["ReadPath"]
