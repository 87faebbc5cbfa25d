"""The block cache: decoded data blocks of uploaded objects, shared by every reader of a store
(docs/cache.md).

Blocks are keyed by ``(store URL, object key, block position)`` and weighed by their decoded
bytes. A miss loads the run of missing blocks a read needs with the object reader's coalesced
ranged GETs; a reader that needs a block another is loading waits for that load instead of
starting its own GET. Eviction is least-recently-used within ``max_bytes`` (consumer-focused
eviction and readahead build on this, per docs/cache.md).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass

from streamlib.objects import IndexEntry, ObjectReader
from streamlib.records import RecordBatch

BATCH_OVERHEAD = 200
"""Bytes a cached batch costs beyond its payload (the object and its fields), for the budget."""

BlockKey = tuple[str, str, int]


class Uncached(Exception):
    """Raised inside :meth:`BlockCache.load` with ``cache_only`` when a block is not in memory."""


@dataclass(slots=True)
class CacheStats:
    """Counters of the read path (a snapshot: ``store.stats()["cache"]``)."""

    block_hits: int = 0
    block_misses: int = 0
    shared_loads: int = 0
    """Blocks a read found being loaded by another and waited for instead of a GET."""
    gets: int = 0
    get_bytes: int = 0
    evicted_blocks: int = 0
    evicted_bytes: int = 0
    log_reads: int = 0
    """Fetches answered (at least partly) from the log cache, with no object-store request."""
    cache_only_misses: int = 0

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


def weight(batches: Sequence[RecordBatch]) -> int:
    return sum(b.size + BATCH_OVERHEAD for b in batches)


class BlockCache:
    """Decoded blocks within ``max_bytes``; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._blocks: OrderedDict[BlockKey, tuple[list[RecordBatch], int]] = OrderedDict()
        self._loading: dict[BlockKey, Future[list[RecordBatch]]] = {}
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held now (never above ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._blocks)

    def load(self, reader: ObjectReader, entries: Sequence[IndexEntry], *,
             cache_only: bool = False) -> list[list[RecordBatch]]:
        """Each block's batches, in the order of ``entries`` (blocks of ``reader``'s object):
        from memory, from a load another reader started, or fetched now with one GET per run
        of adjacent missing blocks. ``cache_only``: raise :class:`Uncached` rather than wait or
        fetch."""
        found: list[list[RecordBatch] | None] = [None] * len(entries)
        waits: list[tuple[int, Future[list[RecordBatch]]]] = []
        mine: list[tuple[int, IndexEntry, BlockKey, Future[list[RecordBatch]]]] = []
        with self._lock:
            for i, entry in enumerate(entries):
                key = (reader.store.url, reader.key, entry.position)
                held = self._blocks.get(key)
                if held is not None:
                    self._blocks.move_to_end(key)
                    found[i] = held[0]
                    self.stats.block_hits += 1
                    continue
                if cache_only:
                    self.stats.cache_only_misses += 1
                    for _, _, own, future in mine:  # give back what this call claimed
                        del self._loading[own]
                        future.cancel()
                    raise Uncached(entry)
                loading = self._loading.get(key)
                if loading is not None:
                    waits.append((i, loading))
                    self.stats.shared_loads += 1
                    continue
                future: Future[list[RecordBatch]] = Future()
                self._loading[key] = future
                mine.append((i, entry, key, future))
                self.stats.block_misses += 1
        if mine:
            self._fetch(reader, mine, found)
        for i, future in waits:
            found[i] = future.result()
        return found  # type: ignore[return-value]

    def _fetch(self, reader: ObjectReader,
               mine: list[tuple[int, IndexEntry, BlockKey, Future[list[RecordBatch]]]],
               found: list[list[RecordBatch] | None]) -> None:
        gets, fetched = reader.gets, reader.fetched_bytes
        try:
            loaded = reader.read_blocks([entry for _, entry, _, _ in mine])
        except BaseException as error:
            with self._lock:
                for _, _, key, _ in mine:
                    self._loading.pop(key, None)
            for _, _, _, future in mine:
                future.set_exception(error)
            raise
        finally:
            with self._lock:
                self.stats.gets += reader.gets - gets
                self.stats.get_bytes += reader.fetched_bytes - fetched
        with self._lock:
            for (i, _, key, _), batches in zip(mine, loaded, strict=True):
                found[i] = batches
                self._loading.pop(key, None)
                size = weight(batches)
                if size > self.max_bytes:
                    continue  # served to this read, too big to keep
                self._blocks[key] = (batches, size)
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, size) = self._blocks.popitem(last=False)
                self._bytes -= size
                self.stats.evicted_blocks += 1
                self.stats.evicted_bytes += size
        for (_, _, _, future), batches in zip(mine, loaded, strict=True):
            future.set_result(batches)

    def count_index_gets(self, reader: ObjectReader, gets: int, fetched: int) -> None:
        """Count the GETs ``reader`` made for its index since it had made ``gets``."""
        with self._lock:
            self.stats.gets += reader.gets - gets
            self.stats.get_bytes += reader.fetched_bytes - fetched


__all__ = ["BATCH_OVERHEAD", "BlockCache", "CacheStats", "Uncached"]
