"""The object lifecycle against a model (docs/lifecycle.md, "Tests it must pass"): appends,
upload rounds, trims, creates and destroys, retention changes, lifecycle passes (with and
without their deletes), sweeps, planted orphans and reopens, interleaved at random on a local
store whose sizes keep compaction busy (small objects, windows of three) and whose grace period
is zero.

The model holds every record appended to each stream and its start offset. After every step:
- every record at or above a stream's start offset reads back identical (value, key, headers,
  timestamp) at its offset, through the read path and straight from the objects the metadata
  names (so that no cache can hide a bad compaction output);
- coverage: a live stream's committed ranges above its start offset are contiguous, begin at or
  below it and end at its committed end;
- no dangling reference, no leak: the bucket's data keys are exactly the live and doomed
  objects plus the orphans planted since the last sweep.
After each pass: no swap or mark refused, nothing live without a readable record, and each
stream's start offset where its retention puts it. The model alone cannot say where that is
(block granularity), so the pass reads the block indexes first and checks what the docs
promise in words (never back; by age, every record younger than ``max_age`` stays; by size,
at most ``max_bytes`` kept, nothing trimmed within it) and the point they define. After each
sweep: exactly the planted orphans gone, every live and doomed object still there."""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import streamlib
from streamlib import Record, Retention, Stream, StreamStore
from streamlib.meta import ObjectMeta, StreamObject
from streamlib.objects import IndexCache, IndexEntry, ObjectReader

KiB = 1024
HOUR_MS = 3_600_000
SETTINGS: dict[str, Any] = {
    "upload_interval_ms": 3_600_000,  # uploads happen at flush() (and trims, close)
    "block_bytes": 4 * KiB, "stream_object_bytes": 4 * KiB,
    "compaction_object_bytes": "1MiB", "compaction_max_objects": 3,
    "compaction_interval_ms": 0, "delete_grace_ms": 0, "retry_timeout_ms": 0,
}
"""Every object is small for compaction and a window takes three: each pass has many tasks;
stream objects, multi-stream objects and multi-block ranges all come within a few appends."""

MAX_STREAMS = 4
AGES_MS = (0, 600_000, 2 * HOUR_MS, 10 * HOUR_MS)
"""How old a record's timestamp is when appended: young, young, old for 1 h, old for 4 h."""
MAX_AGES_S = (3600, 4 * 3600)
MAX_BYTES = (6 * KiB, 16 * KiB, 48 * KiB)

some_retention = st.builds(
    Retention, max_age=st.none() | st.sampled_from(MAX_AGES_S),
    max_bytes=st.none() | st.sampled_from(MAX_BYTES)).filter(lambda r: not r.keeps_everything)
retentions = st.none() | some_retention


