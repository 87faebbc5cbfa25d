"""The message cache: one memory budget for the log cache (acknowledged batches, before and
just after their upload) and the block cache (decoded data blocks of uploaded objects), shared
by every reader of a store or of several stores, with readers tracked for readahead and
eviction (docs/cache.md).

**The log cache's bytes.** An append reserves its batch's bytes before it enters the WAL
(:meth:`MessageCache.reserve`, waiting for room: back-pressure); they stay **pinned** (never
evicted) until the batch is committed in an object. Then they become a **log chunk**: the
batches a commit took from one stream, kept so that a tailing reader a little behind the tail
still reads from memory, and evicted like a block (the chunk's ``release`` drops it from the
stream, together with the stream's older chunks: a stream's log stays one contiguous run).

**Blocks** are keyed by ``(store URL, object key, block position)`` and weighed by their decoded
bytes. A miss loads the run of missing blocks a read needs with the object reader's coalesced
ranged GETs; a reader that needs a block another is loading waits for that load instead of
starting its own GET. A load counts in the budget from before its GET until its blocks are
admitted: the decoded size its blocks will take (the index says it, or the reader's
``max_block_bytes`` bounds it) is reserved first, evicting as an admission would. A readahead
reserves the most its blocks may weigh once loaded (:func:`weight_bound`), only in room that is
free or evictable without touching what lies ahead of a reader, and loads only the blocks that
fit: all it loads is kept. A fetch's load reserves what room it can make and loads all it needs
(the read must be answered): the part the budget cannot hold (pinned bytes fill it, or a block
is larger than the whole budget) is returned to the fetch, outside the budget, and not kept
(the last block it read into is kept first: its reader's next fetch starts there).

**Readers.** A fetch that starts where an earlier fetch of the same stream ended continues that
reader; others start a new one. A reader seen for ``reader_timeout`` seconds no more is gone.
Each reader has a readahead **window** (bytes, first ``first_window``), bounded by the room the
cache can give it (:mod:`streamlib._readahead`): it doubles, up to ``readahead_bytes``, each time
the reader reads a block prefetched for it, and halves with a cool-down when such a block goes
unread (evicted, or not kept for lack of room). Blocks already in memory (a fetch's own run may
reach past what it returned) do not use the window: readahead loads what is missing beyond them.
A readahead claims its blocks at once and loads them in :class:`Part` s, runs of at most
``readahead_get_bytes`` stored bytes of one object, each with a ranged GET of its own, on the
read path's pool (``readahead_gets`` threads): a large object is fetched as several would be.

**Eviction** (consumer focus), when a load or a reservation needs room under ``max_bytes`` (a
hard limit): first blocks and chunks that every active reader of their stream has passed, then
those of streams no active reader is on (least recently used first: chunks in upload order),
and only then those ahead of a reader, farthest ahead first (a stream's log chunks leave oldest
first: only its oldest is ever a candidate).

Streams are named by a :data:`StreamKey`, ``(objects URL, stream id)``: stores on one bucket
see one stream under one key.

Lock order: one lock, ``MessageCache._lock`` (``_room`` is a condition of it), level 5 of the
node's order (:mod:`streamlib.node`). Under it the cache takes only a stream's
``StreamState.lock`` (a log chunk's ``release``, when it is evicted) and runs ``reserve``'s
``abort`` (which takes no lock); it is never held while asking a store for an upload, reading
an object or waiting for another reader's load. So it is never taken under a stream's lock.
"""

from __future__ import annotations

import functools
import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import overload

from streamlib._readahead import (
    REFILL,
    Part,
    Reader,
    Readers,
    StreamKey,
    grow,
    shrink,
    window_left,
)
from streamlib.codec import BATCH_HEADER_SIZE
from streamlib.objects import IndexEntry, ObjectReader, plan_parts, plan_runs
from streamlib.records import PlacedBatch, RecordBatch, check_int

BATCH_OVERHEAD = 200
"""Bytes a cached batch costs beyond its payload (the object and its fields), for the budget."""

MiB = 1024 * 1024

BlockKey = tuple[str, str, int] | tuple[str, str, int, int]
"""``(objects URL, object key, block position)`` for a block, ``("log", scope, stream id,
first offset)`` for a log chunk."""


class Uncached(Exception):
    """Raised inside :meth:`MessageCache.load` with ``cache_only`` when a block is not in memory."""


