"""Metrics: the named counters, gauges and histograms of a store (``store.metrics()``), and
the :class:`Recorder` of what only the data path sees as it goes (docs/metrics.md).

A metric **family** has a name in Prometheus style (``streamlib_<what>_<unit>``; no
``_total``, which an exporter adds to a counter's name), a type, a unit, a help text and its
**samples**, each with its labels. A counter only goes up over a store's life; a gauge is the
value at the moment of the snapshot; a histogram counts observations in fixed buckets (each an
upper bound, an observation counted in the first bucket whose bound is at or above it) and
sums them.

Most values are read when a snapshot is taken, from the counters the parts keep anyway (the
uploader's, the cache's, the lifecycle's, the object stores' meter): nothing is added to their
paths. What only the data path sees — each append's latency, records and bytes, each fetch's
latency and size, each upload round's, the age of the oldest acknowledged append not yet
uploaded, and the events of a shared store (opens for write, fences, hand-overs, take-overs) —
the node's :class:`Recorder` counts: per append a ``bisect`` of a short tuple, an increment and
three additions, under the recorder's lock, taken once per acknowledgement of a stream's
appends (not once per append).

:func:`collect` builds the snapshot from a store's parts (``store.metrics()``); the table of
every family, its labels and what it counts is docs/metrics.md. Per-stream families cost a walk
over the streams, so they are left out unless asked for (``per_stream=True``: every stream; an
int *n*: the *n* streams with the most bytes appended since the store opened).

Lock order: ``Recorder._lock`` is a leaf (the acknowledgement takes it under a stream's
``lock``; it calls nothing while holding it).
"""

from __future__ import annotations

import bisect
import enum
import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from streamlib import codec
from streamlib.cost import Prices

if TYPE_CHECKING:
    from streamlib.node import Node
    from streamlib.state import Inflight, StreamState
    from streamlib.stats import Sources

MetricType = Literal["counter", "gauge", "histogram"]

LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0)
"""Bucket bounds of the latency histograms, in seconds (100 µs to 30 s)."""
SIZE_BOUNDS: tuple[float, ...] = tuple(float(4 ** n) for n in range(3, 14))
"""Bucket bounds of the size histograms, in bytes: powers of 4 from 64 B to 64 MiB."""
BACKLOG_RESOLUTION = 0.01
"""Acknowledgements closer together than this (seconds) share one entry of the backlog's
queue (so the queue holds at most a hundred entries a second of backlog)."""


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """A histogram as it was at a snapshot: ``counts[i]`` observations at or below
    ``bounds[i]`` (and above the bound before), ``counts[-1]`` those above every bound; the
    ``sum`` of all observations."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` of each bucket, the last bound
        ``inf`` (Prometheus' ``le`` buckets)."""
        found, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            found.append((bound, total))
        return found


class Histogram:
    """Observations in fixed buckets; not thread-safe (its owner's lock guards it)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def value(self) -> HistogramValue:
        return HistogramValue(self.bounds, tuple(self.counts), self.sum)


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a family, with its labels."""

    value: float | HistogramValue
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Family:
    """A named metric and its samples (see the module docstring)."""

    name: str
    type: MetricType
    unit: str
    """``seconds``, ``bytes``, ``records``, ``requests``, ``usd``, ``ratio``, or ``""`` (a
    count of things the name says)."""
    help: str
    samples: tuple[Sample, ...]

    def value(self, **labels: str) -> float | HistogramValue:
        """The value of the sample with exactly these labels (KeyError if none has them)."""
        for sample in self.samples:
            if dict(sample.labels) == labels:
                return sample.value
        raise KeyError(f"{self.name} has no sample labelled {labels}")

    def total(self) -> float:
        """The sum of the samples' values (a histogram's: its observations)."""
        return sum(s.value.count if isinstance(s.value, HistogramValue) else s.value
                   for s in self.samples)


Metrics = dict[str, Family]
"""A snapshot: the families by name, in the order docs/metrics.md lists them."""


