"""Compaction: small objects merged into fewer, larger ones, swapped in by one metadata step
(docs/lifecycle.md, "Compaction").

```
live objects ─► plan: windows of small multi-stream objects, runs of a stream's small stream
                objects ─► per output: input blocks a read window at a time ─► re-blocked
                batches ─► multipart upload ─► replace(inputs → outputs) ─► inputs doomed
```

:func:`plan` is pure (the metadata's objects and streams in, tasks out), so its rules are
tested on their own; :class:`Compactor` runs tasks against the object store and the metadata.
Batches are copied as they are (offsets, timestamps, keys, headers and checksums unchanged);
only their blocks, the blocks' compression and the object index are new. Data below a stream's
start offset and data of destroyed streams is not copied.

Lock order: a compactor holds no lock of its own; it calls the metadata and the object store
(leaves) and, after a swap, ``on_replaced`` (the store resets the index of the streams it
holds, taking ``StreamState.lock`` alone).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from streamlib.codec import BlockInfo
from streamlib.config import COMPACTION_READ_BYTES, Config
from streamlib.errors import CompactionConflict, CorruptDataError, StreamNotFound, describe
from streamlib.io import ObjectStore
from streamlib.meta import MetadataStore, ObjectMeta, Replacement, StreamMeta, StreamRange
from streamlib.objects import IndexCache, IndexEntry, ObjectReader, ObjectStreamWriter
from streamlib.records import PlacedBatch
from streamlib.uploader import commit_deadline

log = logging.getLogger(__name__)

COMPACTED_PREFIX = "data/compacted"
"""Where compaction's outputs go (in the objects store or the archive tier)."""


def object_kind(key: str) -> str:
    """``single`` or ``multi`` (how many streams the uploader put in it, by its key's suffix),
    ``compacted`` for compaction's outputs, ``other`` for a key of neither shape."""
    if key.startswith(COMPACTED_PREFIX + "/"):
        return "compacted"
    return {"sobj": "single", "mobj": "multi"}.get(key.rpartition(".")[2], "other")

WINDOW_OBJECT_FACTOR = 4
"""A multi-stream window holds at most this many times ``compaction_object_bytes`` of input."""


# ---- the plan ----

@dataclass(frozen=True, slots=True)
class Piece:
    """What one input object gives one output of one stream: the records ``[start, end)`` of
    the stream's range in ``source`` (``start`` above the range's start when the stream was
    trimmed into it; batch granularity is decided as the blocks are read)."""

    source: ObjectMeta
    stream_id: int
    start: int
    end: int
    size: int
    """The range's stored bytes (the whole range's, even when only part is copied)."""


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """One object to write: the pieces of each stream in stream-id order, each stream's pieces
    contiguous in offset."""

    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)

    @property
    def stream_object(self) -> bool:
        return len({p.stream_id for p in self.pieces}) == 1


@dataclass(frozen=True, slots=True)
class Task:
    """One swap: ``inputs`` are replaced by the ``outputs`` written from them."""

    kind: str
    """``"multi"`` (multi-stream objects merged, big streams split out) or ``"stream"``
    (a stream's adjacent stream objects merged)."""
    inputs: tuple[ObjectMeta, ...]
    outputs: tuple[OutputPlan, ...]

    @property
    def input_bytes(self) -> int:
        return sum(o.size for o in self.inputs)


@dataclass(frozen=True, slots=True)
class Limits:
    """The planner's settings (from :class:`~streamlib.config.Config`)."""

    object_bytes: int
    max_object_bytes: int
    max_objects: int
    stream_object_bytes: int

    @classmethod
    def of(cls, config: Config) -> Limits:
        return cls(config.compaction_object_bytes, config.compaction_max_object_bytes,
                   config.compaction_max_objects, config.stream_object_bytes)

    @property
    def window_bytes(self) -> int:
        return min(self.object_bytes * WINDOW_OBJECT_FACTOR, self.max_object_bytes)


def readable(obj: ObjectMeta, streams: Mapping[int, StreamMeta]) -> list[tuple[StreamRange, int]]:
    """The ranges of ``obj`` that hold records still readable, each with the first offset to
    keep: ranges of live streams (``streams`` holds the live ones) ending above their stream's
    start offset."""
    found = []
    for r in obj.ranges:
        stream = streams.get(r.stream_id)
        if stream is not None and stream.live and r.end_offset > stream.start_offset:
            found.append((r, max(r.start_offset, stream.start_offset)))
    return found