@dataclass(slots=True)
class CacheStats:
    """Counters of the read path (a snapshot: ``store.stats()["cache"]``)."""

    block_hits: int = 0
    block_misses: int = 0
    shared_loads: int = 0
    """Blocks a read found being loaded by another and waited for instead of a GET."""
    gets: int = 0
    get_bytes: int = 0
    log_reads: int = 0
    """Fetches answered (at least partly) from the log cache, with no object-store request."""
    uploaded_log_reads: int = 0
    """Of those, fetches that read uploaded batches kept in the log cache (GETs saved)."""
    log_waits: int = 0
    """Appends that waited for the log cache's room (back-pressure: uploads behind)."""
    cache_only_misses: int = 0
    readahead_blocks: int = 0
    """Blocks loaded ahead of a reader, in the background."""
    readahead_hits: int = 0
    """Prefetched blocks their reader then read."""
    readahead_wasted_bytes: int = 0
    """Bytes of prefetched blocks evicted before their reader got to them, or loaded and not
    kept for lack of room: GETs for nothing."""
    evicted_behind_readers: int = 0
    evicted_idle: int = 0
    """Evicted from streams no active reader is on (least recently used first)."""
    evicted_ahead_of_readers: int = 0
    evicted_bytes: int = 0
    evicted_log_chunks: int = 0
    """Log chunks (uploaded batches) among the evictions above."""
    readers: int = 0

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


def weight(batches: Sequence[RecordBatch]) -> int:
    return sum(b.size + BATCH_OVERHEAD for b in batches)