class Refusals(logging.Handler):
    """The compaction swaps and the marks the metadata refused while this is attached, as the
    lifecycle logs them (a pass goes on after either, so its report alone does not show a
    refused mark)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.swaps: list[str] = []
        self.marks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("compaction swap refused"):
            self.swaps.append(message)
        elif message.startswith("marking"):
            self.marks.append(message)


@dataclass(frozen=True)
class RecordSpec:
    """A record to append, in few words (so that a failing example reads well): its value of
    ``size`` bytes (half random from ``seed``, half one byte), key, headers, and how old its
    timestamp is when appended."""

    size: int
    seed: int
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    age_ms: int

    def record(self, now_ms: int) -> Record:
        value = random.Random(self.seed).randbytes(self.size // 2)
        value += bytes([self.seed % 256]) * (self.size - len(value))
        return Record(value, key=self.key, headers=self.headers, timestamp=now_ms - self.age_ms)


record_specs = st.builds(
    RecordSpec, size=st.sampled_from((0, 1, 40, 300, 1200, 2500)), seed=st.integers(0, 1 << 16),
    key=st.sampled_from((None, b"", b"k1", b"key-two")),
    headers=st.sampled_from(((), (("h", b"1"),), (("h", b""), ("h", b"x" * 20)))),
    age_ms=st.builds(int.__add__, st.sampled_from(AGES_MS), st.integers(0, 1000)))
batches = st.lists(record_specs, min_size=1, max_size=6)


@dataclass
class ModelStream:
    records: list[Record] = field(default_factory=list)  # record i at offset i
    start: int = 0
    retention: Retention | None = None

    @property
    def next(self) -> int:
        return len(self.records)


def documented_retention_point(start: int, blocks: list[IndexEntry], retention: Retention,
                    now_ms: int) -> int:
    """Where docs/lifecycle.md ("Retention") says a pass at ``now_ms`` trims a stream whose
    committed ``blocks`` from ``start`` are these."""
    if not blocks:
        return start
    point = start
    if retention.max_age_ms is not None:
        cutoff = now_ms - retention.max_age_ms
        point = max(point, next((b.start_offset for b in blocks if b.max_timestamp >= cutoff),
                                blocks[-1].end_offset))
    if retention.max_bytes is not None:
        kept, at = 0, blocks[-1].end_offset
        for b in reversed(blocks):
            if kept + b.size > retention.max_bytes:
                break
            kept += b.size
            at = b.start_offset
        point = max(point, at)
    return point


class LifecycleMachine(RuleBasedStateMachine):
    """A store and the model fed the same operations; the lifecycle must lose, change or leak
    nothing."""

    base: ClassVar[Path]
    runs = itertools.count()
    seen: ClassVar[Counter[str]]  # what the lifecycle did over every example (set per test)

    def __init__(self) -> None:
        super().__init__()
        self.path = type(self).base / f"run{next(type(self).runs)}"
        self.store: StreamStore = streamlib.open(self.path, **SETTINGS)
        self.model: dict[int, ModelStream] = {}
        self.writers: dict[int, Stream] = {}
        self.destroyed: set[int] = set()
        self.orphans: set[str] = set()  # planted since the last sweep
        self.planted = itertools.count()
        self.indexes = IndexCache(4 << 20)  # keys are never reused: an index never goes stale
        self.verified: dict[tuple[str, int], int] = {}  # (key, stream) → read from this offset

    def teardown(self) -> None:
        self.store.close()

    # ---- helpers ----

    def pick(self, data: st.DataObject) -> tuple[int, ModelStream]:
        stream_id = data.draw(st.sampled_from(sorted(self.model)), label="stream")
        return stream_id, self.model[stream_id]

    def reader(self, obj: StreamObject) -> ObjectReader:
        return ObjectReader(self.store.objects, obj.key, obj.size, cache=self.indexes)

    def committed(self, stream_id: int, start: int) -> list[StreamObject]:
        """The stream's committed objects holding records at or above ``start``."""
        return [o for o in self.store.metadata.stream_objects(stream_id, 0)
                if o.range.end_offset > start]

    def blocks(self, stream_id: int, start: int) -> list[IndexEntry]:
        """The blocks holding the stream's committed records at or above ``start``, in offset
        order (what retention looks at)."""
        return [entry for obj in self.committed(stream_id, start)
                for entry in self.reader(obj).index().blocks(
                    stream_id, max(start, obj.range.start_offset), obj.range.end_offset)]

    def data_keys(self) -> set[str]:
        return {info.key for info in self.store.objects.list("data/")}

    def live_objects(self) -> list[ObjectMeta]:
        found: list[ObjectMeta] = []
        while True:
            page = self.store.metadata.live_objects(
                after=found[-1].key if found else None, limit=1000)
            found.extend(page)
            if len(page) < 1000:
                return found

    def referenced(self) -> tuple[set[str], set[str]]:
        """The keys of the live objects and of the doomed ones."""
        return ({o.key for o in self.live_objects()},
                {d.key for d in self.store.metadata.doomed()})

    # ---- rules: streams and data ----

    @initialize(retention=st.tuples(some_retention, retentions),
                rounds=st.lists(st.lists(batches, min_size=2, max_size=2), min_size=3,
                                max_size=3))
    def two_streams_three_rounds(self, retention: tuple[Retention, Retention | None],
                                 rounds: list[list[list[RecordSpec]]]) -> None:
        """Every example starts with small objects to compact (the first round's records ten
        hours old), and one stream with a retention (the rules add more of both)."""
        for r in retention:
            self.create(r)
        for i, round_ in enumerate(rounds):
            for stream_id, records in zip(sorted(self.model), round_, strict=True):
                self.append_to(stream_id, records, older_ms=10 * HOUR_MS if i == 0 else 0)
            self.flush()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), rounds=st.lists(st.lists(batches, min_size=1,
                                                   max_size=MAX_STREAMS), min_size=1, max_size=3))
    def upload_rounds(self, data: st.DataObject,
                      rounds: list[list[list[RecordSpec]]]) -> None:
        """Appends to some streams, then a flush: one to three upload rounds."""
        for round_ in rounds:
            for records in round_:
                self.append_to(self.pick(data)[0], records)
            self.flush()

    @precondition(lambda self: len(self.model) < MAX_STREAMS)
    @rule(retention=retentions)
    def create(self, retention: Retention | None) -> None:
        stream = self.store.create_stream(retention=retention)
        assert stream.id not in self.model and stream.id not in self.destroyed
        assert stream.retention == retention
        self.model[stream.id] = ModelStream(retention=retention)
        self.writers[stream.id] = stream

    @precondition(lambda self: self.model)
    @rule(data=st.data(), records=batches)
    def append(self, data: st.DataObject, records: list[RecordSpec]) -> None:
        self.append_to(self.pick(data)[0], records)

    def append_to(self, stream_id: int, records: list[RecordSpec], older_ms: int = 0) -> None:
        model = self.model[stream_id]
        now = int(time.time() * 1000) - older_ms
        batch = [spec.record(now) for spec in records]
        result = self.writers[stream_id].append(batch)
        assert (result.base_offset, result.count) == (model.next, len(batch))
        model.records.extend(batch)

    @rule()
    def flush(self) -> None:
        self.store.flush()
        for stream_id, model in self.model.items():
            assert self.store.metadata.get_stream(stream_id).end_offset == model.next

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def trim(self, data: st.DataObject) -> None:
        stream_id, model = self.pick(data)
        offset = data.draw(st.integers(0, model.next), label="offset")
        self.writers[stream_id].trim(offset)
        model.start = max(model.start, offset)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        stream_id, _ = self.pick(data)
        self.store.destroy_stream(stream_id)
        del self.model[stream_id]
        del self.writers[stream_id]
        self.destroyed.add(stream_id)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), retention=retentions)
    def set_retention(self, data: st.DataObject, retention: Retention | None) -> None:
        stream_id, model = self.pick(data)
        self.writers[stream_id].set_retention(retention)
        model.retention = retention
        assert self.writers[stream_id].retention == retention

    # ---- rules: the lifecycle ----

    @rule()
    def compact(self) -> None:
        """A pass: retention, marks, compaction, deletion (grace 0: every doomed object goes,
        those of earlier passes too)."""
        self.lifecycle_pass(delete=True)
        assert self.store.metadata.doomed() == [], "grace 0: a pass deletes what is doomed"

    @rule()
    def compact_leaving_doomed(self) -> None:
        """A pass whose deletes do not run (as one cut short by close, or within the grace
        period): its doomed objects stay for the sweep to leave alone and a later pass to
        delete. White-box: ``store.compact()`` always deletes."""
        self.lifecycle_pass(delete=False)

    @rule(delete=st.booleans())
    def compact_then_sweep(self, delete: bool) -> None:
        """A pass and a sweep, in the lifecycle thread's order; after a pass that leaves its
        doomed objects, the sweep has them to leave alone."""
        if delete:
            self.compact()
        else:
            self.compact_leaving_doomed()
        self.sweep()

    def lifecycle_pass(self, *, delete: bool) -> None:
        before = {stream_id: (model.start, self.blocks(stream_id, model.start))
                  for stream_id, model in self.model.items()}
        before_ms = int(time.time() * 1000)
        refusals = Refusals()
        logger = logging.getLogger("streamlib.lifecycle")
        level = logger.level
        logger.addHandler(refusals)
        logger.setLevel(logging.INFO)
        try:
            if delete:
                report = self.store.compact()
            else:  # white-box: store.compact() always deletes
                lifecycle = self.store._lifecycle
                assert lifecycle is not None
                report = lifecycle.run_pass(delete=False)
        finally:
            logger.removeHandler(refusals)
            logger.setLevel(level)
        after_ms = int(time.time() * 1000)
        assert report.failures == 0, report
        assert report.conflicts == 0 and not refusals.swaps, refusals.swaps  # one node: no race
        assert not refusals.marks, f"marking refused: {refusals.marks}"
        type(self).seen.update(passes=1, tasks=report.tasks, doomed=report.objects_doomed)
        for stream_id, model in self.model.items():
            old_start, blocks = before[stream_id]
            start = self.writers[stream_id].start_offset
            self.check_retention(stream_id, old_start, start, blocks, (before_ms, after_ms))
            type(self).seen.update(retention_trims=start > old_start)
            model.start = start
        streams = {s.id: s for s in self.store.metadata.streams()}
        for obj in self.live_objects():
            assert any(r.stream_id in streams and r.end_offset > streams[r.stream_id].start_offset
                       for r in obj.ranges), f"a pass left an object with nothing readable: {obj}"

    def check_retention(self, stream_id: int, old_start: int, start: int,
                        blocks: list[IndexEntry], during: tuple[int, int]) -> None:
        """What a pass did to a stream's start offset, given its committed ``blocks`` from
        ``old_start`` before the pass and the clock ``during`` it (ms, before and after)."""
        assert start >= old_start, f"stream={stream_id}: the start offset moved back"
        retention = self.model[stream_id].retention
        if retention is None:
            assert start == old_start, f"stream={stream_id}: trimmed without a retention"
            return
        records = self.model[stream_id].records
        max_age, max_bytes = retention.max_age_ms, retention.max_bytes

        def bytes_from(offset: int) -> int:
            return sum(b.size for b in blocks if b.end_offset > offset)

        # What the docs promise in words: ...
        if max_bytes is not None:
            kept = sum(b.size for b in self.blocks(stream_id, start))
            assert kept <= max_bytes, f"stream={stream_id}: kept {kept} bytes of {max_bytes}"
            if max_age is None and bytes_from(old_start) <= max_bytes:
                assert start == old_start, f"stream={stream_id}: trimmed within max_bytes"
        if max_age is not None:
            young = [i for i in range(old_start, len(records))
                     if records[i].timestamp >= during[1] - max_age]  # type: ignore[operator]
            if young and (max_bytes is None or bytes_from(young[0]) <= max_bytes):
                assert start <= young[0], (f"stream={stream_id}: retention by age dropped a "
                                           f"young record: start={start} young={young[0]}")
        # ... and the point they define: the first block new enough, the earliest block from
        # which the stored bytes fit (the clock moved during the pass: either end of it).
        points = {documented_retention_point(old_start, blocks, retention, now) for now in during}
        assert start in points, f"stream={stream_id}: start={start}, the docs say {points}"

    @rule()
    def sweep(self) -> None:
        """The sweep deletes exactly the orphans (grace 0), never a referenced object."""
        live, doomed = self.referenced()
        type(self).seen.update(doomed_at_sweep=len(doomed))
        report = self.store.collect_garbage()
        assert {g.key for g in report.garbage} == self.orphans, report
        assert report.young == 0
        assert not (live | doomed) - self.data_keys(), "the sweep deleted a referenced object"
        type(self).seen.update(swept=len(self.orphans))
        self.orphans.clear()

    @rule(compacted=st.booleans(), size=st.sampled_from((0, 10, 5000)))
    def plant_orphan(self, compacted: bool, size: int) -> None:
        """An object no metadata names, as an upload round or a compaction that crashed
        between its PUT and its commit leaves (a little while ago: older than the grace)."""
        n = next(self.planted)
        key = (f"data/compacted/0000000000001-orphan{n:06d}.mobj" if compacted
               else f"data/{self.store.node_id}/999/{n:012d}-orphan.mobj")
        self.store.objects.put(key, random.Random(n).randbytes(size))
        then = time.time() - 5
        os.utime(Path(self.store.objects.root) / key, (then, then))
        self.orphans.add(key)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = streamlib.open(self.path, **SETTINGS)
        self.writers = {stream_id: self.store.open_stream(stream_id) for stream_id in self.model}
        for stream_id, model in self.model.items():
            assert self.writers[stream_id].retention == model.retention

    # ---- invariants ----

    @invariant()
    def records_read_back(self) -> None:
        """Through the read path: every record from the start offset on, identical."""
        assert sorted(info.id for info in self.store.streams()) == sorted(self.model)
        for stream_id, model in self.model.items():
            stream = self.writers[stream_id]
            assert (stream.start_offset, stream.next_offset) == (model.start, model.next)
            offset = model.start
            while offset < model.next:
                result = stream.fetch(offset)
                for at, record in result.records():
                    if at >= offset:
                        assert record == model.records[at], f"stream={stream_id} offset={at}"
                assert result.next_fetch_offset > offset
                offset = result.next_fetch_offset

    @invariant()
    def committed_ranges_cover_the_stream(self) -> None:
        """Coverage, and the committed bytes themselves: each range above the start offset
        holds the model's records, read from its object (no cache of the store in between;
        an object is immutable, so one read once from a given offset is not read again)."""
        for stream_id, model in self.model.items():
            end = self.store.metadata.get_stream(stream_id).end_offset
            assert model.start <= end <= model.next
            objects = self.committed(stream_id, model.start)
            if not objects:
                assert model.start >= end, f"stream={stream_id}: committed records not covered"
                continue
            assert objects[0].range.start_offset <= model.start, f"stream={stream_id}: a gap"
            for a, b in itertools.pairwise(objects):
                assert a.range.end_offset == b.range.start_offset, (
                    f"stream={stream_id}: ranges not contiguous: {a.range} {b.range}")
            assert objects[-1].range.end_offset == end, (
                f"stream={stream_id}: the ranges end at {objects[-1].range.end_offset}, the "
                f"stream's committed end is {end}")
            for obj in objects:
                r = obj.range
                first = max(r.start_offset, model.start)
                if self.verified.get((obj.key, stream_id), first + 1) <= first:
                    continue
                reader = ObjectReader(self.store.objects, obj.key, obj.size)  # no index cache
                held = reader.index().range_of(stream_id)
                assert held is not None and (held.start_offset, held.end_offset) == (
                    r.start_offset, r.end_offset), f"{obj.key}: index and metadata differ"
                got = [(at, record) for batch in reader.read(stream_id, first, r.end_offset)
                       for at, record in enumerate(batch.records(), batch.base_offset or 0)
                       if first <= at < r.end_offset]
                assert got == list(enumerate(model.records[first:r.end_offset], first)), (
                    f"{obj.key}: stream={stream_id} records differ from the model")
                self.verified[(obj.key, stream_id)] = first

    @invariant()
    def bucket_holds_what_is_referenced(self) -> None:
        """No dangling reference, nothing leaked: data keys = live ∪ doomed ∪ planted."""
        live, doomed = self.referenced()
        keys = self.data_keys()
        assert not (live | doomed) - keys, f"dangling: {sorted((live | doomed) - keys)}"
        assert keys == live | doomed | self.orphans, \
            f"unreferenced objects: {sorted(keys - live - doomed - self.orphans)}"