def family(name: str, type: MetricType, unit: str, help: str,
           samples: Iterable[tuple[Mapping[str, str], float | HistogramValue]]
           | float | HistogramValue) -> Family:
    """A family from ``(labels, value)`` pairs, or from one value without labels."""
    if isinstance(samples, int | float | HistogramValue):
        return Family(name, type, unit, help, (Sample(samples),))
    return Family(name, type, unit, help,
                  tuple(Sample(value, dict(labels)) for labels, value in samples))


class Event(enum.Enum):
    """What a node counts as it happens, beside the data path's observations."""

    WRITE_OPEN = "write_open"
    """A stream opened for write here: a new epoch, earlier write handles fenced."""
    FENCED_BY_OPEN = "fenced_by_open"
    """A stream this node wrote was opened for write by another node."""
    NODE_FENCED = "node_fenced"
    """Another process registered this node (a take-over): its appends stop."""
    HANDOVER_IN = "handover_in"
    """A stream opened here was released to this node by the node that wrote it before."""
    HANDOVER_OUT = "handover_out"
    """A stream this node wrote was released to its new owner."""
    TAKE_OVER = "take_over"
    """This node took a dead node over."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """A snapshot of a :class:`Recorder`."""

    append_latency: HistogramValue
    append_bytes: int
    append_records: int
    fetch_latency: HistogramValue
    fetch_bytes: HistogramValue
    upload_latency: HistogramValue
    upload_bytes: HistogramValue
    events: dict[Event, int]
    backlog_age: float
    """Seconds since the oldest acknowledged append not yet uploaded was acknowledged."""


class Recorder:
    """What one node's data path observes (see the module docstring); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._append_latency = Histogram(LATENCY_BOUNDS)  # GUARDED_BY(_lock)
        self._append_bytes = self._append_records = 0  # GUARDED_BY(_lock)
        self._fetch_latency = Histogram(LATENCY_BOUNDS)  # GUARDED_BY(_lock)
        self._fetch_bytes = Histogram(SIZE_BOUNDS)  # GUARDED_BY(_lock)
        self._upload_latency = Histogram(LATENCY_BOUNDS)  # GUARDED_BY(_lock)
        self._upload_bytes = Histogram(SIZE_BOUNDS)  # GUARDED_BY(_lock)
        self._events = dict.fromkeys(Event, 0)  # GUARDED_BY(_lock)
        # [highest WAL position acknowledged by then, when] of the appends not yet uploaded,
        # oldest first; positions never go down. GUARDED_BY(_lock)
        self._waiting: deque[list[float]] = deque()
        self._acknowledged_to = -1  # GUARDED_BY(_lock)

    def acknowledged(self, items: Sequence[Inflight], position: int) -> None:
        """Appends were acknowledged, the last at WAL ``position`` (on the thread that
        acknowledged them, under their stream's lock)."""
        now = time.monotonic()
        with self._lock:
            # Histogram.observe inlined: this runs for every append.
            latency = self._append_latency
            counts, bounds = latency.counts, latency.bounds
            waited, records, size = 0.0, 0, 0
            for item in items:
                took = now - item.started
                counts[bisect.bisect_left(bounds, took)] += 1
                waited += took
                records += item.batch.count
                size += item.batch.size
            latency.sum += waited
            self._append_records += records
            self._append_bytes += size
            if position > self._acknowledged_to:
                self._acknowledged_to = position
            waiting = self._waiting
            if waiting and now - waiting[-1][1] < BACKLOG_RESOLUTION:
                waiting[-1][0] = self._acknowledged_to
            else:
                waiting.append([self._acknowledged_to, now])

    def uploaded(self, frontier: int) -> None:
        """An upload round committed every acknowledged append at WAL positions up to
        ``frontier``."""
        with self._lock:
            waiting = self._waiting
            while waiting and waiting[0][0] <= frontier:
                waiting.popleft()

    def round_done(self, seconds: float, size: int) -> None:
        """An upload round put ``size`` bytes of objects and committed them in ``seconds``."""
        with self._lock:
            self._upload_latency.observe(seconds)
            self._upload_bytes.observe(size)

    def fetched(self, seconds: float, size: int) -> None:
        """A fetch returned ``size`` payload bytes after ``seconds``."""
        with self._lock:
            self._fetch_latency.observe(seconds)
            self._fetch_bytes.observe(size)

    def event(self, what: Event) -> None:
        with self._lock:
            self._events[what] += 1

    def snapshot(self, pending: Callable[[], int]) -> Recorded:
        """The values now. ``pending()``: the bytes acknowledged and not yet committed; when
        it is 0, what the queue held before is no backlog (its stream was destroyed)."""
        before = time.monotonic()
        idle = pending() == 0
        with self._lock:
            waiting = self._waiting
            while idle and waiting and waiting[0][1] < before:
                waiting.popleft()
            now = time.monotonic()
            age = now - waiting[0][1] if waiting else 0.0
            return Recorded(self._append_latency.value(), self._append_bytes,
                            self._append_records, self._fetch_latency.value(),
                            self._fetch_bytes.value(), self._upload_latency.value(),
                            self._upload_bytes.value(), dict(self._events), max(0.0, age))