def weight_bound(reader: ObjectReader, entry: IndexEntry) -> int:
    """The most a block may weigh once loaded, known before its GET: its decoded bytes, and
    for each batch it may hold (no more than its records, nor than framed batch headers fit
    in it) what a cached batch costs beyond its framed header (a block of 100-byte batches
    weighs nearly twice its decoded bytes)."""
    decoded = reader.decoded_bound(entry)
    batches = min(entry.record_count, decoded // BATCH_HEADER_SIZE)
    return decoded + batches * (BATCH_OVERHEAD - BATCH_HEADER_SIZE)


@dataclass(slots=True)
class _Block:
    """A cached block, or a log chunk (``release`` set)."""

    batches: list[PlacedBatch]
    size: int
    stream: StreamKey
    start: int
    end: int
    # A reader id, until that reader reads it. GUARDED_BY(MessageCache._lock); the other
    # fields are fixed once the block is in the cache.
    prefetched_for: int | None = None
    release: Callable[[int], None] | None = None  # a log chunk: drop the stream's log below


_BEHIND, _IDLE, _AHEAD = 0, 1, 2
_CAUSES = ("behind", "idle", "ahead")


class MessageCache:
    """The log cache's bytes and decoded blocks within ``max_bytes``, and the readers they are
    kept for; thread-safe. One instance may serve several stores (pass it to
    ``streamlib.open(cache=…)``); each store reserves under its own ``scope`` and registers how
    to ask it for an upload (:meth:`register`)."""

    def __init__(self, max_bytes: int, *, readahead_bytes: int = 64 * MiB,
                 first_window: int = 8 * MiB, reader_timeout: float = 30.0,
                 readahead_gets: int = 4, readahead_get_bytes: int = 8 * MiB,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = check_int(max_bytes, "max_bytes", 1, 1 << 50)
        readahead_bytes = check_int(readahead_bytes, "readahead_bytes", 0, 1 << 50)
        first_window = check_int(first_window, "first_window", 0, 1 << 50)
        # Ranged GETs of readahead a store runs at once, and the stored bytes of each.
        self.readahead_gets = check_int(readahead_gets, "readahead_gets", 1, 1024)
        self.readahead_get_bytes = check_int(readahead_get_bytes, "readahead_get_bytes", 1,
                                             1 << 40)
        if isinstance(reader_timeout, bool) or not isinstance(reader_timeout, int | float) \
                or not reader_timeout > 0:
            raise ValueError(f"reader_timeout must be a positive number of seconds: "
                             f"reader_timeout=`{reader_timeout}`")
        self.readahead_bytes = readahead_bytes  # max_bytes and these settings: fixed
        self.first_window = min(first_window, readahead_bytes)
        self.reader_timeout = reader_timeout
        self.stats = CacheStats()  # GUARDED_BY(_lock); read alone for a snapshot (store.stats())
        self._clock = clock
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # pinned bytes went down, or evictable up
        # GUARDED_BY(_lock); its length is read alone (``len(cache)``)
        self._blocks: OrderedDict[BlockKey, _Block] = OrderedDict()
        self._loading: dict[BlockKey, Future[list[PlacedBatch]]] = {}  # GUARDED_BY(_lock)
        # Blocks + log chunks + pinned + loading. GUARDED_BY(_lock); read alone by ``nbytes``
        # (may be stale)
        self._bytes = 0
        self._loading_bytes = 0  # GUARDED_BY(_lock): reserved for loads between GET and admission
        # Per scope: reserved for batches not yet uploaded. GUARDED_BY(_lock)
        self._pinned: dict[str, int] = {}
        self._uploaders: dict[str, Callable[[], None]] = {}  # GUARDED_BY(_lock): ask for a round
        # A stream's log chunks, in offset order. GUARDED_BY(_lock)
        self._chunks: dict[tuple[str, int], list[BlockKey]] = {}
        self._readers = Readers(self.first_window, reader_timeout)  # GUARDED_BY(_lock)

    @property
    def nbytes(self) -> int:
        """Bytes held now: blocks, log chunks, reservations and loads in flight (never above
        ``max_bytes``, but for a lone batch larger than the budget, data recovered at open, or
        a fetch's own load when pinned bytes leave it no room)."""
        return self._bytes  # one int, read without the lock: a moment's value

    @property
    def pinned_bytes(self) -> int:
        """Bytes reserved for batches not yet uploaded (every store of this cache)."""
        with self._lock:
            return sum(self._pinned.values())

    def usage(self) -> dict[str, int]:
        """Bytes held, by kind, and the counts of blocks and log chunks."""
        with self._lock:
            chunks = sum(len(keys) for keys in self._chunks.values())
            chunk_bytes = sum(b.size for b in self._blocks.values() if b.release is not None)
            pinned = sum(self._pinned.values())
            loading = self._loading_bytes
            return {"bytes": self._bytes, "max_bytes": self.max_bytes,
                    "block_bytes": self._bytes - chunk_bytes - pinned - loading,
                    "blocks": len(self._blocks) - chunks, "log_chunk_bytes": chunk_bytes,
                    "log_chunks": chunks, "log_pinned_bytes": pinned,
                    "loading_bytes": loading}

    def __len__(self) -> int:
        """Blocks and log chunks held."""
        return len(self._blocks)  # one len(), atomic without the lock: a moment's value

    # ---- the log cache's bytes ----

    def register(self, scope: str, request_upload: Callable[[], None]) -> None:
        """A store joins: ``request_upload()`` asks it for an upload round now (called when
        appends wait for room and the store holds pinned bytes)."""
        with self._lock:
            self._uploaders[scope] = request_upload

    def try_reserve(self, scope: str, size: int) -> bool:
        """:meth:`reserve` without waiting (and not counted as a wait): whether the bytes
        were pinned."""
        with self._lock:
            return self._try_pin(scope, size)

    def reserve(self, scope: str, size: int, timeout: float | None,
                abort: Callable[[], bool] = lambda: False) -> bool:
        """Pin ``size`` bytes for a batch about to enter the WAL, evicting blocks and log
        chunks if needed. If pinned bytes fill the budget, ask every store holding some for an
        upload and wait up to ``timeout`` seconds for commits to unpin them (asking again each
        half second). False if no room came, or ``abort()`` became true (see :meth:`wake`). A
        batch larger than the whole budget is let in when nothing else is pinned."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._try_pin(scope, size):
                return True
            self.stats.log_waits += 1
        pinned: list[bool] = []

        def ready() -> bool:
            if abort():
                return True
            if self._try_pin(scope, size):
                pinned.append(True)
                return True
            return False

        while True:
            self._request_uploads()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with self._room:
                if self._room.wait_for(ready, 0.5 if left is None else min(left, 0.5)):
                    return bool(pinned)

    def wake(self) -> None:
        """Make waiting reservations look again (their ``abort`` may have become true)."""
        with self._room:
            self._room.notify_all()

    def _request_uploads(self) -> None:
        with self._lock:
            asks = [self._uploaders[scope] for scope, pinned in self._pinned.items()
                    if pinned and scope in self._uploaders]
        for ask in asks:  # outside the lock: an uploader's own locks come after it
            ask()

    def _try_pin(self, scope: str, size: int) -> bool:
        held = sum(self._pinned.values()) + self._loading_bytes  # what eviction cannot free
        if held and held + size > self.max_bytes:
            return False  # only uploads (or loads ending) make room: evicting would not
        if self._bytes + size > self.max_bytes:
            self._make_room(size, self._clock())
        self._pinned[scope] = self._pinned.get(scope, 0) + size
        self._bytes += size
        return True

    def pin(self, scope: str, size: int) -> None:
        """Pin ``size`` bytes whatever the budget (data recovered from the WAL at open, which
        must stay in memory until uploaded), evicting what can be evicted."""
        with self._lock:
            self._make_room(size, self._clock())
            self._pinned[scope] = self._pinned.get(scope, 0) + size
            self._bytes += size

    def unpin(self, scope: str, size: int) -> None:
        """Give back reserved bytes whose batch will not be uploaded (its append failed, its
        stream was destroyed)."""
        if size:
            with self._room:
                self._unpin(scope, size)
                self._room.notify_all()

    def _unpin(self, scope: str, size: int) -> None:
        left = self._pinned.get(scope, 0) - size
        assert left >= 0, "unpinned more than was pinned"
        self._pinned[scope] = left
        self._bytes -= size

    def retain(self, scope: str, stream: StreamKey, batches: Sequence[PlacedBatch],
               release: Callable[[int], None]) -> None:
        """``batches`` (pinned, of one stream, contiguous) were committed: keep them as a log
        chunk, evictable; ``release(end offset)`` drops them (and everything before them) from
        the stream's log when the chunk is evicted."""
        if not batches:
            return
        size = weight(batches)
        start, end = batches[0].base_offset, batches[-1].next_offset
        key: BlockKey = ("log", scope, stream[1], start)
        with self._room:
            self._unpin(scope, size)
            self._blocks[key] = _Block(list(batches), size, stream, start, end, release=release)
            self._bytes += size
            self._chunks.setdefault((scope, stream[1]), []).append(key)
            self._room.notify_all()

    def drop_log(self, scope: str, stream_id: int, below: int | None = None) -> None:
        """Forget the log chunks of a stream that end at or below ``below`` (None: all of
        them): the stream dropped those batches itself (a trim, a destroy)."""
        with self._room:
            keys = self._chunks.get((scope, stream_id), [])
            while keys and (below is None or self._blocks[keys[0]].end <= below):
                block = self._blocks.pop(keys.pop(0))
                self._bytes -= block.size
            if not keys:
                self._chunks.pop((scope, stream_id), None)
            self._room.notify_all()

    def close_scope(self, scope: str) -> None:
        """A store of this cache closed: drop its log chunks and reservations."""
        with self._room:
            for (owner, stream_id) in [k for k in self._chunks if k[0] == scope]:
                for key in self._chunks.pop((owner, stream_id)):
                    self._bytes -= self._blocks.pop(key).size
            self._bytes -= self._pinned.pop(scope, 0)
            self._uploaders.pop(scope, None)
            self._room.notify_all()

    def count_log_read(self, uploaded: bool) -> None:
        """A fetch returned batches from the log cache (``uploaded``: some already uploaded)."""
        with self._lock:
            self.stats.log_reads += 1
            self.stats.uploaded_log_reads += uploaded

    # ---- readers ----

    def reader_at(self, stream: StreamKey, offset: int, mine: Reader | None = None) -> Reader:
        """The reader of a fetch at ``offset``: ``mine`` (a ``read()`` iterator's own), else
        one whose last fetch ended at ``offset``, else a new one."""
        with self._lock:
            reader = self._readers.at(stream, offset, mine, self._clock())
            self.stats.readers = len(self._readers)
            return reader

    def advance(self, reader: Reader, offset: int) -> None:
        """``reader``'s fetch ended at ``offset``: its next fetch starts there."""
        with self._lock:
            self._readers.advance(reader, offset)

    def forget(self, reader: Reader) -> None:
        """``reader`` is done (an iterator ended): its blocks stop being kept for it. Never
        waits for the cache's lock — an iterator may be closed by the garbage collector on a
        thread that holds it — the reader is dropped by the next call that takes the lock."""
        self._readers.forget(reader)
        if self._lock.acquire(blocking=False):
            try:
                self._readers.settle(None)
                self.stats.readers = len(self._readers)
            finally:
                self._lock.release()

    def start_readahead(self, reader: Reader) -> tuple[int, int] | None:
        """``(from offset, decoded bytes)`` of readahead to plan now for ``reader``, or None: it
        has not read sequentially twice yet, less than a REFILL-th of its window (as far as
        the cache's room for it goes) is free, or a readahead of it is being planned. A
        non-None answer must be followed by :meth:`readahead_done`."""
        with self._lock:
            if reader.sequential < 2 or reader.prefetching or reader not in self._readers:
                return None
            want = self._window_left(reader)
            if want <= 0 or want < min(reader.window, reader.room) // REFILL:
                return None
            reader.prefetching = True
            return reader.prefetched_to, want

    def sync_readahead(self, reader: Reader, first: int) -> int:
        """Decoded bytes a fetch of ``reader`` that has to GET anyway may claim beyond what it
        returns, to be fetched beside its GET: what its window has left (as far as the cache's
        room for it goes), or, on the reader's first fetch (it may read once and go),
        ``first`` at most."""
        with self._lock:
            if reader not in self._readers or not self.readahead_bytes:
                return 0
            left = self._window_left(reader)
            return max(0, left if reader.sequential else min(left, first))

    def _window_left(self, reader: Reader) -> int:
        """What ``reader``'s window has left, bounded by the room the cache can give it
        (caller holds the lock)."""
        free = self.max_bytes - sum(self._pinned.values()) - self._loading_bytes
        return window_left(reader, self._readers.values(), self._blocks.values(), free)

    def holds(self, reader: ObjectReader, entry: IndexEntry) -> bool:
        """Whether the block is in memory or being loaded."""
        key = (reader.store.url, reader.key, entry.position)
        with self._lock:
            return key in self._blocks or key in self._loading

    def readahead_done(self, reader: Reader) -> None:
        with self._lock:
            reader.prefetching = False

    # ---- blocks ----

    @overload
    def load(self, reader: ObjectReader, entries: Sequence[IndexEntry], *,
             cache_only: bool = False, ahead_of: None = None, lookup: bool = False,
             then: tuple[Reader, Sequence[IndexEntry]] | None = None,
             spawn: Callable[[Part], None] | None = None) -> list[list[PlacedBatch]]: ...

    @overload
    def load(self, reader: ObjectReader, entries: Sequence[IndexEntry], *,
             cache_only: bool = False, ahead_of: Reader, lookup: bool = False,
             then: None = None, spawn: None = None) -> list[list[PlacedBatch] | None]: ...

    def load(self, reader: ObjectReader, entries: Sequence[IndexEntry], *,
             cache_only: bool = False, ahead_of: Reader | None = None, lookup: bool = False,
             then: tuple[Reader, Sequence[IndexEntry]] | None = None,
             spawn: Callable[[Part], None] | None = None) -> Sequence[list[PlacedBatch] | None]:
        """Each block's batches, in the order of ``entries`` (blocks of ``reader``'s object):
        from memory, from a load another reader started, or fetched now with one GET per run
        of adjacent missing blocks. ``cache_only``: raise :class:`Uncached` rather than wait or
        fetch. ``ahead_of``: a readahead for that reader, loaded here a :class:`Part` at a
        time (blocks held or loading are skipped, and so are those past the room a readahead
        may take: None in the answer, as are blocks loaded and not kept). ``lookup``: not a
        reader's read (a time lookup): no hit counted, no window grown. ``then``: ``(reader,
        blocks)``, the blocks after ``entries`` that reader will want next: if this load goes
        to the store at all, they are claimed as its readahead would claim them (a
        synchronous readahead), in parts handed to ``spawn`` before this load's GET, to be
        fetched beside it (None: loaded here after it); they are not in the answer."""
        found: list[list[PlacedBatch] | None] = [None] * len(entries)
        waits: list[tuple[int, BlockKey, Future[list[PlacedBatch]]]] = []
        missing: list[tuple[int, IndexEntry, BlockKey]] = []
        mine: list[tuple[int, IndexEntry, BlockKey, Future[list[PlacedBatch]]]] = []
        parts: list[Part] = []
        reserved = 0
        now = self._clock()
        with self._lock:
            for i, entry in enumerate(entries):
                key: BlockKey = (reader.store.url, reader.key, entry.position)
                held = self._blocks.get(key)
                if held is not None:
                    if ahead_of is None and not lookup:
                        self._touch(key, held, now)
                    found[i] = held.batches
                    continue
                if cache_only:
                    self.stats.cache_only_misses += 1
                    raise Uncached(entry)
                loading = self._loading.get(key)
                if loading is not None:
                    if ahead_of is None:
                        waits.append((i, key, loading))
                        self.stats.shared_loads += 1
                    continue
                missing.append((i, entry, key))
            if ahead_of is not None:
                parts = self._claim(reader, missing, ahead_of, now, found)[0]
            else:
                count, reserved = self._reserve(reader, missing, now, False)
                for i, entry, key in missing[:count]:
                    future: Future[list[PlacedBatch]] = Future()
                    self._loading[key] = future
                    mine.append((i, entry, key, future))
                    self.stats.block_misses += 1
            if mine and then is not None and then[0] in self._readers:
                # What this load's blocks may weigh beyond their reservation is reserved too:
                # their admission must not take the readahead's room.
                slack = sum(weight_bound(reader, entry) - reader.decoded_bound(entry)
                            for _, entry, _, _ in mine)
                parts, _, beside = self._claim(reader, self._following(reader, then[1]),
                                               then[0], now, None, slack)
                reserved += beside
        if spawn is not None:
            for part in parts:
                spawn(part)
            parts = []
        try:
            if mine:
                self._fetch(reader, mine, found, None, reserved)
        except BaseException as error:
            for part in parts:
                part.drop(error)
            raise
        for part in parts:
            part.run()
        for i, _, future in waits:
            found[i] = future.result()
        if waits and not lookup:  # a block a readahead loaded while this read waited: a hit
            with self._lock:
                for _, key, _ in waits:
                    held = self._blocks.get(key)
                    if held is not None and held.prefetched_for is not None:
                        self._touch(key, held, now)
        return found

    def claim_ahead(self, reader: ObjectReader, entries: Sequence[IndexEntry],
                    ahead_of: Reader) -> tuple[list[Part], bool]:
        """Claim the blocks of ``entries`` (blocks of ``reader``'s object, in order) that are
        neither held nor loading, for a readahead of ``ahead_of``, as far as the room a
        readahead may take goes: the :class:`Part` s that load them (each to be run or
        dropped exactly once, on any thread), and whether every such block was claimed."""
        now = self._clock()
        with self._lock:
            candidates: list[tuple[int, IndexEntry, BlockKey]] = []
            for entry in entries:
                key: BlockKey = (reader.store.url, reader.key, entry.position)
                if key not in self._blocks and key not in self._loading:
                    candidates.append((-1, entry, key))
            parts, count, _ = self._claim(reader, candidates, ahead_of, now, None)
            return parts, count == len(candidates)

    def _following(self, reader: ObjectReader, entries: Sequence[IndexEntry]
                   ) -> list[tuple[int, IndexEntry, BlockKey]]:
        """The blocks of ``entries`` up to the first one held or loading (caller holds the
        lock): a synchronous readahead's candidates; the rest is the background readahead's."""
        candidates: list[tuple[int, IndexEntry, BlockKey]] = []
        for entry in entries:
            key: BlockKey = (reader.store.url, reader.key, entry.position)
            if key in self._blocks or key in self._loading:
                break
            candidates.append((-1, entry, key))
        return candidates

    def _claim(self, reader: ObjectReader, candidates: list[tuple[int, IndexEntry, BlockKey]],
               owner: Reader, now: float, found: list[list[PlacedBatch] | None] | None,
               beside: int = 0) -> tuple[list[Part], int, int]:
        """Reserve room for a readahead of ``owner`` (and ``beside`` more if any block fits)
        and mark the blocks that fit loading, in parts of one GET each (:func:`plan_parts`: at
        most ``readahead_get_bytes``, at least one block) (caller holds the lock). ``(parts,
        blocks claimed, beside reserved)``."""
        count, reserved = self._reserve(reader, candidates, now, True, beside)
        if not count:
            return [], 0, 0
        owner.loading += reserved - beside
        claimed = {entry.position: (i, entry, key) for i, entry, key in candidates[:count]}
        parts = []
        for run in plan_parts([entry for _, entry, _ in claimed.values()], reader.merge_gap,
                              self.readahead_get_bytes):
            items = []
            for entry in run:
                i, _, key = claimed[entry.position]
                future: Future[list[PlacedBatch]] = Future()
                self._loading[key] = future
                items.append((i, entry, key, future))
                self.stats.readahead_blocks += 1
            size = sum(weight_bound(reader, entry) for entry in run)
            parts.append(Part(reader, run, functools.partial(
                self._fetch, reader, items, found, owner, size), functools.partial(
                self._end_load, items, size, owner, size, None)))
        return parts, count, beside

    def _reserve(self, reader: ObjectReader, missing: list[tuple[int, IndexEntry, BlockKey]],
                 now: float, readahead: bool, beside: int = 0) -> tuple[int, int]:
        """Count the blocks about to be loaded in the budget, from before their GET (caller
        holds the lock): ``(how many of missing to load, bytes reserved)``. A readahead
        reserves the most each block may weigh (:func:`weight_bound`), and ``beside`` more if
        any block fits, so that all it loads is kept; it takes only the room there is without
        evicting ahead of a reader, and loads only the blocks that fit in it. A fetch's load
        reserves their decoded size (evicting no more than that before the GET), evicts as its
        admission would and loads all it needs, the part the budget cannot hold (pinned bytes
        fill it, or a block is larger than the whole budget) outside it: that part is returned
        to the fetch and not kept."""
        bounds = [weight_bound(reader, entry) if readahead else reader.decoded_bound(entry)
                  for _, entry, _ in missing]
        need = sum(bounds)
        if not need:
            return 0, 0
        self._make_room(need + beside, now, spare_ahead=readahead)
        room = max(self.max_bytes - self._bytes, 0)
        count = len(missing)
        if readahead:
            count, need = 0, beside
            while count < len(bounds) and need + bounds[count] <= room:
                need += bounds[count]
                count += 1
            need = need if count else 0
        need = min(need, room)
        self._loading_bytes += need
        self._bytes += need
        return count, need

    def _touch(self, key: BlockKey, block: _Block, now: float) -> None:
        """A reader read this block (caller holds the lock)."""
        self._blocks.move_to_end(key)
        self.stats.block_hits += 1
        if block.prefetched_for is not None:
            owner = self._readers.get(block.prefetched_for)
            block.prefetched_for = None
            self.stats.readahead_hits += 1
            if owner is not None:
                grow(owner, now, self.readahead_bytes)

    def _fetch(self, reader: ObjectReader,
               mine: list[tuple[int, IndexEntry, BlockKey, Future[list[PlacedBatch]]]],
               found: list[list[PlacedBatch] | None] | None, ahead_of: Reader | None,
               reserved: int) -> None:
        """Load ``mine`` with one GET per run and admit its blocks; each block's batches go to
        its place in ``found`` (if given; a readahead's: those kept, None for the others).
        ``ahead_of``: a readahead for that reader, whose blocks kept join its window and whose
        ``reserved`` bytes leave its loads in flight when this ends."""
        claimed = reserved if ahead_of is not None else 0
        try:
            loaded = reader.read_blocks([entry for _, entry, _, _ in mine])
            if len(loaded) != len(mine):
                raise AssertionError(f"{len(mine)} blocks asked for, {len(loaded)} read")
            now = self._clock()
            with self._lock:
                self._unreserve(reserved)
                reserved = 0
                incoming = [(key, _Block(batches, weight(batches),
                                         (reader.store.url, entry.stream_id), entry.start_offset,
                                         entry.end_offset,
                                         None if ahead_of is None else ahead_of.id))
                            for (_, entry, key, _), batches in zip(mine, loaded, strict=True)]
                # A readahead takes only room nobody ahead of a reader needs: it never
                # evicts what is nearer to a reader than itself.
                kept = self._admit(incoming, now, ahead_of is not None)
                for (i, _, key, _), (_, block) in zip(mine, incoming, strict=True):
                    if found is not None:
                        found[i] = block.batches if ahead_of is None or key in kept else None
                    if ahead_of is not None and key in kept:
                        ahead_of.ahead.append((block.end, block.size))
                        ahead_of.prefetched_to = max(ahead_of.prefetched_to, block.end)
        except BaseException as error:
            self._end_load(mine, reserved, ahead_of, claimed, None, error)
            raise
        # Counted by the plan the reader followed: its own counters are shared by the loads
        # running on it at once.
        runs = list(plan_runs([entry for _, entry, _, _ in mine], reader.merge_gap))
        self._end_load(mine, 0, ahead_of, claimed,
                       (len(runs), sum(run[-1].end - run[0].position for run in runs)), None)
        for (_, _, _, future), batches in zip(mine, loaded, strict=True):
            future.set_result(batches)

    def _end_load(self, mine: list[tuple[int, IndexEntry, BlockKey, Future[list[PlacedBatch]]]],
                  reserved: int, ahead_of: Reader | None, claimed: int,
                  counts: tuple[int, int] | None, error: BaseException | None) -> None:
        """A load is over (its blocks admitted, or ``error``): its reservation left, its blocks
        no longer loading, its ``(GETs, bytes)`` counted, the readers waiting for a failed one
        failed with ``error``."""
        with self._room:
            self._unreserve(reserved)
            if ahead_of is not None:
                ahead_of.loading -= claimed
            for _, _, key, _ in mine:
                self._loading.pop(key, None)
            if counts is not None:
                self.stats.gets += counts[0]
                self.stats.get_bytes += counts[1]
            self._room.notify_all()  # a reservation gone may let an append in
        if error is not None:
            for _, _, _, future in mine:
                if not future.done():
                    future.set_exception(error)

    def _admit(self, incoming: list[tuple[BlockKey, _Block]], now: float, readahead: bool
               ) -> set[BlockKey]:
        """Make room for these loaded blocks and keep those that fit (caller holds the lock):
        a readahead's nearest its reader first, a fetch's last first (its reader's next fetch
        starts there: it has passed the others). A block loaded ahead of a reader and not
        kept is wasted. The keys kept."""
        fits = [(key, block) for key, block in incoming if block.size <= self.max_bytes]
        if fits:  # a block larger than the whole budget is served to its read, not kept
            self._make_room(sum(block.size for _, block in fits), now, spare_ahead=readahead)
        room = self.max_bytes - self._bytes
        kept = set()
        for key, block in fits if readahead else fits[::-1]:
            if block.size <= room:  # else the room went to blocks readers need more
                room -= block.size
                kept.add(key)
        for key, block in incoming:
            if key in kept:
                self._blocks[key] = block
                self._bytes += block.size
            elif block.prefetched_for is not None:
                self._wasted(block, now)
        return kept

    def _unreserve(self, reserved: int) -> None:
        self._loading_bytes -= reserved
        self._bytes -= reserved

    def _rank(self, block: _Block, order: int,
              positions: dict[StreamKey, list[int]]) -> tuple[int, int]:
        readers = positions.get(block.stream)
        if readers is None:
            return (_IDLE, order)  # least recently used first
        if block.end <= min(readers):
            return (_BEHIND, order)
        return (_AHEAD, -min(block.start - p for p in readers if block.end > p))  # farthest

    def _make_room(self, need: int, now: float, *, spare_ahead: bool = False) -> None:
        """Evict until ``need`` more bytes fit (caller holds the lock), in the order of
        consumer focus: behind every reader, then streams without readers (least recently
        used first), then ahead of readers (farthest first; not at all with
        ``spare_ahead``). Of a stream's log chunks only the oldest is a candidate: when it
        goes, the next one becomes one."""
        if self._bytes + need <= self.max_bytes:
            return
        self._readers.settle(now)
        self.stats.readers = len(self._readers)
        positions = self._readers.positions()
        order = {key: i for i, key in enumerate(self._blocks)}
        heap: list[tuple[tuple[int, int], int, BlockKey]] = []
        for key, block in self._blocks.items():
            if block.release is None or self._chunks[(key[1], key[2])][0] == key:
                heapq.heappush(heap, (self._rank(block, order[key], positions), order[key], key))
        while heap and self._bytes + need > self.max_bytes:
            (cause, _), _, key = heapq.heappop(heap)
            if cause == _AHEAD and spare_ahead:
                return
            block = self._blocks[key]
            self._evict(key, _CAUSES[cause], now)
            if block.release is not None:
                rest = self._chunks.get((key[1], key[2]))
                if rest:
                    nxt = self._blocks[rest[0]]
                    heapq.heappush(heap, (self._rank(nxt, order[rest[0]], positions),
                                          order[rest[0]], rest[0]))

    def _evict(self, key: BlockKey, cause: str, now: float) -> None:
        block = self._blocks[key]
        if block.release is not None:  # a log chunk: its stream's older chunks go with it
            keys = self._chunks[(key[1], key[2])]
            upto = keys.index(key)
            for older in keys[:upto]:
                self._evict(older, cause, now)
            keys.remove(key)
            if not keys:
                del self._chunks[(key[1], key[2])]
            self.stats.evicted_log_chunks += 1
            block.release(block.end)  # takes the stream's lock: never held when calling here
        del self._blocks[key]
        self._bytes -= block.size
        self.stats.evicted_bytes += block.size
        if cause == "behind":
            self.stats.evicted_behind_readers += 1
        elif cause == "idle":
            self.stats.evicted_idle += 1
        else:
            self.stats.evicted_ahead_of_readers += 1
        if block.prefetched_for is not None:
            self._wasted(block, now)

    def _wasted(self, block: _Block, now: float) -> None:
        """A block loaded ahead of a reader goes unread: evicted, or not kept for lack of room
        (caller holds the lock). Its GET was for nothing: count it, and halve the reader's
        window (from what the cache's room allowed; no less than a block) with a cool-down."""
        self.stats.readahead_wasted_bytes += block.size
        owner = self._readers.get(block.prefetched_for)
        if owner is not None:
            shrink(owner, block, now, self.readahead_bytes)

    def count_index_gets(self, reader: ObjectReader, gets: int, fetched: int) -> None:
        """Count the GETs ``reader`` made for its index since it had made ``gets``."""
        with self._lock:
            self.stats.gets += reader.gets - gets
            self.stats.get_bytes += reader.fetched_bytes - fetched



__all__ = ["BATCH_OVERHEAD", "CacheStats", "MessageCache", "Part", "Reader", "StreamKey",
           "Uncached", "weight"]
