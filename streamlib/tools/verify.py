"""``streamlib verify``: whether a store's bytes are whole (docs/guide.md, "Operating").

Every live object is read, in ranged reads of whole blocks of about ``chunk_bytes``, several
objects at once: its footer and index checked (:class:`~streamlib.objects.ObjectReader`), every
data block's checksum over its stored bytes and its header against its index entry (``deep``:
each block decompressed and its batches checked too), and the index against the metadata.
Then each stream's ranges (dense, not overlapping, covering its readable offsets up to its
committed end), and the file WAL beyond its trim position (damaged bytes; per stream, records
that do not follow the committed end without a gap). The WAL is read before the metadata: a
node that commits meanwhile only raises the committed ends, so what the WAL held still follows
them, and a store in use is judged on a consistent picture.

Each problem found is a :class:`Problem` naming what it concerns; nothing stops at the first.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from streamlib.errors import CorruptDataError, StorageUnavailable
from streamlib.meta import ObjectMeta, StreamMeta
from streamlib.objects import IndexEntry, ObjectIndex, ObjectReader
from streamlib.tools.inspection import live_objects, read_wal
from streamlib.tools.opening import OpenedStore
from streamlib.tools.walscan import WalReport

MiB = 1 << 20
CHUNK_BYTES = 16 * MiB
"""Bytes of whole blocks read at a time from one object (one ranged GET)."""
JOBS = 8
"""Objects read at once."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing found wrong. ``kind``: ``object`` (its footer, index or a data block is
    damaged, or it is shorter or longer than recorded), ``missing`` (the metadata names it, the
    object store has no such object), ``index`` (its index and the metadata disagree),
    ``ranges`` (a stream's ranges leave a gap, overlap, or miss its committed end), ``wal``
    (damaged WAL bytes, or WAL records that do not follow a stream's committed end)."""

    kind: str
    what: str
    key: str | None = None
    stream: int | None = None
    offsets: tuple[int, int] | None = None
    position: int | None = None
    """A byte position in the object, or a WAL position (kind ``wal``)."""

    def text(self) -> str:
        where = []
        if self.key is not None:
            where.append(f"object {self.key}")
        if self.kind == "wal":
            where.append("WAL")
        if self.stream is not None:
            where.append(f"stream {self.stream}")
        if self.offsets is not None:
            where.append(f"offsets [{self.offsets[0]}, {self.offsets[1]})")
        if self.position is not None:
            where.append(f"at {'position ' if self.kind == 'wal' else 'byte '}{self.position}")
        return f"{self.kind}: {', '.join(where)}: {self.what}"


@dataclass(slots=True)
class Verdict:
    """What :func:`verify_store` found and how much it read."""

    store: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    blocks: int = 0
    streams: int = 0
    wal_records: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"store": self.store, "clean": self.clean,
                "problems": [asdict(p) | {"offsets": None if p.offsets is None
                                          else list(p.offsets)} for p in self.problems],
                "notes": self.notes,
                "checked": {"objects": self.objects, "bytes": self.bytes,
                            "blocks": self.blocks, "streams": self.streams,
                            "wal_records": self.wal_records,
                            "seconds": round(self.seconds, 3)}}

    def text(self) -> str:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        lines = [f"streamlib verify {self.store}",
                 f"read {self.objects} objects ({self.bytes} bytes, {self.blocks} blocks) in "
                 f"{self.seconds:.2f} s ({rate:.0f} MB/s); {self.streams} streams; "
                 f"{self.wal_records} WAL records"]
        lines.extend(f"note: {note}" for note in self.notes)
        lines.extend(f"PROBLEM {p.text()}" for p in self.problems)
        lines.append("clean" if self.clean else f"damaged: {len(self.problems)} problems")
        return "\n".join(lines)


def verify_store(store: OpenedStore, *, deep: bool = False, jobs: int = JOBS,
                 chunk_bytes: int = CHUNK_BYTES,
                 started: Callable[[int], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> Verdict:
    """Check ``store`` (see the module docstring). ``started`` is called once with the bytes
    of objects there are to read, ``progress`` with the bytes of each read done (from the
    reading threads)."""
    began = time.monotonic()
    verdict = Verdict(store.places.store)
    wal = read_wal(store)  # before the metadata: see the module docstring
    streams = {s.id: s for s in store.meta.streams()}
    objects = list(live_objects(store))
    verdict.streams = len(streams)
    verdict.objects = len(objects)
    if started is not None:
        started(sum(obj.size for obj in objects))
    advance = progress or (lambda _n: None)
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="streamlib-verify") as pool:
        for problems, blocks, read in pool.map(
                lambda obj: _check_object(store, obj, deep, chunk_bytes, advance), objects):
            verdict.problems.extend(problems)
            verdict.blocks += blocks
            verdict.bytes += read
    verdict.problems.extend(range_problems(streams.values(), objects))
    if wal is not None and wal.backend == "file":
        verdict.wal_records = len(wal.records)
        verdict.problems.extend(wal_problems(wal, streams))
        if wal.torn is not None:
            verdict.notes.append(f"the WAL ends in a torn tail at position {wal.torn[0]} (a "
                                 f"write in progress, or one a crash cut short: never "
                                 f"acknowledged, dropped at the next open)")
    elif store.places.wal:
        verdict.notes.append(f"the {store.places.wal} WAL is not checked (only the file WAL "
                             f"is read)")
    verdict.seconds = time.monotonic() - began
    return verdict


# ---- objects ----

def _check_object(store: OpenedStore, obj: ObjectMeta, deep: bool, chunk_bytes: int,
                  advance: Callable[[int], None]) -> tuple[list[Problem], int, int]:
    """One object's problems, its blocks checked and the bytes read."""
    objects = store.store_for(obj.tier)
    reader = ObjectReader(objects, obj.key, obj.size)
    reported = 0
    try:
        index = reader.index()
        problems = index_problems(obj, index)
        blocks = 0
        for run in chunks(index.entries, chunk_bytes):
            start, end = run[0].position, run[-1].end
            data = memoryview(objects.get(obj.key, start, end))
            if len(data) != end - start:
                raise CorruptDataError(f"object ended at `{start + len(data)}` while its "
                                       f"blocks were read", position=start + len(data),
                                       source=obj.key)
            problems.extend(_check_blocks(reader, data, run, deep))
            blocks += len(run)
            advance(end - start)
            reported += end - start
        return problems, blocks, obj.size
    except FileNotFoundError:
        return [Problem("missing", "the metadata names this object; the object store has "
                        "none of that key", key=obj.key)], 0, reported
    except CorruptDataError as error:
        return [Problem("object", error.problem, key=obj.key,
                        position=error.position)], 0, reported
    except StorageUnavailable as error:
        return [Problem("object", f"could not be read: {error}", key=obj.key)], 0, reported
    finally:
        advance(obj.size - reported)


def chunks(entries: Sequence[IndexEntry], chunk_bytes: int) -> Iterator[list[IndexEntry]]:
    """Runs of adjacent blocks of about ``chunk_bytes`` (at least one block each)."""
    run: list[IndexEntry] = []
    for entry in entries:
        if run and entry.end - run[0].position > chunk_bytes:
            yield run
            run = []
        run.append(entry)
    if run:
        yield run


def _check_blocks(reader: ObjectReader, data: memoryview, run: list[IndexEntry],
                  deep: bool) -> list[Problem]:
    base = run[0].position
    problems = []
    for entry in run:
        block = data[entry.position - base:entry.end - base]
        try:
            reader.check_stored(block, entry)
            if deep:
                reader.decode_stored(block, entry)
        except CorruptDataError as error:
            problems.append(Problem("object", f"data block: {error.problem}", key=reader.key,
                                    stream=entry.stream_id,
                                    offsets=(entry.start_offset, entry.end_offset),
                                    position=entry.position))
    return problems


def index_problems(obj: ObjectMeta, index: ObjectIndex) -> list[Problem]:
    """Where the object's index and the metadata's description of it disagree."""
    problems = []
    for r in obj.ranges:
        held = index.range_of(r.stream_id)
        offsets = (r.start_offset, r.end_offset)
        if held is None:
            problems.append(Problem("index", "the metadata names a range of this stream in "
                                    "the object; its index holds none", key=obj.key,
                                    stream=r.stream_id, offsets=offsets))
        elif (held.start_offset, held.end_offset) != offsets:
            problems.append(Problem("index", f"the metadata says these offsets, the object's "
                                    f"index [{held.start_offset}, {held.end_offset})",
                                    key=obj.key, stream=r.stream_id, offsets=offsets))
        elif held.size != r.size:
            problems.append(Problem("index", f"the metadata says {r.size} bytes, the object's "
                                    f"index {held.size}", key=obj.key, stream=r.stream_id,
                                    offsets=offsets))
    named = {r.stream_id for r in obj.ranges}
    problems.extend(Problem("index", "the object's index holds this range; the metadata does "
                            "not name it in the object", key=obj.key, stream=held.stream_id,
                            offsets=(held.start_offset, held.end_offset))
                    for held in index.ranges if held.stream_id not in named)
    return problems


# ---- streams ----

def range_problems(streams: Iterable[StreamMeta],
                   objects: Sequence[ObjectMeta]) -> list[Problem]:
    """Each live stream's ranges: no two overlap, and those holding readable records cover
    ``[start_offset, end_offset)`` without a gap."""
    held: dict[int, list[tuple[int, int, str]]] = {}
    for obj in objects:
        for r in obj.ranges:
            held.setdefault(r.stream_id, []).append((r.start_offset, r.end_offset, obj.key))
    problems = []
    for stream in streams:
        ranges = sorted(held.get(stream.id, []))
        for (_a0, a1, a_key), (b0, b1, b_key) in itertools.pairwise(ranges):
            if b0 < a1:
                problems.append(Problem("ranges", f"objects {a_key} and {b_key} both hold "
                                        f"these offsets", stream=stream.id,
                                        offsets=(b0, min(a1, b1))))
        problems.extend(_coverage(stream, [r for r in ranges if r[1] > stream.start_offset]))
    return problems


def _coverage(stream: StreamMeta, readable: list[tuple[int, int, str]]) -> list[Problem]:
    start, end = stream.start_offset, stream.end_offset
    if not readable:
        if end > start:
            return [Problem("ranges", "no object holds these committed offsets",
                            stream=stream.id, offsets=(start, end))]
        return []
    problems = []
    if readable[0][0] > start:
        problems.append(Problem("ranges", f"no object holds these committed offsets (the "
                                f"first, {readable[0][2]}, starts after them)",
                                stream=stream.id, offsets=(start, readable[0][0])))
    for (_, a1, a_key), (b0, _, b_key) in itertools.pairwise(readable):
        if b0 > a1:
            problems.append(Problem("ranges", f"no object holds these offsets (a gap between "
                                    f"{a_key} and {b_key})", stream=stream.id,
                                    offsets=(a1, b0)))
    last = max(r[1] for r in readable)
    if last < end:
        problems.append(Problem("ranges", f"the committed end is {end}, objects hold records "
                                f"only up to {last}", stream=stream.id, offsets=(last, end)))
    elif last > end:
        problems.append(Problem("ranges", f"objects hold records past the committed end "
                                f"{end}", stream=stream.id, offsets=(end, last)))
    return problems


# ---- the WAL ----

def wal_problems(wal: WalReport, streams: dict[int, StreamMeta]) -> list[Problem]:
    """Damaged WAL bytes, and per live stream the first WAL record beyond its committed end
    that does not follow the records before it (recovery would find the stream damaged)."""
    problems = [Problem("wal", f"{reason}: positions [{start}, {end})", position=start)
                for start, end, reason in wal.damage]
    ends = {stream_id: s.end_offset for stream_id, s in streams.items()}
    broken: set[int] = set()
    for record in wal.records:
        stream = streams.get(record.stream_id)
        last = record.base_offset + record.record_count
        if stream is None or record.stream_id in broken or last <= stream.end_offset:
            continue  # a destroyed stream's, a stream found broken, or committed already
        expected = ends[record.stream_id]
        if record.base_offset == expected:
            ends[record.stream_id] = last
            continue
        broken.add(record.stream_id)
        if record.base_offset > expected:
            what = (f"records are missing: the record at this position starts at offset "
                    f"{record.base_offset}, the stream's records end at {expected}")
            offsets = (expected, record.base_offset)
        else:
            what = (f"a record repeats offsets: it starts at {record.base_offset}, the "
                    f"stream's records already reach {expected}")
            offsets = (record.base_offset, min(last, expected))
        problems.append(Problem("wal", what, stream=record.stream_id, offsets=offsets,
                                position=record.position))
    return problems


__all__ = ["CHUNK_BYTES", "JOBS", "Problem", "Verdict", "chunks", "index_problems",
           "range_problems", "verify_store", "wal_problems"]