# ---- the snapshot ----

Families = list[Family]


def collect(parts: Sources, *, per_stream: bool | int = False,
            prices: Prices | None = None) -> Metrics:
    """Every family of one store now (see the module docstring; ``prices``: of the requests'
    cost estimate, S3 Standard's by default)."""
    if not isinstance(per_stream, bool) and (not isinstance(per_stream, int) or per_stream < 0):
        raise ValueError(f"per_stream must be a bool or an int >= 0: per_stream=`{per_stream}`")
    if prices is not None and not isinstance(prices, Prices):
        raise TypeError(f"prices must be a streamlib.cost.Prices, not {type(prices).__name__}")
    node = parts.node
    recorded = node.metrics.snapshot(lambda: node.backlog.bytes)
    found: Families = [
        family("streamlib_node_info", "gauge", "", "The node: its id, WAL backend, metadata "
               "backend and codec (always 1).",
               [({"node": node.id, "wal": node.config.wal, "metadata": node.config.metadata,
                  "codec": codec.backend}, 1)]),
        family("streamlib_streams", "gauge", "", "Streams this node knows.", len(node.streams)),
    ]
    _data_path(found, recorded)
    _upload_and_wal(found, parts, recorded)
    _cache(found, parts)
    _requests(found, parts, prices or Prices())
    _shared(found, node, recorded)
    _lifecycle(found, parts)
    if per_stream is not False:
        states = [s for s in node.streams.all() if not s.destroyed]
        if per_stream is not True:
            states = heapq.nlargest(per_stream, states, key=lambda s: s.appended_bytes)
        _streams(found, sorted(states, key=lambda s: s.id), parts.read.tailing())
    return {f.name: f for f in found}


def _data_path(found: Families, recorded: Recorded) -> None:
    found += [
        family("streamlib_append_latency_seconds", "histogram", "seconds", "Appends, from the "
               "call to the acknowledgement (durable in the WAL).", recorded.append_latency),
        family("streamlib_append_bytes", "counter", "bytes", "Payload bytes appended.",
               recorded.append_bytes),
        family("streamlib_append_records", "counter", "records", "Records appended.",
               recorded.append_records),
        family("streamlib_fetch_latency_seconds", "histogram", "seconds", "Fetches, from the "
               "call to the answer (a long poll's wait for an append not included).",
               recorded.fetch_latency),
        family("streamlib_fetch_bytes", "histogram", "bytes", "Fetches by the payload bytes "
               "they returned.", recorded.fetch_bytes),
    ]