def test_lifecycle_matches_the_model(tmp_path: Path) -> None:
    class Local(LifecycleMachine):
        base = tmp_path

    Local.seen = Counter()
    run_state_machine_as_test(Local, settings=settings(
        max_examples=40, stateful_step_count=50, deadline=None))
    # The sizes and the rules make every part of the lifecycle act, not by luck of a seed.
    seen = Local.seen
    assert all(seen[what] for what in ("tasks", "doomed", "doomed_at_sweep", "swept",
                                       "retention_trims")), seen


def test_a_trimmed_range_does_not_get_a_compaction_refused(tmp_path: Path) -> None:
    """Two multi-stream objects of streams a and b with a stream object of a between them, and
    a trimmed past its range in the first: the planner may merge the two (b's ranges are
    contiguous, a's first range holds nothing readable) or leave them, but no swap it plans
    may be refused (which would happen again at every pass). Found by the machine above."""
    with streamlib.open(tmp_path / "data", **SETTINGS) as store:
        a, b = store.create_stream("a"), store.create_stream("b")
        a.append([Record(b"a0")])
        b.append([Record(b"b0")])
        store.flush()  # a[0, 1) b[0, 1)
        a.append([Record(b"A" * 5000)])
        store.flush()  # a stream object: a[1, 2)
        a.append([Record(b"a2")])
        b.append([Record(b"b1")])
        store.flush()  # a[2, 3) b[1, 2)
        a.trim(1)
        for _ in range(2):
            report = store.compact()
            assert (report.conflicts, report.failures) == (0, 0), report
        assert [r.value for _, r in a.fetch(1).records()] == [b"A" * 5000, b"a2"]
        assert [r.value for _, r in b.fetch(0).records()] == [b"b0", b"b1"]