def natural_key(key: str) -> tuple[object, ...]:
    """An object key ordered with its numbers as numbers (``data/0/9/…`` before
    ``data/0/10/…``): upload rounds of one node come in commit order."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))


def plan(objects: Iterable[ObjectMeta], streams: Mapping[int, StreamMeta],
         limits: Limits) -> list[Task]:
    """The compaction tasks for ``objects`` (the live objects) given the live ``streams``:
    windows of small multi-stream objects first, then runs of each stream's small stream
    objects among the objects no window took. Objects without readable records are left to
    the deletion pass."""
    small = [(o, found) for o in objects if o.size < limits.object_bytes
             and (found := readable(o, streams))]
    small.sort(key=lambda item: natural_key(item[0].key))
    tasks = _multi_stream_tasks([item for item in small if len(item[0].ranges) > 1], limits)
    taken = {o.key for task in tasks for o in task.inputs}
    singles = [item for item in small if len(item[0].ranges) == 1 and item[0].key not in taken]
    tasks.extend(_stream_object_tasks(singles, limits))
    return tasks


def _multi_stream_tasks(candidates: Sequence[tuple[ObjectMeta, list[tuple[StreamRange, int]]]],
                        limits: Limits) -> list[Task]:
    """Windows of consecutive candidates within the limits in which every stream's readable
    ranges stay contiguous (an object holds one range per stream)."""
    tasks = []
    window: list[tuple[ObjectMeta, list[tuple[StreamRange, int]]]] = []
    ends: dict[int, tuple[int, int]] = {}  # stream → (first, end) of its ranges in the window
    size = 0
    for obj, found in candidates:
        fits = (len(window) < limits.max_objects and size + obj.size <= limits.window_bytes
                and all(r.stream_id not in ends or r.start_offset == ends[r.stream_id][1]
                        or r.end_offset == ends[r.stream_id][0] for r, _ in found))
        if not fits:
            tasks.extend(_window_task(window, limits))
            window, ends, size = [], {}, 0
        window.append((obj, found))
        size += obj.size
        for r, _ in found:
            first, end = ends.get(r.stream_id, (r.start_offset, r.end_offset))
            ends[r.stream_id] = (min(first, r.start_offset), max(end, r.end_offset))
    tasks.extend(_window_task(window, limits))
    return tasks


def _window_task(window: Sequence[tuple[ObjectMeta, list[tuple[StreamRange, int]]]],
                 limits: Limits) -> list[Task]:
    if len(window) < 2:
        return []
    by_stream: dict[int, list[Piece]] = {}
    for obj, found in window:
        for r, start in found:
            by_stream.setdefault(r.stream_id, []).append(
                Piece(obj, r.stream_id, start, r.end_offset, r.size))
    outputs: list[OutputPlan] = []
    shared: list[Piece] = []
    shared_size = 0
    for stream_id in sorted(by_stream):
        pieces = sorted(by_stream[stream_id], key=lambda p: p.start)
        size = sum(p.size for p in pieces)
        if size >= limits.stream_object_bytes:
            outputs.extend(_split(pieces, limits.max_object_bytes))
            continue
        if shared and shared_size + size > limits.object_bytes:
            outputs.append(OutputPlan(tuple(shared)))
            shared, shared_size = [], 0
        shared.extend(pieces)
        shared_size += size
    if shared:
        outputs.append(OutputPlan(tuple(shared)))
    return [Task("multi", tuple(obj for obj, _ in window), tuple(outputs))]


def _split(pieces: Sequence[Piece], most: int) -> list[OutputPlan]:
    """One stream's pieces as outputs of at most ``most`` bytes each (a piece is not split)."""
    outputs: list[OutputPlan] = []
    current: list[Piece] = []
    size = 0
    for piece in pieces:
        if current and size + piece.size > most:
            outputs.append(OutputPlan(tuple(current)))
            current, size = [], 0
        current.append(piece)
        size += piece.size
    if current:
        outputs.append(OutputPlan(tuple(current)))
    return outputs


def _stream_object_tasks(singles: Sequence[tuple[ObjectMeta, list[tuple[StreamRange, int]]]],
                         limits: Limits) -> list[Task]:
    """Each stream's adjacent small stream objects, merged into objects of about
    ``object_bytes``."""
    by_stream: dict[int, list[Piece]] = {}
    for obj, ((r, start),) in singles:
        by_stream.setdefault(r.stream_id, []).append(
            Piece(obj, r.stream_id, start, r.end_offset, r.size))
    tasks = []
    for stream_id in sorted(by_stream):
        pieces = sorted(by_stream[stream_id], key=lambda p: p.source.ranges[0].start_offset)
        run: list[Piece] = []
        size = 0
        for piece in pieces:
            adjacent = bool(run) and piece.source.ranges[0].start_offset == \
                run[-1].source.ranges[0].end_offset
            if run and (not adjacent or size + piece.size > limits.object_bytes
                        or len(run) >= limits.max_objects):
                tasks.extend(_stream_task(run))
                run, size = [], 0
            run.append(piece)
            size += piece.size
        tasks.extend(_stream_task(run))
    return tasks