def _upload_and_wal(found: Families, parts: Sources, recorded: Recorded) -> None:
    node, up, wal = parts.node, parts.uploader.stats, parts.wal
    pending = node.backlog.bytes
    usage = wal.usage
    capacity = wal.capacity
    # A WAL without a capacity (the object WAL) holds appends back at wal_bytes waiting.
    fill = usage / capacity if capacity else pending / node.config.wal_bytes
    found += [
        family("streamlib_wal_bytes", "gauge", "bytes", "Bytes the WAL holds (from its trim "
               "position to its end).", usage),
        family("streamlib_wal_capacity_bytes", "gauge", "bytes", "What the WAL can hold (the "
               "object WAL: wal_bytes, the most data it lets wait for upload).",
               capacity if capacity is not None else node.config.wal_bytes),
        family("streamlib_wal_fill_ratio", "gauge", "ratio", "How full the WAL is, 0 to 1 "
               "(the object WAL: data waiting for upload over wal_bytes); appends wait at 1.",
               fill),
        family("streamlib_upload_pending_bytes", "gauge", "bytes", "Payload bytes acknowledged "
               "and not yet committed in objects.", pending),
        family("streamlib_upload_backlog_age_seconds", "gauge", "seconds", "Age of the oldest "
               "acknowledged append not yet uploaded (0: none waits).", recorded.backlog_age),
        family("streamlib_upload_rounds", "counter", "", "Upload rounds committed.",
               up.rounds),
        family("streamlib_upload_failures", "counter", "", "Upload rounds that failed (retried "
               "later).", up.failures),
        family("streamlib_uploaded_bytes", "counter", "bytes", "Bytes of objects uploaded.",
               up.bytes),
        family("streamlib_uploaded_objects", "counter", "", "Objects uploaded, by kind.",
               [({"kind": "single"}, up.stream_objects),
                ({"kind": "multi"}, up.objects - up.stream_objects)]),
        family("streamlib_upload_round_seconds", "histogram", "seconds", "Upload rounds, from "
               "the first PUT to the commit.", recorded.upload_latency),
        family("streamlib_upload_round_bytes", "histogram", "bytes", "Upload rounds by the "
               "bytes of objects they put.", recorded.upload_bytes),
    ]


def _cache(found: Families, parts: Sources) -> None:
    c = parts.cache.stats.snapshot()
    usage = parts.cache.usage()
    found += [
        family("streamlib_cache_bytes", "gauge", "bytes", "Bytes the message cache holds, by "
               "kind (pinned: waiting for upload).",
               [({"kind": "blocks"}, usage["block_bytes"]),
                ({"kind": "log_chunks"}, usage["log_chunk_bytes"]),
                ({"kind": "log_pinned"}, usage["log_pinned_bytes"]),
                ({"kind": "loading"}, usage["loading_bytes"])]),
        family("streamlib_cache_max_bytes", "gauge", "bytes", "The message cache's budget.",
               usage["max_bytes"]),
        family("streamlib_cache_hits", "counter", "", "Reads answered from memory: blocks found "
               "cached, fetches answered from the log cache.",
               [({"kind": "block"}, c["block_hits"]), ({"kind": "log"}, c["log_reads"])]),
        family("streamlib_cache_misses", "counter", "", "Blocks loaded from the object store, "
               "and cache-only fetches refused.",
               [({"kind": "block"}, c["block_misses"]),
                ({"kind": "cache_only"}, c["cache_only_misses"])]),
        family("streamlib_cache_evictions", "counter", "", "Blocks and log chunks evicted, by "
               "cause: behind every reader, of streams no reader is on, ahead of a reader.",
               [({"cause": "behind"}, c["evicted_behind_readers"]),
                ({"cause": "idle"}, c["evicted_idle"]),
                ({"cause": "ahead"}, c["evicted_ahead_of_readers"])]),
        family("streamlib_cache_evicted_bytes", "counter", "bytes", "Bytes evicted.",
               c["evicted_bytes"]),
        family("streamlib_cache_readers", "gauge", "", "Readers the cache tracks for readahead.",
               c["readers"]),
        family("streamlib_readahead_blocks", "counter", "", "Blocks loaded ahead of a reader.",
               c["readahead_blocks"]),
        family("streamlib_readahead_hits", "counter", "", "Prefetched blocks their reader read.",
               c["readahead_hits"]),
        family("streamlib_readahead_wasted_bytes", "counter", "bytes", "Prefetched bytes "
               "evicted or dropped before their reader got to them.",
               c["readahead_wasted_bytes"]),
    ]
    lags = [lag for _, lag in parts.read.tailing()]
    found += [
        family("streamlib_tailing_readers", "gauge", "", "read() iterators open now.",
               len(lags)),
        family("streamlib_tailing_max_lag_records", "gauge", "records", "How far the read() "
               "iterator furthest behind is from its stream's end.", max(lags, default=0)),
    ]


