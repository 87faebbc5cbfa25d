"""The object's index block and footer (docs/format.md, "Object"): their bytes, their checks,
and the parsed form both the writer and the reader hand out.

Version 2 (written) adds each block's decoded size to its index entry, so that a reader budgets
by what a block becomes in memory before fetching it; version 1 (read) lacks it, and a reader
learns a version-1 block's decoded size only from the block's own header."""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from streamlib import codec
from streamlib.errors import CorruptDataError
from streamlib.records import INT64_MAX, check_int

VERSION = 2
"""The object format version the writer writes; :data:`VERSIONS` are those a reader reads."""
VERSIONS = (1, 2)
FOOTER_SIZE = 32
FOOTER_MAGIC = b"SLOB"
INDEX_MAGIC = b"SLIX"
INDEX_HEADER_SIZE = 16
ENTRY_SIZES = {1: 56, 2: 64}
"""Bytes of an index entry, by format version."""
ENTRY_SIZE = ENTRY_SIZES[VERSION]
MAX_BLOCK_SIZE = codec.BLOCK_HEADER_SIZE + codec.MAX_BLOCK
MAX_ENTRIES = (0xFFFFFFFF - INDEX_HEADER_SIZE) // ENTRY_SIZE  # index_size is a u32

_FOOTER = struct.Struct("<QIB3sQI4s")  # index_position index_size version reserved checksum
_INDEX_HEAD = struct.Struct("<4sQI")  # magic checksum entry_count
# As IndexEntry's fields, in order; version 2 adds raw_size and four reserved bytes.
_ENTRIES = {1: struct.Struct("<QqqQIIqq"), 2: struct.Struct("<QqqQIIqqII")}
_U64 = struct.Struct("<Q")

# What a parsed index costs in memory, measured with tracemalloc on CPython 3.11 and rounded up
# (an IndexEntry and its ints; a StreamRange and its lookup entry): the IndexCache's weights.
ENTRY_MEMORY = 384
RANGE_MEMORY = 320
INDEX_MEMORY = 1024


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One data block of an object: its stream and offsets ``[start_offset, end_offset)``, where
    it lies (``position``, ``size`` with its header), its timestamps, and ``raw_size``: the
    bytes of framed batches it decodes to (its header's ``raw_length``; None in a version-1
    object, whose index does not say)."""

    stream_id: int
    start_offset: int
    end_offset: int
    position: int
    size: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    raw_size: int | None = None

    @property
    def end(self) -> int:
        """The byte after this block."""
        return self.position + self.size


@dataclass(frozen=True, slots=True)
class StreamRange:
    """What an object holds of one stream: offsets ``[start_offset, end_offset)`` in ``size``
    bytes of blocks starting at ``position`` — what the metadata commit records."""

    stream_id: int
    start_offset: int
    end_offset: int
    position: int
    size: int
    block_count: int

    @property
    def record_count(self) -> int:
        return self.end_offset - self.start_offset


@dataclass(frozen=True)
class ObjectIndex:
    """The index of one object: every data block in object order, and per-stream ranges in
    ascending stream id. The writer returns one with the bytes it built; :func:`decode_index`
    parses the same thing from the object's tail (the two compare equal). Built only by those
    two, which check the entries; the constructor itself does not."""

    size: int
    """Bytes of the whole object."""
    index_position: int
    """Where the index block starts; also the end of the data area."""
    entries: tuple[IndexEntry, ...]
    ranges: tuple[StreamRange, ...] = field(init=False)
    _streams: dict[int, tuple[int, int, int]] = field(init=False, repr=False, compare=False)
    """stream id → (first entry, entry after the last, number of its range)"""

    def __post_init__(self) -> None:
        streams: dict[int, tuple[int, int, int]] = {}
        ranges: list[StreamRange] = []
        first = 0
        entries = self.entries
        for i in range(1, len(entries) + 1):
            if i == len(entries) or entries[i].stream_id != entries[first].stream_id:
                head, tail = entries[first], entries[i - 1]
                streams[head.stream_id] = (first, i, len(ranges))
                ranges.append(StreamRange(head.stream_id, head.start_offset, tail.end_offset,
                                          head.position, tail.end - head.position, i - first))
                first = i
        object.__setattr__(self, "ranges", tuple(ranges))
        object.__setattr__(self, "_streams", streams)

    @property
    def version(self) -> int:
        """The format version of the object (1: its entries lack ``raw_size``)."""
        return 1 if self.entries[0].raw_size is None else 2

    @property
    def index_size(self) -> int:
        return INDEX_HEADER_SIZE + ENTRY_SIZES[self.version] * len(self.entries)

    @property
    def memory_size(self) -> int:
        """An estimate of the bytes this parsed index occupies (its weight in an IndexCache)."""
        return (INDEX_MEMORY + ENTRY_MEMORY * len(self.entries)
                + RANGE_MEMORY * len(self.ranges))

    def range_of(self, stream_id: int) -> StreamRange | None:
        """The stream's range in this object, or None if the object holds none of it."""
        found = self._streams.get(stream_id)
        return None if found is None else self.ranges[found[2]]

    def blocks(self, stream_id: int, start_offset: int,
               end_offset: int | None = None) -> list[IndexEntry]:
        """The stream's blocks that hold records of ``[start_offset, end_offset)`` (``None``:
        to the end), in order; empty if the object holds none of that range."""
        found = self._streams.get(stream_id)
        if found is None or (end_offset is not None and end_offset <= start_offset):
            return []
        lo, hi, _ = found
        # The stream's entries are contiguous in offset: the first block ending past start_offset
        # begins the answer.
        i = bisect.bisect_right(self.entries, start_offset, lo, hi, key=lambda e: e.end_offset)
        chosen = []
        while i < hi and (end_offset is None or self.entries[i].start_offset < end_offset):
            chosen.append(self.entries[i])
            i += 1
        return chosen