def _stream_task(run: Sequence[Piece]) -> list[Task]:
    if len(run) < 2:
        return []
    return [Task("stream", tuple(p.source for p in run), (OutputPlan(tuple(run)),))]


# ---- running it ----

@dataclass(slots=True)
class CompactionReport:
    """What a compaction round did (``store.compact()`` returns one; the lifecycle's stats sum
    them)."""

    tasks: int = 0
    objects_read: int = 0
    objects_written: int = 0
    objects_doomed: int = 0
    """Inputs the swaps made doomed, plus objects without readable records marked so."""
    bytes_read: int = 0
    bytes_written: int = 0
    gets: int = 0
    conflicts: int = 0
    """Swaps refused because their inputs changed meanwhile (their outputs were deleted)."""
    failures: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def add(self, other: CompactionReport) -> None:
        for name in ("tasks", "objects_read", "objects_written", "objects_doomed", "bytes_read",
                     "bytes_written", "gets", "conflicts", "failures", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


class Compactor:
    """Runs compaction tasks: writes each output as a multipart upload from the inputs' blocks,
    a read window at a time, then swaps inputs for outputs in one metadata step.

    ``stores`` maps a tier (``""``, ``"archive"``) to its object store; outputs go to
    ``write_tier``. ``spend(n)`` is called with the bytes read and written as they go (the
    lifecycle's rate limit; it may sleep). ``on_replaced(stream_ids)`` is told after each swap.
    """

    def __init__(self, *, meta: MetadataStore, stores: Mapping[str, ObjectStore], config: Config,
                 write_tier: str = "", spend: Callable[[int], None] | None = None,
                 on_replaced: Callable[[Iterable[int]], None] | None = None,
                 stopping: Callable[[], bool] | None = None) -> None:
        self._meta = meta
        self._stores = dict(stores)
        self._config = config
        self._write_tier = write_tier
        self._spend = spend or (lambda n: None)
        self._on_replaced = on_replaced or (lambda ids: None)
        self._stopping = stopping or (lambda: False)
        self._indexes = IndexCache(4 << 20)

    def plan(self, objects: Iterable[ObjectMeta], streams: Mapping[int, StreamMeta]
             ) -> list[Task]:
        return plan(objects, streams, Limits.of(self._config))

    def run(self, tasks: Iterable[Task]) -> CompactionReport:
        """Run ``tasks`` one after another; a task that fails is reported and the next runs."""
        report = CompactionReport()
        started = time.monotonic()
        for task in tasks:
            if self._stopping():
                break
            report.tasks += 1
            try:
                self.run_task(task, report)
            except CompactionConflict as error:
                report.conflicts += 1
                log.info("compaction swap refused (inputs changed): %s", error)
            except Exception as error:
                report.failures += 1
                report.errors.append(repr(error))
                log.warning("compaction of %d objects failed: %r", len(task.inputs), error)
        report.seconds = time.monotonic() - started
        return report

    def run_task(self, task: Task, report: CompactionReport) -> list[ObjectMeta]:
        """Write the task's outputs and swap them in; returns them. On a refused swap the
        outputs are deleted and :class:`~streamlib.errors.CompactionConflict` raised."""
        written: list[ObjectMeta] = []
        not_after = commit_deadline(self._config)  # the sweep's orphans: see the function
        try:
            for output in task.outputs:
                written.append(self._write(output, report))
            if self._stopping():
                raise CompactionConflict("the store is closing: compaction left off")
            self._meta.replace(Replacement(inputs=[o.key for o in task.inputs],
                                           outputs=written, not_after_ms=not_after))
        except (CompactionConflict, StreamNotFound) as error:
            # Refused: the outputs are nobody's (unless an earlier try of this very swap
            # applied and its answer was lost: then they are live and stay).
            if written and not self._swapped(written[0]):
                self._discard(written)
            if isinstance(error, CompactionConflict):
                raise
            raise CompactionConflict(str(error)) from error
        except BaseException:
            # An error before the swap: the outputs are nobody's. One during it may have
            # applied (a lost answer): they are left for the sweep, which knows.
            if not written or not self._swapped(written[0]):
                self._discard(written)
            raise
        report.objects_read += len(task.inputs)
        report.objects_written += len(written)
        report.objects_doomed += len(task.inputs)
        report.bytes_written += sum(o.size for o in written)
        self._on_replaced({r.stream_id for o in task.inputs for r in o.ranges})
        return written

    def _swapped(self, obj: ObjectMeta) -> bool:
        """Whether an output is committed (after a swap that raised), as far as can be told;
        True when the metadata cannot say (then nothing is deleted)."""
        first = obj.ranges[0]
        try:
            return any(o.key == obj.key for o in self._meta.stream_objects(
                first.stream_id, first.start_offset))
        except Exception:
            return True

    def _discard(self, written: Sequence[ObjectMeta]) -> None:
        for obj in written:
            try:
                self._stores[obj.tier].delete([obj.key])
            except Exception as error:  # the sweep deletes what is left
                log.warning("could not delete unused compaction output %s: %r", obj.key, error)

    def _write(self, output: OutputPlan, report: CompactionReport) -> ObjectMeta:
        """One output object, streamed from the inputs' blocks to a multipart upload."""
        config = self._config
        kind = "s" if output.stream_object else "m"
        key = f"{COMPACTED_PREFIX}/{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:12]}" \
              f".{kind}obj"
        writer = ObjectStreamWriter(block_bytes=config.block_bytes,
                                    compression=config.compression,  # type: ignore[arg-type]
                                    zstd_level=config.zstd_level)
        store = self._stores[self._write_tier]
        with store.upload(key, part_bytes=config.part_bytes) as upload:
            for stream_id, item in self._contents(output, report):
                if isinstance(item, list):
                    writer.add(stream_id, item)
                else:
                    writer.add_block(*item)
                data = writer.take()
                if data:
                    upload.write(data)
                    self._spend(len(data))
            tail, index = writer.finish()
            upload.write(tail)
            self._spend(len(tail))
            upload.complete()
        ranges = [StreamRange(r.stream_id, r.start_offset, r.end_offset, r.size)
                  for r in index.ranges]
        return ObjectMeta(key, index.size, tuple(ranges), tier=self._write_tier)

    def _contents(self, output: OutputPlan, report: CompactionReport
                  ) -> Iterator[tuple[int, list[PlacedBatch] | tuple[memoryview, BlockInfo]]]:
        """What goes into ``output``, in stream then offset order: whole blocks to copy as they
        are (those of at least half ``block_bytes``, with no record below the piece's start),
        and the batches of the other blocks, to be cut into blocks anew. Read a window of
        about :data:`COMPACTION_READ_BYTES` decoded bytes at a time, one GET per input object
        the window touches (adjacent blocks of one object: one GET)."""
        plan: list[tuple[Piece, ObjectReader, IndexEntry]] = []
        readers: dict[str, ObjectReader] = {}
        for piece in output.pieces:
            reader = readers.get(piece.source.key)
            if reader is None:
                reader = readers[piece.source.key] = self._reader(piece.source)
            gets = reader.gets
            entries = reader.index().blocks(piece.stream_id, piece.start, piece.end)
            report.gets += reader.gets - gets
            if not entries or entries[0].start_offset > piece.start \
                    or entries[-1].end_offset < piece.end:
                raise CorruptDataError(describe(
                    "an object's index does not hold the range the metadata gives it",
                    stream=piece.stream_id, range=f"[{piece.start}, {piece.end})"),
                    source=piece.source.key)
            plan.extend((piece, reader, entry) for entry in entries)
        whole = self._config.block_bytes // 2
        i = 0
        while i < len(plan):
            j, decoded = i, 0
            while j < len(plan) and (j == i or decoded + plan[j][1].decoded_bound(plan[j][2])
                                     <= COMPACTION_READ_BYTES):
                decoded += plan[j][1].decoded_bound(plan[j][2])
                j += 1
            window = plan[i:j]
            by_reader: dict[int, tuple[ObjectReader, list[IndexEntry]]] = {}
            for _, reader, entry in window:
                by_reader.setdefault(id(reader), (reader, []))[1].append(entry)
            stored: dict[tuple[str, int], memoryview] = {}
            for reader, entries in by_reader.values():
                gets, fetched = reader.gets, reader.fetched_bytes
                for entry, block in reader.read_stored(sorted(entries, key=lambda e: e.position)):
                    stored[(reader.key, entry.position)] = block
                report.gets += reader.gets - gets
                report.bytes_read += reader.fetched_bytes - fetched
                self._spend(reader.fetched_bytes - fetched)
            for piece, reader, entry in window:
                block = stored.pop((reader.key, entry.position))
                if entry.raw_size is not None and entry.raw_size >= whole \
                        and entry.start_offset >= piece.start:
                    yield piece.stream_id, (block, reader.check_stored(block, entry))
                    continue
                batches = [b for b in reader.decode_stored(block, entry)
                           if b.next_offset > piece.start and b.base_offset < piece.end]
                if batches:
                    yield piece.stream_id, batches
            i = j

    def _reader(self, obj: ObjectMeta) -> ObjectReader:
        return ObjectReader(self._stores[obj.tier], obj.key, obj.size, cache=self._indexes,
                            max_block_bytes=self._config.max_block_bytes)


__all__ = ["COMPACTED_PREFIX", "CompactionReport", "Compactor", "Limits", "OutputPlan", "Piece",
           "Task", "natural_key", "object_kind", "plan", "readable"]
