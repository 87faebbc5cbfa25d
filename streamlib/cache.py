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

import heapq
import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import overload

from streamlib._readahead import Reader, StreamKey, grow, shrink, window_left
from streamlib.codec import BATCH_HEADER_SIZE
from streamlib.objects import IndexEntry, ObjectReader
from streamlib.records import RecordBatch, check_int

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

    batches: list[RecordBatch]
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

    def __init__(self, max_bytes: int, *, readahead_bytes: int = 32 * MiB,
                 first_window: int = 8 * MiB, reader_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = check_int(max_bytes, "max_bytes", 1, 1 << 50)
        readahead_bytes = check_int(readahead_bytes, "readahead_bytes", 0, 1 << 50)
        first_window = check_int(first_window, "first_window", 0, 1 << 50)
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
        self._loading: dict[BlockKey, Future[list[RecordBatch]]] = {}  # GUARDED_BY(_lock)
        # Blocks + log chunks + pinned + loading. GUARDED_BY(_lock); read alone by ``nbytes``
        # (may be stale)
        self._bytes = 0
        self._loading_bytes = 0  # GUARDED_BY(_lock): reserved for loads between GET and admission
        # Per scope: reserved for batches not yet uploaded. GUARDED_BY(_lock)
        self._pinned: dict[str, int] = {}
        self._uploaders: dict[str, Callable[[], None]] = {}  # GUARDED_BY(_lock): ask for a round
        # A stream's log chunks, in offset order. GUARDED_BY(_lock)
        self._chunks: dict[tuple[str, int], list[BlockKey]] = {}
        self._readers: dict[int, Reader] = {}  # GUARDED_BY(_lock)
        # Readers by where their next fetch starts. GUARDED_BY(_lock)
        self._by_position: dict[tuple[StreamKey, int], list[int]] = {}
        # Readers ended without the lock (see forget): appended alone (a deque's append is
        # atomic), emptied under _lock.
        self._forgotten: deque[Reader] = deque()
        self._ids = itertools.count(1)  # GUARDED_BY(_lock)

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

    def retain(self, scope: str, stream: StreamKey, batches: Sequence[RecordBatch],
               release: Callable[[int], None]) -> None:
        """``batches`` (pinned, of one stream, contiguous) were committed: keep them as a log
        chunk, evictable; ``release(end offset)`` drops them (and everything before them) from
        the stream's log when the chunk is evicted."""
        if not batches:
            return
        size = weight(batches)
        start, end = batches[0].base_offset, batches[-1].next_offset
        assert start is not None
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
        now = self._clock()
        with self._lock:
            self._settle_forgotten()
            self._expire(now)
            reader = None
            if mine is not None and mine.position == offset and mine.stream == stream:
                reader = mine
                self._unplace(reader)
                if reader.id not in self._readers:  # expired meanwhile: it is back
                    self._readers[reader.id] = reader
            else:
                waiting = self._by_position.get((stream, offset))
                while waiting and reader is None:
                    reader = self._readers.get(waiting.pop())
                if waiting == []:
                    del self._by_position[(stream, offset)]
            if reader is None:
                reader = Reader(next(self._ids), stream, offset, now, self.first_window,
                                prefetched_to=offset)
                self._readers[reader.id] = reader
            else:
                reader.sequential += 1
            reader.last_seen = now
            self.stats.readers = len(self._readers)
            return reader

    def advance(self, reader: Reader, offset: int) -> None:
        """``reader``'s fetch ended at ``offset``: its next fetch starts there."""
        with self._lock:
            self._unplace(reader)
            reader.position = offset
            reader.prefetched_to = max(reader.prefetched_to, offset)
            reader.ahead = [(end, size) for end, size in reader.ahead if end > offset]
            if reader.id in self._readers:
                self._by_position.setdefault((reader.stream, offset), []).append(reader.id)

    def forget(self, reader: Reader) -> None:
        """``reader`` is done (an iterator ended): its blocks stop being kept for it. Never
        waits for the cache's lock — an iterator may be closed by the garbage collector on a
        thread that holds it — the reader is dropped by the next call that takes the lock."""
        self._forgotten.append(reader)
        if self._lock.acquire(blocking=False):
            try:
                self._settle_forgotten()
            finally:
                self._lock.release()

    def _settle_forgotten(self) -> None:
        while self._forgotten:
            self._drop(self._forgotten.popleft())

    def _unplace(self, reader: Reader) -> None:
        waiting = self._by_position.get((reader.stream, reader.position))
        if waiting is not None and reader.id in waiting:
            waiting.remove(reader.id)
            if not waiting:
                del self._by_position[(reader.stream, reader.position)]

    def _drop(self, reader: Reader) -> None:
        self._readers.pop(reader.id, None)
        self._unplace(reader)
        self.stats.readers = len(self._readers)

    def _expire(self, now: float) -> None:
        for reader in [r for r in self._readers.values()
                       if now - r.last_seen > self.reader_timeout]:
            self._drop(reader)

    def start_readahead(self, reader: Reader) -> tuple[int, int] | None:
        """``(from offset, decoded bytes)`` of readahead to run now for ``reader``, or None: it
        has not read sequentially twice yet, its window (as far as the cache's room for it
        goes) is full, or a readahead of it runs. A non-None answer must be followed by
        :meth:`readahead_done`."""
        with self._lock:
            if reader.sequential < 2 or reader.prefetching or reader.id not in self._readers:
                return None
            want = self._window_left(reader)
            if want <= 0:
                return None
            reader.prefetching = True
            return reader.prefetched_to, want

    def sync_readahead(self, reader: Reader, first: int) -> int:
        """Decoded bytes a fetch of ``reader`` that has to GET anyway may load beyond what it
        returns, in the same GETs: what its window has left (as far as the cache's room for it
        goes), or, on the reader's first fetch (it may read once and go), ``first`` at most."""
        with self._lock:
            if reader.id not in self._readers or not self.readahead_bytes:
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
             then: tuple[Reader, Sequence[IndexEntry]] | None = None
             ) -> list[list[RecordBatch]]: ...

    @overload
    def load(self, reader: ObjectReader, entries: Sequence[IndexEntry], *,
             cache_only: bool = False, ahead_of: Reader, lookup: bool = False,
             then: None = None) -> list[list[RecordBatch] | None]: ...

    def load(self, reader: ObjectReader, entries: Sequence[IndexEntry], *,
             cache_only: bool = False, ahead_of: Reader | None = None, lookup: bool = False,
             then: tuple[Reader, Sequence[IndexEntry]] | None = None
             ) -> Sequence[list[RecordBatch] | None]:
        """Each block's batches, in the order of ``entries`` (blocks of ``reader``'s object):
        from memory, from a load another reader started, or fetched now with one GET per run
        of adjacent missing blocks. ``cache_only``: raise :class:`Uncached` rather than wait or
        fetch. ``ahead_of``: a readahead for that reader (blocks already held or loading are
        skipped, and so are those past the room a readahead may take: their places in the
        answer are None, as are those of blocks loaded and not kept). ``lookup``: not a
        reader's read (a time lookup): no hit is counted, no window grows. ``then``:
        ``(reader, blocks)``, the blocks after ``entries`` that reader will want next: if this
        load goes to the store at all, the same GETs carry them too, as a readahead for that
        reader would load them (a synchronous readahead: one round trip where a fetch and its
        readahead would make two); they are not in the answer."""
        found: list[list[RecordBatch] | None] = [None] * len(entries)
        waits: list[tuple[int, BlockKey, Future[list[RecordBatch]]]] = []
        missing: list[tuple[int, IndexEntry, BlockKey]] = []
        mine: list[tuple[int, IndexEntry, BlockKey, Future[list[RecordBatch]]]] = []
        extra: list[tuple[int, IndexEntry, BlockKey, Future[list[RecordBatch]]]] = []
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
            reserved = self._reserve(reader, missing, now, ahead_of is not None)
            for i, entry, key in missing[:reserved[0]]:
                future: Future[list[RecordBatch]] = Future()
                self._loading[key] = future
                mine.append((i, entry, key, future))
                if ahead_of is None:
                    self.stats.block_misses += 1
                else:
                    self.stats.readahead_blocks += 1
            if mine and then is not None and then[0].id in self._readers:
                # What this load's blocks may weigh beyond their reservation is reserved too:
                # their admission must not take the readahead's room.
                slack = sum(weight_bound(reader, entry) - reader.decoded_bound(entry)
                            for _, entry, _, _ in mine)
                extra, more = self._also_ahead(reader, then[1], now, slack)
                reserved = reserved[0], reserved[1] + more
        if mine:
            self._fetch(reader, mine + extra, found, ahead_of, reserved[1],
                        ahead=None if then is None else then[0], from_ahead=len(mine))
        for i, _, future in waits:
            found[i] = future.result()
        if waits and not lookup:  # a block a readahead loaded while this read waited: a hit
            with self._lock:
                for _, key, _ in waits:
                    held = self._blocks.get(key)
                    if held is not None and held.prefetched_for is not None:
                        self._touch(key, held, now)
        return found

    def _also_ahead(self, reader: ObjectReader, entries: Sequence[IndexEntry], now: float,
                    beside: int
                    ) -> tuple[list[tuple[int, IndexEntry, BlockKey, Future[list[RecordBatch]]]],
                               int]:
        """The blocks of ``entries`` (those right after a load's) that a synchronous
        readahead takes, marked loading, and the bytes reserved for them (and ``beside``, if
        any is taken): up to the first one held or loading, as far as the room a readahead
        may take goes (caller holds the lock)."""
        candidates: list[tuple[int, IndexEntry, BlockKey]] = []
        for entry in entries:
            key: BlockKey = (reader.store.url, reader.key, entry.position)
            if key in self._blocks or key in self._loading:
                break  # the rest is the asynchronous readahead's: one run, one GET
            candidates.append((-1, entry, key))
        count, reserved = self._reserve(reader, candidates, now, True, beside)
        extra = []
        for _, entry, key in candidates[:count]:
            future: Future[list[RecordBatch]] = Future()
            self._loading[key] = future
            extra.append((-1, entry, key, future))
            self.stats.readahead_blocks += 1
        return extra, reserved

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
               mine: list[tuple[int, IndexEntry, BlockKey, Future[list[RecordBatch]]]],
               found: list[list[RecordBatch] | None], ahead_of: Reader | None,
               reserved: int, *, ahead: Reader | None = None, from_ahead: int = 0) -> None:
        """Load ``mine`` with one GET per run; the answer's blocks go to ``found`` (a
        readahead's: those kept), except those from ``from_ahead`` on when ``ahead`` is given:
        those are a synchronous readahead for that reader, kept as its readahead's would be,
        or not at all. A block kept ahead of a reader joins its window."""
        gets, fetched = reader.gets, reader.fetched_bytes
        loaded: list[list[RecordBatch]] | None = None
        split = len(mine) if ahead is None else from_ahead
        try:
            loaded = reader.read_blocks([entry for _, entry, _, _ in mine])
            if len(loaded) != len(mine):
                raise AssertionError(f"{len(mine)} blocks asked for, {len(loaded)} read")
            now = self._clock()
            with self._lock:
                self._unreserve(reserved)
                reserved = 0
                owner = ahead_of if ahead is None else ahead
                incoming: list[tuple[BlockKey, _Block]] = []
                later: list[tuple[BlockKey, _Block]] = []
                for n, ((i, entry, key, _), batches) in enumerate(zip(mine, loaded, strict=True)):
                    answered = n < split
                    if answered:
                        found[i] = batches
                    block = _Block(batches, weight(batches), (reader.store.url, entry.stream_id),
                                   entry.start_offset, entry.end_offset,
                                   None if owner is None or (answered and ahead is not None)
                                   else owner.id)
                    (incoming if answered else later).append((key, block))
                # A readahead takes only room nobody ahead of a reader needs: it never
                # evicts what is nearer to a reader than itself.
                kept = self._admit(incoming, now, ahead_of is not None)
                kept |= self._admit(later, now, True)
                for (i, _, key, _), (_, block) in zip(mine, incoming + later, strict=True):
                    if owner is not None and block.prefetched_for == owner.id and key in kept:
                        owner.ahead.append((block.end, block.size))
                        owner.prefetched_to = max(owner.prefetched_to, block.end)
                    elif ahead_of is not None:
                        found[i] = None  # not kept: the readahead stops there
        except BaseException as error:
            for _, _, _, future in mine:
                if not future.done():
                    future.set_exception(error)
            raise
        finally:
            with self._room:
                self._unreserve(reserved)
                for _, _, key, _ in mine:
                    self._loading.pop(key, None)
                self.stats.gets += reader.gets - gets
                self.stats.get_bytes += reader.fetched_bytes - fetched
                self._room.notify_all()  # a reservation gone may let an append in
        for (_, _, _, future), batches in zip(mine, loaded, strict=True):
            future.set_result(batches)

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
        self._settle_forgotten()
        self._expire(now)
        positions: dict[StreamKey, list[int]] = {}
        for r in self._readers.values():
            positions.setdefault(r.stream, []).append(r.position)
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
        owner = None if block.prefetched_for is None else self._readers.get(block.prefetched_for)
        if owner is not None:
            shrink(owner, block, now, self.readahead_bytes)

    def count_index_gets(self, reader: ObjectReader, gets: int, fetched: int) -> None:
        """Count the GETs ``reader`` made for its index since it had made ``gets``."""
        with self._lock:
            self.stats.gets += reader.gets - gets
            self.stats.get_bytes += reader.fetched_bytes - fetched


__all__ = ["BATCH_OVERHEAD", "CacheStats", "MessageCache", "Reader", "StreamKey", "Uncached",
           "weight"]