# ---- encoding ----


def _check_version(version: int) -> int:
    if version not in VERSIONS:
        raise ValueError(f"object format version must be one of {VERSIONS}: "
                         f"version=`{version}`")
    return version


def encode_index(entries: Sequence[IndexEntry], *, version: int = VERSION) -> bytes:
    """The index block for ``entries`` (in object order), in format ``version`` (2 needs every
    entry's ``raw_size``; 1 leaves it out)."""
    _check_version(version)
    if not entries:
        raise ValueError("an object index needs at least one entry")
    most = (0xFFFFFFFF - INDEX_HEADER_SIZE) // ENTRY_SIZES[version]  # index_size is a u32
    if len(entries) > most:
        raise ValueError(f"an object holds at most {most} blocks: blocks=`{len(entries)}`")
    fields: list[tuple[int | None, ...]] = [
        (e.stream_id, e.start_offset, e.end_offset, e.position, e.size, e.record_count,
         e.first_timestamp, e.max_timestamp) for e in entries]
    if version == 2:
        missing = [e for e in entries if e.raw_size is None]
        if missing:
            raise ValueError(f"a version-2 index needs each block's raw_size: "
                             f"entry=`{missing[0]}`")
        fields = [(*f, e.raw_size, 0) for f, e in zip(fields, entries, strict=True)]
    entry = _ENTRIES[version]
    body = struct.pack("<I", len(entries)) + b"".join(entry.pack(*f) for f in fields)
    return INDEX_MAGIC + _U64.pack(codec.xxh64(body)) + body


def encode_footer(index_position: int, index_size: int, *, version: int = VERSION) -> bytes:
    """The 32-byte footer pointing at an index block of format ``version``."""
    head = struct.pack("<QIB3s", index_position, index_size, _check_version(version), bytes(3))
    return head + _U64.pack(codec.xxh64(head)) + bytes(4) + FOOTER_MAGIC


# ---- decoding ----