def _requests(found: Families, parts: Sources, prices: Prices) -> None:
    counts = parts.meter.snapshot()
    counts.pop("total")
    calls, longest = parts.objects.in_flight()
    found += [
        family("streamlib_object_requests", "counter", "requests", "Requests made of the "
               "object stores (each attempt), by purpose and class.",
               [({"purpose": purpose, "kind": kind.removesuffix("s")}, c[kind])
                for purpose, c in counts.items()
                for kind in ("puts", "gets", "heads", "lists", "deletes")]),
        family("streamlib_object_request_bytes", "counter", "bytes", "Request bodies sent and "
               "GET answers received, by purpose.",
               [({"purpose": purpose, "direction": direction}, c[key])  # type: ignore[literal-required]
                for purpose, c in counts.items()
                for direction, key in (("sent", "bytes_sent"),
                                       ("received", "bytes_received"))]),
        family("streamlib_object_request_cost_usd", "counter", "usd", "The requests' estimated "
               "cost in US dollars, by purpose (cost.Prices; S3 Standard by default).",
               [({"purpose": purpose}, prices.of(c)) for purpose, c in counts.items()]),
        family("streamlib_object_calls_in_flight", "gauge", "", "Object-store calls running.",
               calls),
        family("streamlib_object_call_longest_seconds", "gauge", "seconds", "How long the "
               "oldest object-store call running has run.", longest),
    ]


def _shared(found: Families, node: Node, recorded: Recorded) -> None:
    events = recorded.events
    fenced = node.taken_over
    found += [
        family("streamlib_write_opens", "counter", "", "Streams opened for write here (each "
               "a new epoch: earlier write handles are fenced).", events[Event.WRITE_OPEN]),
        family("streamlib_fences", "counter", "", "Fences met: a stream this node wrote "
               "opened for write by another node; this node taken over.",
               [({"cause": "opened_elsewhere"}, events[Event.FENCED_BY_OPEN]),
                ({"cause": "node_taken_over"}, events[Event.NODE_FENCED])]),
        family("streamlib_handovers", "counter", "", "Streams handed over: released by "
               "another node to this one (in), by this node to another (out).",
               [({"direction": "in"}, events[Event.HANDOVER_IN]),
                ({"direction": "out"}, events[Event.HANDOVER_OUT])]),
        family("streamlib_takeovers", "counter", "", "Dead nodes this node took over.",
               events[Event.TAKE_OVER]),
        family("streamlib_node_fenced", "gauge", "", "1 once another process took this node "
               "over (its appends stop), else 0.", int(fenced)),
    ]


def _lifecycle(found: Families, parts: Sources) -> None:
    life = parts.lifecycle.snapshot()
    work = life["compaction"]
    kinds = life["kinds"]
    found += [
        family("streamlib_objects", "gauge", "", "Live objects by kind, as of the last "
               "lifecycle pass.", [({"kind": k}, v["objects"]) for k, v in kinds.items()]),
        family("streamlib_object_bytes", "gauge", "bytes", "Bytes of live objects by kind, as "
               "of the last lifecycle pass.",
               [({"kind": k}, v["bytes"]) for k, v in kinds.items()]),
        family("streamlib_doomed_objects", "gauge", "", "Objects waiting for deletion, as of "
               "the last lifecycle pass.", life["doomed"].get("objects", 0)),
        family("streamlib_doomed_object_bytes", "gauge", "bytes", "Their bytes.",
               life["doomed"].get("bytes", 0)),
        family("streamlib_lifecycle_passes", "counter", "", "Lifecycle passes run.",
               life["passes"]),
        family("streamlib_lifecycle_failures", "counter", "", "Lifecycle passes and sweeps "
               "that failed.", life["failures"]),
        family("streamlib_retention_trims", "counter", "", "Trims made by retention.",
               life["retention_trims"]),
        family("streamlib_compaction_tasks", "counter", "", "Compaction tasks run.",
               work["tasks"]),
        family("streamlib_compaction_objects", "counter", "", "Objects compaction read and "
               "wrote.", [({"direction": "read"}, work["objects_read"]),
                          ({"direction": "written"}, work["objects_written"])]),
        family("streamlib_compaction_bytes", "counter", "bytes", "Bytes compaction read and "
               "wrote.", [({"direction": "read"}, work["bytes_read"]),
                          ({"direction": "written"}, work["bytes_written"])]),
        family("streamlib_compaction_conflicts", "counter", "", "Compaction swaps refused "
               "(another node changed their inputs first).", work["conflicts"]),
        family("streamlib_compaction_seconds", "counter", "seconds", "Time spent in "
               "compaction.", work["seconds"]),
        family("streamlib_compaction_backlog_bytes", "gauge", "bytes", "Bytes in objects "
               "small enough to compact, as of the last pass.", life["backlog_bytes"]),
        family("streamlib_deleted_objects", "counter", "", "Objects deleted: doomed ones past "
               "their grace (lifecycle), unreferenced ones (gc).",
               [({"by": "lifecycle"}, life["deletion"]["deleted"]),
                ({"by": "gc"}, life["gc_deleted"])]),
        family("streamlib_deleted_bytes", "counter", "bytes", "Their bytes.",
               [({"by": "lifecycle"}, life["deletion"]["deleted_bytes"]),
                ({"by": "gc"}, life["gc_deleted_bytes"])]),
        family("streamlib_gc_sweeps", "counter", "", "Garbage-collecting sweeps run.",
               life["sweeps"]),
    ]


