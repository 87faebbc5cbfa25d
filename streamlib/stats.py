"""The shape of ``store.stats()``: a snapshot of counters as nested dicts, each typed
(:class:`Stats` and the dicts in it), so that ``store.stats()["cost"]["read"]["gets"]`` is an
``int`` to a type checker with no cast. The same keys as ever; new ones may be added.

``store.metrics()`` (:mod:`streamlib.metrics`) reads the same parts, named for monitoring
systems. Both read the parts of one store through :class:`Sources`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, cast

if TYPE_CHECKING:
    from streamlib.cache import MessageCache
    from streamlib.cost import Meter
    from streamlib.io import ObjectStore
    from streamlib.lifecycle import Lifecycle
    from streamlib.node import Node
    from streamlib.read import ReadPath
    from streamlib.uploader import Uploader
    from streamlib.wal import Wal


class ObjectStoreCalls(TypedDict):
    """Calls to the object store running now, and how long the oldest has run (seconds)."""

    calls_in_flight: int
    longest_call_s: float


class CacheSnapshot(TypedDict):
    """The message cache's counters (:class:`~streamlib.cache.CacheStats`) and the bytes it
    holds by kind (:meth:`~streamlib.cache.MessageCache.usage`); of the whole cache, which
    several stores may share."""

    block_hits: int
    block_misses: int
    shared_loads: int
    gets: int
    get_bytes: int
    log_reads: int
    uploaded_log_reads: int
    log_waits: int
    cache_only_misses: int
    readahead_blocks: int
    readahead_hits: int
    readahead_wasted_bytes: int
    evicted_behind_readers: int
    evicted_idle: int
    evicted_ahead_of_readers: int
    evicted_bytes: int
    evicted_log_chunks: int
    readers: int
    bytes: int
    max_bytes: int
    block_bytes: int
    blocks: int
    log_chunk_bytes: int
    log_chunks: int
    log_pinned_bytes: int
    loading_bytes: int


class CompactionSnapshot(TypedDict):
    """What compaction did (:class:`~streamlib.lifecycle.compaction.CompactionReport`)."""

    tasks: int
    objects_read: int
    objects_written: int
    objects_doomed: int
    bytes_read: int
    bytes_written: int
    gets: int
    conflicts: int
    failures: int
    seconds: float
    errors: list[str]


class DeletionSnapshot(TypedDict):
    marked: int
    deleted: int
    deleted_bytes: int


class LifecycleSnapshot(TypedDict):
    """What the lifecycle did and found (:class:`~streamlib.lifecycle.LifecycleStats`);
    ``objects`` (by tier) and ``kinds`` (by kind) map to ``{"objects": n, "bytes": n}``,
    ``doomed`` is ``{"objects": n, "bytes": n}`` (empty before the first pass)."""

    passes: int
    failures: int
    last_error: str | None
    retention_trims: int
    sweeps: int
    gc_deleted: int
    gc_deleted_bytes: int
    compaction: CompactionSnapshot
    deletion: DeletionSnapshot
    objects: dict[str, dict[str, int]]
    kinds: dict[str, dict[str, int]]
    doomed: dict[str, int]
    backlog_bytes: int
    memory_trims: int


class RequestCounts(TypedDict):
    """The requests of one purpose (:mod:`streamlib.cost`)."""

    puts: int
    gets: int
    heads: int
    lists: int
    deletes: int
    bytes_sent: int
    bytes_received: int


class Stats(TypedDict):
    """``store.stats()``: streams, bytes waiting for upload, the uploader's counters, the WAL's
    bytes, the object store's calls in flight, the cache's, the lifecycle's, and the requests
    made of the object stores by purpose (``"cost"``: ``wal``, ``upload``, ``manifest``,
    ``read``, ``compaction``, ``gc`` and ``total``)."""

    streams: int
    pending_upload_bytes: int
    upload_rounds: int
    objects_uploaded: int
    stream_objects_uploaded: int
    bytes_uploaded: int
    upload_failures: int
    last_upload_error: str | None
    wal_usage_bytes: int
    object_store: ObjectStoreCalls
    cache: CacheSnapshot
    lifecycle: LifecycleSnapshot
    cost: dict[str, RequestCounts]


@dataclass(frozen=True, slots=True)
class Sources:
    """The parts of one open store that stats and metrics read."""

    node: Node
    wal: Wal
    objects: ObjectStore
    cache: MessageCache
    uploader: Uploader
    read: ReadPath
    lifecycle: Lifecycle
    meter: Meter


def gather(parts: Sources) -> Stats:
    """``store.stats()`` now."""
    node, up = parts.node, parts.uploader.stats
    calls, longest = parts.objects.in_flight()
    cache = cast(CacheSnapshot, {**parts.cache.stats.snapshot(), **parts.cache.usage()})
    return {"streams": sum(1 for s in node.streams.all() if not s.destroyed),
            "pending_upload_bytes": node.backlog.bytes,
            "upload_rounds": up.rounds, "objects_uploaded": up.objects,
            "stream_objects_uploaded": up.stream_objects, "bytes_uploaded": up.bytes,
            "upload_failures": up.failures, "last_upload_error": up.last_error,
            "wal_usage_bytes": parts.wal.usage,
            "object_store": {"calls_in_flight": calls, "longest_call_s": longest},
            "cache": cache, "lifecycle": parts.lifecycle.snapshot(),
            "cost": parts.meter.snapshot()}


__all__ = ["CacheSnapshot", "CompactionSnapshot", "DeletionSnapshot", "LifecycleSnapshot",
           "ObjectStoreCalls", "RequestCounts", "Sources", "Stats", "gather"]