def _corrupt(problem: str, position: int, source: str | None) -> CorruptDataError:
    return CorruptDataError(problem, position=position, source=source)


class Footer(NamedTuple):
    """What an object's footer says."""

    index_position: int
    index_size: int
    version: int


def decode_footer(footer: bytes | bytearray | memoryview, object_size: int, *,
                  source: str | None = None) -> Footer:
    """The :class:`Footer` in the last 32 bytes of an object of ``object_size`` bytes, checked:
    magic, version, checksum, reserved bytes, and an index that lies in the object and ends
    exactly where the footer begins. CorruptDataError names the footer's position; a negative
    ``object_size`` is the caller's mistake (ValueError), a small one the object's."""
    object_size = check_int(object_size, "object_size", 0, INT64_MAX)
    at = object_size - FOOTER_SIZE
    if object_size < FOOTER_SIZE:
        raise _corrupt(f"object of `{object_size}` bytes is too small for a footer", 0, source)
    if len(footer) != FOOTER_SIZE:
        raise ValueError(f"a footer is {FOOTER_SIZE} bytes: size=`{len(footer)}`")
    (index_position, index_size, version, reserved, checksum, reserved2,
     magic) = _FOOTER.unpack(footer)
    if magic != FOOTER_MAGIC:
        raise _corrupt(f"bad footer magic (not a streamlib object): magic=`{bytes(magic)!r}`",
                       at, source)
    # Read before the checksum, as in batches: a newer writer is "unsupported", not "damaged".
    if version not in VERSIONS:
        raise _corrupt(f"unsupported object format version: version=`{version}`", at, source)
    if checksum != codec.xxh64(memoryview(footer)[:16]):
        raise _corrupt("footer checksum mismatch", at, source)
    if reserved != bytes(3) or reserved2 != 0:
        raise _corrupt("footer reserved bytes are not zero", at, source)
    end = index_position + index_size
    where = f"index=`[{index_position}, {end})` footer=`{at}` size=`{object_size}`"
    if index_position >= object_size or end > object_size:
        raise _corrupt(f"index lies outside the object: {where}", at, source)
    if end > at:
        raise _corrupt(f"index overlaps the footer: {where}", at, source)
    if end < at:
        raise _corrupt(f"index does not end where the footer begins: {where}", at, source)
    entry_size = ENTRY_SIZES[version]
    if index_size < INDEX_HEADER_SIZE + entry_size or (
            index_size - INDEX_HEADER_SIZE) % entry_size:
        raise _corrupt(f"index size is not {INDEX_HEADER_SIZE} + {entry_size} × entries (≥ 1): "
                       f"index_size=`{index_size}` version=`{version}`", at, source)
    return Footer(index_position, index_size, version)