def _streams(found: Families, states: Sequence[StreamState],
             tailing: Sequence[tuple[StreamState, int]]) -> None:
    """The per-stream families of ``states`` (their values read without their locks: a
    moment's values, each consistent alone)."""

    def each(value: Callable[[StreamState], float | None]
             ) -> list[tuple[Mapping[str, str], float]]:
        return [({"stream": str(s.id), "name": s.name or ""}, v) for s in states
                if (v := value(s)) is not None]

    readers: dict[int, list[int]] = {}
    for state, lag in tailing:
        readers.setdefault(state.id, []).append(lag)
    shown = [s for s in states if s.id in readers]
    found += [
        family("streamlib_stream_appends", "counter", "", "Appends acknowledged since the "
               "store opened.", each(lambda s: s.appends)),
        family("streamlib_stream_append_records", "counter", "records", "Records appended "
               "since the store opened.", each(lambda s: s.appended_records)),
        family("streamlib_stream_append_bytes", "counter", "bytes", "Payload bytes appended "
               "since the store opened.", each(lambda s: s.appended_bytes)),
        family("streamlib_stream_last_append_timestamp_seconds", "gauge", "seconds", "When "
               "this node last acknowledged an append (POSIX time).",
               each(lambda s: s.last_append)),
        family("streamlib_stream_created_timestamp_seconds", "gauge", "seconds", "When the "
               "stream was created (POSIX time, the creating node's clock).",
               each(lambda s: s.created)),
        family("streamlib_stream_records", "gauge", "records", "Readable records.",
               each(lambda s: s.acked_end - s.start_offset)),
        family("streamlib_stream_pending_bytes", "gauge", "bytes", "Payload bytes "
               "acknowledged and not yet uploaded.", each(lambda s: s.log_bytes)),
        family("streamlib_stream_stored_bytes", "gauge", "bytes", "Bytes of its ranges in "
               "live objects (last lifecycle pass + uploads since).",
               each(lambda s: s.stored_bytes)),
        family("streamlib_stream_tailing_readers", "gauge", "", "read() iterators open on it.",
               [({"stream": str(s.id), "name": s.name or ""}, len(readers[s.id]))
                for s in shown]),
        family("streamlib_stream_tailing_lag_records", "gauge", "records", "How far its "
               "read() iterator furthest behind is from its end.",
               [({"stream": str(s.id), "name": s.name or ""}, max(readers[s.id]))
                for s in shown]),
    ]


__all__ = ["BACKLOG_RESOLUTION", "LATENCY_BOUNDS", "SIZE_BOUNDS", "Event", "Family",
           "Histogram", "HistogramValue", "MetricType", "Metrics", "Recorded", "Recorder",
           "Sample", "collect", "family"]
