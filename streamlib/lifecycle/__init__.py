"""The object lifecycle of one store: retention, compaction, deletion and the garbage-collecting
sweep, run by one background thread, ``streamlib-lifecycle``, every ``compaction_interval_ms``
(the sweep at most every ``gc_interval_ms``), and on demand (docs/lifecycle.md).

The same thread gives the memory the store freed back to the system every
``memory_trim_interval_ms`` and after each pass (:mod:`streamlib.heap`); it runs when either
interval is set.

A pass: apply the retention of the streams this node owns (as trims), page through the live
objects (at most :data:`PLAN_RANGES` ranges planned at once), mark those without readable
records doomed, compact the small ones, then delete the doomed objects whose grace period has
passed. Nothing in a pass is fatal: an error is logged and
counted and the next pass tries again. Uploads never wait for a pass: it holds no lock of the
write path and shares only the object store and the metadata with it.

Lock order: ``Lifecycle._lock`` (a leaf) guards the counters and the one-pass-at-a-time flag;
a pass runs with no lock held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from streamlib import heap
from streamlib.io import ObjectStore
from streamlib.lifecycle.compaction import CompactionReport, Compactor, Task, object_kind
from streamlib.lifecycle.deletion import Deleter, DeletionReport
from streamlib.lifecycle.retention import Owned, Retainer
from streamlib.lifecycle.sweep import GarbageReport, Sweeper
from streamlib.meta import MetadataStore, ObjectMeta

if TYPE_CHECKING:
    from streamlib.node import Node
    from streamlib.state import StreamState
    from streamlib.stats import CompactionSnapshot, LifecycleSnapshot

log = logging.getLogger(__name__)

PLAN_RANGES = 200_000
"""Object ranges one plan holds at most (the rest are planned after its tasks ran): about
100 MB of metadata in memory at worst."""
PAGE_OBJECTS = 1000
"""Objects asked of the metadata at once."""


class Throttle:
    """A token bucket of ``rate`` bytes a second (0: unlimited) holding at most one second's
    worth: :meth:`spend` waits (on ``stop``, so a closing store is not held) while it is in
    debt."""

    def __init__(self, rate: int, stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._stop = stop
        self._clock = clock
        self._tokens = float(rate)  # GUARDED_BY(_lock)
        self._at = clock()  # GUARDED_BY(_lock)
        self._lock = threading.Lock()

    def spend(self, amount: int) -> None:
        if self.rate <= 0 or amount <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= amount
            debt = -self._tokens
        if debt > 0:
            self._stop.wait(debt / self.rate)


@dataclass(slots=True)
class LifecycleStats:
    """What the lifecycle did and found (``store.stats()["lifecycle"]``)."""

    passes: int = 0
    failures: int = 0
    retention_trims: int = 0
    """Trims made by retention (streams this node owns)."""
    sweeps: int = 0
    gc_deleted: int = 0
    """Objects the sweeps deleted (orphans, object-WAL leftovers, old manifest objects)."""
    gc_deleted_bytes: int = 0
    last_error: str | None = None
    compaction: CompactionReport = field(default_factory=CompactionReport)
    deletion: DeletionReport = field(default_factory=DeletionReport)
    objects: dict[str, dict[str, int]] = field(default_factory=dict)
    """By tier: ``{"objects": n, "bytes": n}`` of the live objects, as of the last pass."""
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    """The same by kind (``single``, ``multi``, ``compacted``: docs/metrics.md)."""
    doomed: dict[str, int] = field(default_factory=dict)
    """``{"objects": n, "bytes": n}`` waiting for deletion, as of the last pass."""
    backlog_bytes: int = 0
    """Bytes in live objects below ``compaction_object_bytes``, as of the last pass."""
    memory_trims: int = 0
    """Times the thread gave freed memory back to the system (:mod:`streamlib.heap`)."""

    def as_dict(self) -> LifecycleSnapshot:
        return {"passes": self.passes, "failures": self.failures, "last_error": self.last_error,
                "retention_trims": self.retention_trims, "sweeps": self.sweeps,
                "gc_deleted": self.gc_deleted, "gc_deleted_bytes": self.gc_deleted_bytes,
                "compaction": cast("CompactionSnapshot", self.compaction.as_dict()),
                "deletion": {"marked": self.deletion.marked, "deleted": self.deletion.deleted,
                             "deleted_bytes": self.deletion.deleted_bytes},
                "objects": {tier: dict(v) for tier, v in self.objects.items()},
                "kinds": {kind: dict(v) for kind, v in self.kinds.items()},
                "doomed": dict(self.doomed), "backlog_bytes": self.backlog_bytes,
                "memory_trims": self.memory_trims}


class Lifecycle:
    """Compaction, retention and deletion for one node's store (see the module docstring).
    ``stores`` maps each tier to its object store (``""`` always; ``"archive"`` when
    ``archive_url`` is set, and compaction then writes there). ``owns(state)`` tells whether
    this node writes a stream (it applies that stream's retention) and ``trim(state, offset)``
    trims it as the owner. After each swap the node's streams concerned load their object
    index again."""

    def __init__(self, *, node: Node, stores: Mapping[str, ObjectStore],
                 wal_stores: Sequence[ObjectStore], owns: Callable[[StreamState], bool],
                 trim: Callable[[StreamState, int], None]) -> None:
        self._node = node
        self._stores = dict(stores)
        self._wal_stores = list(wal_stores)
        # GUARDED_BY(_pass_lock), read alone by the thread: when the last sweep ended
        self._swept_at: float | None = None
        self._config = node.config
        self._owns = owns
        self._trim = trim
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pass_lock = threading.Lock()  # one pass at a time (the thread or compact())
        self.stats = LifecycleStats()  # GUARDED_BY(_lock); read through snapshot()
        self._thread: threading.Thread | None = None

    def _objects_replaced(self, stream_ids: Iterable[int]) -> None:
        for stream_id in stream_ids:
            state = self._node.streams.get(stream_id)
            if state is not None:
                state.objects_replaced()

    def _owned(self) -> list[Owned]:
        def trimmer(state: StreamState) -> Callable[[int], None]:
            return lambda offset: self._trim(state, offset)

        return [Owned(state.id, trimmer(state)) for state in self._node.streams.all()
                if not state.destroyed and self._owns(state)]

    # ---- the background thread ----

    def start(self) -> None:
        config = self._config
        if config.compaction_interval_ms <= 0 and \
                (config.memory_trim_interval_ms <= 0 or not heap.AVAILABLE):
            return
        self._thread = threading.Thread(target=self._run, name="streamlib-lifecycle",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        config = self._config
        forever = float("inf")

        def after(ms: int) -> float:
            return time.monotonic() + ms / 1000 if ms > 0 else forever

        next_pass = after(config.compaction_interval_ms)
        next_trim = after(config.memory_trim_interval_ms if heap.AVAILABLE else 0)
        while not self._stop.wait(max(0.0, min(next_pass, next_trim) - time.monotonic())):
            if time.monotonic() >= next_trim:
                self._trim_heap()
                next_trim = after(config.memory_trim_interval_ms)
            if time.monotonic() < next_pass:
                continue
            self._background_pass()
            next_pass = after(config.compaction_interval_ms)

    def _trim_heap(self) -> None:
        heap.trim()
        with self._lock:
            self.stats.memory_trims += 1

    def _background_pass(self) -> None:
        config = self._config
        try:
            self.run_pass(bytes_per_s=config.compaction_bytes_per_s)
        except Exception as error:  # counted in run_pass; never fatal
            log.warning("lifecycle pass failed: %r", error)
        if config.gc_interval_ms > 0 and not self._stopping() and (
                self._swept_at is None
                or time.monotonic() - self._swept_at >= config.gc_interval_ms / 1000):
            try:
                self.collect_garbage()
            except Exception as error:  # counted; never fatal
                log.warning("garbage collection failed: %r", error)
        self._trim_heap()  # a pass frees its buffers: give them back now

    def collect_garbage(self, *, dry_run: bool = False) -> GarbageReport:
        """One sweep now (:mod:`streamlib.lifecycle.sweep`); raises what stopped it."""
        with self._pass_lock:
            sweeper = Sweeper(meta=self._node.meta,
                              stores={tier: store.purposed("gc")
                                      for tier, store in self._stores.items()},
                              wal_stores=self._wal_stores,
                              grace_ms=self._config.delete_grace_ms)
            try:
                report = sweeper.sweep(dry_run=dry_run)
            except Exception as error:
                with self._lock:
                    self.stats.failures += 1
                    self.stats.last_error = repr(error)
                raise
            if not dry_run:
                self._swept_at = time.monotonic()
                with self._lock:
                    self.stats.sweeps += 1
                    self.stats.gc_deleted += report.objects
                    self.stats.gc_deleted_bytes += report.bytes
            return report

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._node.closing.is_set()

    # ---- a pass ----

    def run_pass(self, *, bytes_per_s: int = 0, delete: bool = True) -> CompactionReport:
        """One pass now (see the module docstring), its compaction reading and writing at most
        ``bytes_per_s`` (0: as fast as it can); returns what its compaction did (marks
        included in ``objects_doomed``). Raises what stopped it (after counting it)."""
        with self._pass_lock:
            try:
                report = self._pass(bytes_per_s, delete)
            except Exception as error:
                with self._lock:
                    self.stats.failures += 1
                    self.stats.last_error = repr(error)
                raise
            with self._lock:
                self.stats.passes += 1
                self.stats.compaction.add(report)
            return report

    def _pass(self, bytes_per_s: int, delete: bool) -> CompactionReport:
        meta = self._node.meta
        config = self._config
        trims = Retainer(meta=meta, stores=self._stores, config=config,
                         owned=self._owned).apply(self._stopping)
        spend = Throttle(bytes_per_s, self._stop).spend if bytes_per_s > 0 else None
        compactor = Compactor(meta=meta, stores=self._stores, config=config,
                              write_tier="archive" if "archive" in self._stores else "",
                              spend=spend, on_replaced=self._objects_replaced,
                              stopping=self._stopping)
        deleter = Deleter(meta=meta, stores=self._stores, grace_ms=config.delete_grace_ms)
        marks = DeletionReport()
        report = CompactionReport()
        started = time.monotonic()
        tally = _Tally()
        for chunk in self._chunks(meta):
            if self._stopping():
                break
            tally.add(chunk, config.compaction_object_bytes)
            streams = {s.id: s for s in meta.streams()}  # after the chunk: no later trims lost
            deleter.mark(chunk, streams, marks)
            tasks: list[Task] = compactor.plan(chunk, streams)
            report.add(compactor.run(tasks))
        report.objects_doomed += marks.marked
        if delete and not self._stopping():
            deletion = DeletionReport()
            deleter.delete_due(deletion)
            marks.deleted, marks.deleted_bytes = deletion.deleted, deletion.deleted_bytes
        doomed = meta.doomed()
        with self._lock:
            self.stats.retention_trims += trims
            self.stats.deletion.marked += marks.marked
            self.stats.deletion.deleted += marks.deleted
            self.stats.deletion.deleted_bytes += marks.deleted_bytes
            self.stats.objects = tally.tiers
            self.stats.kinds = tally.kinds
            self.stats.doomed = {"objects": len(doomed), "bytes": sum(d.size for d in doomed)}
            self.stats.backlog_bytes = tally.backlog
        if not self._stopping():  # every live object counted: each stream's stored bytes
            for state in self._node.streams.all():
                with state.lock:
                    state.stored_bytes = tally.streams.get(state.id, 0)
        report.seconds = time.monotonic() - started
        return report

    def _chunks(self, meta: MetadataStore) -> Iterator[list[ObjectMeta]]:
        """The live objects in key order, in chunks of at most :data:`PLAN_RANGES` ranges."""
        chunk: list[ObjectMeta] = []
        ranges = 0
        after: str | None = None
        while True:
            page = meta.live_objects(after=after, limit=PAGE_OBJECTS)
            for obj in page:
                if chunk and ranges + len(obj.ranges) > PLAN_RANGES:
                    yield chunk
                    chunk, ranges = [], 0
                chunk.append(obj)
                ranges += len(obj.ranges)
            if len(page) < PAGE_OBJECTS:
                break
            after = page[-1].key
        if chunk:
            yield chunk

    def snapshot(self) -> LifecycleSnapshot:
        with self._lock:
            return self.stats.as_dict()


class _Tally:
    """What a pass counts of the live objects: by tier and by kind (objects, bytes), the
    bytes of small ones (compaction's backlog), each stream's bytes in them."""

    def __init__(self) -> None:
        self.tiers: dict[str, dict[str, int]] = {}
        self.kinds: dict[str, dict[str, int]] = {}
        self.backlog = 0
        self.streams: dict[int, int] = {}

    def add(self, objects: Iterable[ObjectMeta], small: int) -> None:
        streams = self.streams
        for obj in objects:
            for held in (self.tiers.setdefault(obj.tier, {"objects": 0, "bytes": 0}),
                         self.kinds.setdefault(object_kind(obj.key), {"objects": 0, "bytes": 0})):
                held["objects"] += 1
                held["bytes"] += obj.size
            if obj.size < small:
                self.backlog += obj.size
            for r in obj.ranges:
                streams[r.stream_id] = streams.get(r.stream_id, 0) + r.size


__all__ = ["PAGE_OBJECTS", "PLAN_RANGES", "Lifecycle", "LifecycleStats", "Throttle"]