def decode_index(index: bytes | bytearray | memoryview, index_position: int, object_size: int, *,
                 version: int = VERSION, source: str | None = None) -> ObjectIndex:
    """Parse and check the index block ``index`` (exactly the bytes the footer points at, in
    the format ``version`` the footer gives): magic, checksum, entry count, and every entry: its
    own fields, and its place — blocks back to back from 0 to the index, streams in ascending
    id, each stream's blocks contiguous in offset. CorruptDataError names the index's position,
    or the bad entry's. Arguments that cannot describe such bytes (a negative position, an
    object too small to hold the index and a footer after it, an unknown version) raise
    ValueError."""
    entry_size = ENTRY_SIZES[_check_version(version)]
    view = memoryview(index).cast("B")
    if len(view) < INDEX_HEADER_SIZE or (len(view) - INDEX_HEADER_SIZE) % entry_size:
        raise ValueError(f"not the size of a version-{version} index block: "
                         f"size=`{len(view)}`")
    index_position = check_int(index_position, "index_position", 0, INT64_MAX)
    check_int(object_size, "object_size", index_position + len(view) + FOOTER_SIZE, INT64_MAX)
    magic, checksum, count = _INDEX_HEAD.unpack_from(view)
    if magic != INDEX_MAGIC:
        raise _corrupt(f"bad index magic: magic=`{bytes(magic)!r}`", index_position, source)
    if checksum != codec.xxh64(view[12:]):
        raise _corrupt("index checksum mismatch", index_position, source)
    if count != (len(view) - INDEX_HEADER_SIZE) // entry_size or count == 0:
        raise _corrupt(f"index entry count disagrees with its size: entry_count=`{count}` "
                       f"index_size=`{len(view)}`", index_position, source)
    entries: list[IndexEntry] = []
    previous: IndexEntry | None = None
    at = index_position + INDEX_HEADER_SIZE
    for fields in _ENTRIES[version].iter_unpack(view[INDEX_HEADER_SIZE:]):
        reserved = fields[9] if version == 2 else 0
        entry = IndexEntry(*fields[:9])
        problem = _entry_problem(entry, previous, index_position) or (
            "has reserved bytes that are not zero" if reserved else "")
        if problem:
            raise _corrupt(f"index entry {len(entries)} {problem}", at, source)
        entries.append(entry)
        previous = entry
        at += entry_size
    assert previous is not None
    if previous.end != index_position:
        raise _corrupt(f"blocks do not fill the data area: last block ends at "
                       f"`{previous.end}`, index at `{index_position}`", at - entry_size, source)
    return ObjectIndex(object_size, index_position, tuple(entries))


def _entry_problem(e: IndexEntry, previous: IndexEntry | None, data_end: int) -> str:
    """What is wrong with entry ``e`` coming after ``previous``; empty if nothing."""
    if not 0 <= e.start_offset < e.end_offset:
        return f"has an empty or negative offset range: offsets=`[{e.start_offset}, " \
               f"{e.end_offset})`"
    if e.record_count != e.end_offset - e.start_offset:
        return f"record_count is not end - start: record_count=`{e.record_count}` " \
               f"offsets=`[{e.start_offset}, {e.end_offset})`"
    if e.first_timestamp > e.max_timestamp:
        return f"has max_timestamp below first_timestamp: first=`{e.first_timestamp}` " \
               f"max=`{e.max_timestamp}`"
    if not codec.BLOCK_HEADER_SIZE <= e.size <= MAX_BLOCK_SIZE:
        return f"has an impossible block size: size=`{e.size}`"
    if e.raw_size is not None and not codec.BATCH_HEADER_SIZE <= e.raw_size <= codec.MAX_BLOCK:
        return f"has an impossible decoded size: raw_size=`{e.raw_size}`"
    expected = 0 if previous is None else previous.end
    if e.position < expected:
        return f"overlaps the previous block (or is out of order): position=`{e.position}` " \
               f"previous_end=`{expected}`"
    if e.position > expected:
        return f"does not start where the previous block ends (a gap, or out of order): " \
               f"position=`{e.position}` expected=`{expected}`"
    if e.end > data_end:
        return f"points outside the data area: block=`[{e.position}, {e.end})` " \
               f"data_end=`{data_end}`"
    if previous is not None:
        if e.stream_id < previous.stream_id:
            return f"has streams out of order: stream=`{e.stream_id}` " \
                   f"previous=`{previous.stream_id}`"
        if e.stream_id == previous.stream_id and e.start_offset != previous.end_offset:
            return f"is not contiguous with the stream's previous block: " \
                   f"stream=`{e.stream_id}` start_offset=`{e.start_offset}` " \
                   f"expected=`{previous.end_offset}`"
    return ""


def decode_object_index(data: bytes | bytearray | memoryview, *,
                        source: str | None = None) -> ObjectIndex:
    """The checked index of a whole object held in memory (tools, tests)."""
    view = memoryview(data).cast("B")
    size = len(view)
    position, index_size, version = decode_footer(view[max(0, size - FOOTER_SIZE):], size,
                                                  source=source)
    return decode_index(view[position:position + index_size], position, size, version=version,
                        source=source)
