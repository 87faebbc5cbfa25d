"""The segment codec: record batches and data blocks (docs/format.md).

Two backends do the per-byte work behind one facade: C (``native/``, through cffi) and a
pure-Python twin that gives identical bytes, statuses and positions. ``backend`` says which one
runs. The environment chooses, at import time:

- ``STREAMLIB_PURE`` unset: C if the extension was built, else the twin;
- ``STREAMLIB_PURE=1``: the twin;
- ``STREAMLIB_PURE=0``: C, and an ImportError if it is missing (for tests and benchmarks).

This module holds what both backends share: argument checks, gathering records into columns,
turning spans back into records, compression, and turning status codes into
:class:`~streamlib.errors.CorruptDataError`.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import add
from typing import Generic, Literal, Protocol, TypeAlias, TypeVar

import lz4.block
import zstandard

from streamlib.codec import _python
from streamlib.codec import _status as st
from streamlib.errors import ConfigError, CorruptDataError
from streamlib.records import (
    INT64_MAX,
    MAX_BATCH_RECORDS,
    UINT64_MAX,
    DecodedRecord,
    PlacedBatch,
    Record,
    RecordBatch,
    check_int,
    check_timestamp,
    now_ms,
)

_ScanResult: TypeAlias = tuple[int, list[tuple[int, ...]], int, int]
"""(status, entries, stop position, error position), as a backend's scan gives it."""


class _Backend(Protocol):
    """The functions both backends (the modules ``_native`` and ``_python``) provide."""

    @property
    def NAME(self) -> Literal["c", "python"]: ...

    def xxh64(self, data: bytes | bytearray | memoryview, seed: int = 0) -> int: ...

    def records_encode(self, count: int, timestamps: Sequence[int] | None, base_timestamp: int,
                       key_lengths: Sequence[int] | None, keys: bytes,
                       value_lengths: Sequence[int], values: bytes,
                       header_counts: Sequence[int] | None,
                       header_lengths: Sequence[int] | None,
                       header_bytes: bytes) -> tuple[int, bytes]: ...

    def records_index(self, payload: bytes, count: int, base_timestamp: int
                      ) -> tuple[int, int, array[int], array[int], int]: ...

    def batch_header(self, flags: int, count: int, stream_id: int, base_offset: int,
                     base_timestamp: int, max_timestamp: int, payload: bytes | memoryview
                     ) -> tuple[int, bytes]: ...

    def block_header(self, compression: int, raw_length: int, batch_count: int,
                     record_count: int, stream_id: int, base_offset: int, first_timestamp: int,
                     max_timestamp: int, stored: bytes | memoryview) -> tuple[int, bytes]: ...

    def scan_batches(self, buf: bytes | bytearray | memoryview, start: int = 0,
                     limit: int | None = None) -> _ScanResult: ...

    def scan_blocks(self, buf: bytes | bytearray | memoryview, start: int = 0,
                    limit: int | None = None) -> _ScanResult: ...


def _choose_backend() -> _Backend:
    policy = os.environ.get("STREAMLIB_PURE", "")
    if policy == "1":
        return _python
    if policy not in ("", "0"):
        raise ConfigError("STREAMLIB_PURE", "must be 0, 1 or unset", policy)
    try:
        from streamlib.codec import _native
    except ImportError as e:
        if policy == "0":
            raise ImportError("STREAMLIB_PURE=0 asks for the C codec, but the extension "
                              "streamlib.codec._segment_codec is not built") from e
        warnings.warn("streamlib's C codec is not built (was there no C compiler at install?): "
                      "the pure-Python codec runs, several times slower at encoding and "
                      "scanning. To get the C one, install a C compiler and reinstall: "
                      "pip install --force-reinstall --no-deps --no-binary streamlib streamlib "
                      "(STREAMLIB_PURE=1 chooses the Python codec without this warning)",
                      RuntimeWarning, stacklevel=2)
        return _python
    return _native


_impl = _choose_backend()
backend: Literal["c", "python"] = _impl.NAME
"""Which backend runs: ``"c"`` or ``"python"``."""

BATCH_HEADER_SIZE = st.BATCH_HEADER_SIZE
BLOCK_HEADER_SIZE = st.BLOCK_HEADER_SIZE
MAX_PAYLOAD = st.MAX_PAYLOAD
MAX_BLOCK = st.MAX_BLOCK
Compression = Literal["none", "lz4", "zstd"]
COMPRESSIONS: dict[Compression, int] = {"none": 0, "lz4": 1, "zstd": 2}
_COMPRESSION_NAMES = {code: name for name, code in COMPRESSIONS.items()}
FLAG_RECORDS = 1

T = TypeVar("T")


def xxh64(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """XXH64 of ``data`` (the checksum of every header)."""
    return _impl.xxh64(data, check_int(seed, "seed", 0, UINT64_MAX))


def _corrupt(status: int, position: int, source: str | None, where: str = "") -> CorruptDataError:
    problem = st.MESSAGES.get(status, f"status {status}")
    return CorruptDataError(f"{where}{problem}", position=position, source=source, status=status)


# ---- records ----


# A string: array is subscriptable at run time only from Python 3.12.
_Columns: TypeAlias = ("tuple[array[int] | None, int, int, array[int] | None, bytes, array[int], "
                       "bytes, array[int] | None, array[int] | None, bytes]")
"""(timestamps, base timestamp, max timestamp, key lengths, keys, value lengths, values, header
counts, header lengths, header bytes): the backends' ``records_encode`` arguments, and the max."""


def _columns(records: Sequence[Record], default_ts: int) -> _Columns:
    """Gather records into the columns both backends take.

    Every step is a C-level loop (zip, join, map, tuple comparison): per record this costs more
    than the C encoder itself, so it is kept to the bare minimum. Records are not type-checked
    here: anything that is not a Record's four fields fails one of these steps, and
    :func:`_explain` then names the culprit."""
    n = len(records)
    values, keys, headers, timestamps = zip(*records, strict=True)
    values_data = b"".join(values)
    value_lengths = _lengths(values)

    nothing = (None,) * n  # tuple equality compares identity first: a fast all-None test
    if keys == nothing:
        key_lengths, keys_data = None, b""
    else:
        keys_data = b"".join(filter(None, keys))  # empty keys add nothing; None is skipped
        key_lengths = array("q", [-1 if k is None else len(k) for k in keys])

    if headers == ((),) * n:
        header_counts, header_lengths, header_data = None, None, b""
    else:
        header_counts = array("I", map(len, headers))
        parts: list[bytes] = []
        for pairs in headers:
            for name, value in pairs:
                parts.append(name.encode("utf-8"))
                parts.append(value)
        header_lengths = _lengths(parts)
        header_data = b"".join(parts)

    if timestamps == nothing:
        ts_column, base, top = None, default_ts, default_ts
    else:
        if None in timestamps:
            timestamps = tuple(default_ts if t is None else t for t in timestamps)
        ts_column = array("q", timestamps)
        base, top = ts_column[0], max(ts_column)
    return (ts_column, base, top, key_lengths, keys_data, value_lengths, values_data,
            header_counts, header_lengths, header_data)


def _lengths(items: Sequence[bytes]) -> array[int]:
    """``array('q', map(len, items))``, built the fastest way CPython offers (via struct)."""
    lengths = array("q")
    lengths.frombytes(struct.pack(f"{len(items)}q", *map(len, items)))
    return lengths


def _explain(records: Sequence[object]) -> None:
    """Raise the clear error for records that failed to gather (not a Record, or a Record built
    around the validation)."""
    for i, record in enumerate(records):
        if not isinstance(record, Record):
            raise TypeError(f"records[{i}] must be a streamlib.Record, "
                            f"not {type(record).__name__}")
        Record(*record)  # re-validates the fields; raises naming the bad one


def encode_records(records: Iterable[Record], *, timestamp: int | None = None) -> RecordBatch:
    """Encode records into a batch (``encoding="records"``). Records without a timestamp get
    ``timestamp``, or now."""
    if not isinstance(records, list | tuple):
        if isinstance(records, str | bytes | bytearray | memoryview | Record):
            raise TypeError("records must be a sequence of streamlib.Record, "
                            f"not {type(records).__name__}")
        records = list(records)
    n = _batch_count(len(records))
    default_ts = now_ms() if timestamp is None else check_timestamp(timestamp, "timestamp")
    try:
        columns = _columns(records, default_ts)
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error):
        _explain(records)
        raise
    return _encoded(n, columns)


def encode_values(values: Sequence[bytes], *, timestamp: int | None = None) -> RecordBatch:
    """:func:`encode_records` of ``Record(v)`` for each of ``values`` — every one exactly
    ``bytes`` (the caller checks) — without building the Records: the same bytes, the columns
    of values alone."""
    n = _batch_count(len(values))
    ts = now_ms() if timestamp is None else check_timestamp(timestamp, "timestamp")
    return _encoded(n, (None, ts, ts, None, b"", _lengths(values), b"".join(values), None, None,
                        b""))


def _batch_count(n: int) -> int:
    if n == 0:
        raise ValueError("a batch needs at least one record")
    if n > MAX_BATCH_RECORDS:
        raise ValueError(f"a batch holds at most {MAX_BATCH_RECORDS} records: count=`{n}`")
    return n


def _encoded(n: int, columns: _Columns) -> RecordBatch:
    """The batch of ``n`` records the backend encodes from ``columns``."""
    (ts, base, top, key_lengths, keys, value_lengths, values, header_counts, header_lengths,
     header_bytes) = columns
    status, payload = _impl.records_encode(n, ts, base, key_lengths, keys, value_lengths, values,
                                           header_counts, header_lengths, header_bytes)
    if status == st.BAD_LENGTH:
        raise ValueError(f"records encode to more than the format's limit of {MAX_PAYLOAD} bytes")
    if status != st.OK:  # the columns come from validated values: a bug if it happens
        raise AssertionError(f"codec refused its own columns: status={status}")
    return RecordBatch._trusted(payload, n, base, top, "records")


@dataclass(frozen=True, slots=True)
class RecordIndex:
    """Where each record of a payload lies (flat ``array('q')``s, 7 ints a record and 4 a
    header, as in native/segment_codec.h), and the largest timestamp. Built by
    :func:`index_records`."""

    records: array[int]
    headers: array[int]
    max_timestamp: int


def _payload(payload: bytes | bytearray | memoryview) -> bytes:
    """Decoded values are slices of the payload: it must be immutable bytes of its own."""
    if type(payload) is bytes:
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(memoryview(payload).cast("B"))
    raise TypeError(f"payload must be bytes-like, not {type(payload).__name__}")


def index_records(payload: bytes, count: int, base_timestamp: int, *,
                  source: str | None = None, position: int = 0) -> RecordIndex:
    """Validate a records payload and locate every field; CorruptDataError names the position
    (``position`` is added: the payload's own place in its buffer)."""
    payload = _payload(payload)
    count = check_int(count, "count", 0, UINT64_MAX)
    base_timestamp = check_timestamp(base_timestamp, "base_timestamp")
    position = check_int(position, "position", 0, INT64_MAX)
    if count < 1 or count > len(payload) // st.MIN_RECORD_SIZE:
        raise CorruptDataError(f"{st.MESSAGES[st.BAD_COUNT]}: count=`{count}` "
                               f"payload=`{len(payload)}` bytes", position=position,
                               source=source, status=st.BAD_COUNT)
    status, at, spans, header_spans, max_ts = _impl.records_index(payload, count, base_timestamp)
    if status != st.OK:
        raise _corrupt(status, position + at, source, "record batch payload: ")
    return RecordIndex(spans, header_spans, max_ts)


def check_records(payload: bytes, count: int, base_timestamp: int, max_timestamp: int) -> None:
    """Raise ValueError unless ``payload`` holds exactly ``count`` valid records with these
    timestamps (for batches a caller builds by hand with ``encoding="records"``)."""
    try:
        index = index_records(payload, count, base_timestamp)
    except CorruptDataError as e:
        raise ValueError(f"payload does not hold `{count}` valid records: {e}") from e
    if index.max_timestamp != max_timestamp:
        raise ValueError(f"max_timestamp does not match the records: "
                         f"max_timestamp=`{max_timestamp}` records=`{index.max_timestamp}`")


def _materialize(payload: bytes, index: RecordIndex, count: int) -> list[DecodedRecord]:
    """Records from spans, with C-level loops (map, zip, slice) instead of per-record Python."""
    spans = index.records
    ts, key_pos, key_len = spans[0::7], spans[1::7], spans[2::7]
    value_pos, value_len = spans[3::7], spans[4::7]
    getitem = payload.__getitem__
    values = map(getitem, map(slice, value_pos, map(add, value_pos, value_len)))
    if key_len.count(-1) == count:
        keys: Iterable[bytes | None] = repeat(None)
    else:
        keys = [None if n < 0 else payload[p:p + n] for p, n in zip(key_pos, key_len, strict=True)]
    if not index.headers:
        headers: Iterable[tuple[tuple[str, bytes], ...]] = repeat(())
    else:
        h = index.headers
        pairs = [(payload[h[i]:h[i] + h[i + 1]].decode("utf-8"),
                  payload[h[i + 2]:h[i + 2] + h[i + 3]]) for i in range(0, len(h), 4)]
        headers = [tuple(pairs[first:first + n])
                   for first, n in zip(spans[5::7], spans[6::7], strict=True)]
    # keys and headers may be endless repeats: values and ts set the length
    return list(map(tuple.__new__, repeat(DecodedRecord),
                    zip(values, keys, headers, ts, strict=False)))


def decode_records(payload: bytes, count: int, base_timestamp: int,
                   max_timestamp: int | None = None, *, source: str | None = None,
                   position: int = 0) -> list[DecodedRecord]:
    """Decode a records payload into Record objects (every record carries its timestamp).
    With ``max_timestamp`` (the batch header's), the records must agree with it."""
    payload = _payload(payload)
    index = index_records(payload, count, base_timestamp, source=source, position=position)
    if max_timestamp is not None and index.max_timestamp != max_timestamp:
        raise CorruptDataError(f"records' largest timestamp `{index.max_timestamp}` is not the "
                               f"header's `{max_timestamp}`", position=position, source=source,
                               status=st.BAD_TIMESTAMP)
    return _materialize(payload, index, count)


# ---- batches ----


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A framed batch found in a buffer: where, and its header fields."""

    position: int
    length: int
    encoding: Literal["records", "opaque"]
    count: int
    stream_id: int
    base_offset: int
    base_timestamp: int
    max_timestamp: int

    @property
    def payload_position(self) -> int:
        return self.position + BATCH_HEADER_SIZE

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.count

    @property
    def end(self) -> int:
        """The position after this batch."""
        return self.position + self.length


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """A data block found in a buffer: where, and its header fields."""

    position: int
    length: int
    compression: Compression
    stored_length: int
    raw_length: int
    batch_count: int
    record_count: int
    stream_id: int
    base_offset: int
    first_timestamp: int
    max_timestamp: int

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count

    @property
    def end(self) -> int:
        return self.position + self.length


@dataclass(frozen=True, slots=True)
class Scan(Generic[T]):
    """What a scan found: the valid entries in order, the position where it stopped (the end of
    the buffer, or the start of the first bad entry), and the error that stopped it, if any."""

    entries: list[T]
    end: int
    error: CorruptDataError | None


def _batch_info(e: tuple[int, ...]) -> BatchInfo:
    return BatchInfo(e[0], e[1], "records" if e[2] & FLAG_RECORDS else "opaque", *e[3:])


def _block_info(e: tuple[int, ...]) -> BlockInfo:
    return BlockInfo(e[0], e[1], _COMPRESSION_NAMES[e[2]], *e[3:])


def batch_header(stream_id: int, base_offset: int, batch: RecordBatch) -> bytes:
    """The 56-byte header that frames ``batch`` at ``base_offset`` of ``stream_id``; the payload
    follows it unchanged (write both with one gathered write to avoid a copy)."""
    stream_id = check_int(stream_id, "stream_id", 0, UINT64_MAX)
    if not isinstance(batch, RecordBatch):
        raise TypeError(f"batch must be a RecordBatch, not {type(batch).__name__}")
    base_offset = check_int(base_offset, "base_offset", 0, INT64_MAX - batch.count)
    if batch.base_offset is not None and batch.base_offset != base_offset:
        raise ValueError(f"batch is placed elsewhere: batch.base_offset=`{batch.base_offset}` "
                         f"base_offset=`{base_offset}`")
    flags = FLAG_RECORDS if batch.encoding == "records" else 0
    status, header = _impl.batch_header(flags, batch.count, stream_id, base_offset,
                                        batch.base_timestamp, batch.max_timestamp, batch.payload)
    if status != st.OK:
        raise ValueError(f"batch cannot be framed at this offset: stream=`{stream_id}` "
                         f"base_offset=`{base_offset}` count=`{batch.count}`")
    return header


def encode_batch(stream_id: int, base_offset: int, batch: RecordBatch) -> bytes:
    """The framed batch: header and payload."""
    return batch_header(stream_id, base_offset, batch) + batch.payload


def _view(buf: bytes | bytearray | memoryview, end: int | None) -> memoryview:
    view = memoryview(buf).cast("B") if isinstance(buf, memoryview) else memoryview(buf)
    return view if end is None else view[:end]


def _check_buffer(buf: object) -> int:
    """The size in bytes of a buffer a decoder was given (TypeError if it is not one)."""
    if not isinstance(buf, bytes | bytearray | memoryview):
        raise TypeError(f"buffer must be bytes-like, not {type(buf).__name__}")
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def _run_scan(scan: Callable[[memoryview, int, int | None], _ScanResult],
              make: Callable[[tuple[int, ...]], T], buf: bytes | bytearray | memoryview,
              start: int, end: int | None, source: str | None, strict: bool,
              limit: int | None = None) -> Scan[T]:
    # The caller's range is checked here, before any byte is read: a range outside the buffer
    # is the caller's mistake (ValueError naming it), never damage and never clipped.
    size = _check_buffer(buf)
    if end is not None:
        end = check_int(end, "end", 0, size)
    start = check_int(start, "start", 0, size if end is None else end)
    view = _view(buf, end)
    status, entries, stop, at = scan(view, start, limit)
    error = None
    if status not in (st.OK, st.MORE):
        error = _corrupt(status, at, source)
        if strict:
            raise error
    return Scan(list(map(make, entries)), stop, error)


def scan_batches(buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None, *,
                 source: str | None = None, strict: bool = True) -> Scan[BatchInfo]:
    """Validate every framed batch in ``buf[start:end]`` (headers and checksums).

    ``strict`` raises CorruptDataError at the first bad batch; otherwise the scan returns the
    valid prefix with ``end`` at the bad batch and the error in ``error`` (WAL recovery)."""
    return _run_scan(_impl.scan_batches, _batch_info, buf, start, end, source, strict)


def decode_batch(buf: bytes | bytearray | memoryview, position: int = 0, *,
                 source: str | None = None) -> tuple[BatchInfo, PlacedBatch]:
    """The batch framed at ``position``: its header fields and the batch (with its offset).
    ``position`` outside ``[0, len(buf)]`` raises ValueError (naming it ``start``, the scan's
    word); at the very end, where the bytes end before a batch could begin, CorruptDataError
    (truncated)."""
    scan = _run_scan(_impl.scan_batches, _batch_info, buf, position, None, source, True, 1)
    if not scan.entries:
        raise CorruptDataError(st.MESSAGES[st.TRUNCATED], position=position, source=source,
                               status=st.TRUNCATED)
    info = scan.entries[0]
    return info, _batch_from(info, _view(buf, None))


def _batch_from(info: BatchInfo, view: memoryview) -> PlacedBatch:
    payload = bytes(view[info.payload_position:info.end])
    return PlacedBatch._trusted(payload, info.count, info.base_timestamp, info.max_timestamp,
                                info.encoding, info.base_offset)


def read_batches(buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None, *,
                 source: str | None = None) -> list[tuple[BatchInfo, PlacedBatch]]:
    """Every batch in ``buf[start:end]``, checked; CorruptDataError at the first bad one.
    A range outside the buffer raises ValueError, as for :func:`scan_batches`."""
    scan = scan_batches(buf, start, end, source=source)
    view = _view(buf, None)
    return [(info, _batch_from(info, view)) for info in scan.entries]


# ---- data blocks ----

_local = threading.local()  # zstd contexts are not thread-safe: one set per thread


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    decompressor: zstandard.ZstdDecompressor = _local.decompressor
    return decompressor


def _compress(raw: bytes, compression: Compression, zstd_level: int) -> tuple[int, bytes]:
    if compression == "lz4":
        stored: bytes = lz4.block.compress(raw, store_size=False)
    elif compression == "zstd":
        stored = _zstd_compressor(zstd_level).compress(raw)
    else:
        return 0, raw
    if len(stored) >= len(raw):  # incompressible: store as it is
        return 0, raw
    return COMPRESSIONS[compression], stored


# How far each compression can expand the stored bytes: an lz4 block yields less than 255 bytes a
# byte (a match length byte of 255 at best), a zstd frame at most 128 KiB for 4 bytes (an RLE block:
# a 3-byte block header and the byte). A raw_length beyond that is damage, refused before the
# decompressor allocates it.
_MOST_EXPANSION: dict[Compression, int] = {"lz4": 255, "zstd": 32 * 1024}


def _decompress(stored: memoryview, info: BlockInfo, source: str | None) -> bytes:
    """The block's raw bytes: exactly ``raw_length`` of them, in one buffer of that size,
    allocated only once the header's ``raw_length`` is possible for its stored bytes."""
    position = info.position + BLOCK_HEADER_SIZE
    if info.compression == "none":
        return bytes(stored)
    if info.raw_length > _MOST_EXPANSION[info.compression] * info.stored_length:
        raise CorruptDataError(
            f"{info.compression} block of `{info.stored_length}` bytes cannot decompress to "
            f"`{info.raw_length}`", position=position, source=source, status=st.BAD_LENGTH)
    try:
        if info.compression == "lz4":
            # Writes at most raw_length bytes; fewer is caught below.
            raw: bytes = lz4.block.decompress(stored, uncompressed_size=info.raw_length)
        else:
            # Check the declared size first: zstd allocates what the frame claims, and then
            # refuses a frame whose content is not exactly that size.
            declared = zstandard.frame_content_size(stored)
            if declared != info.raw_length:
                said = "no size" if declared < 0 else f"`{declared}` bytes"
                raise CorruptDataError(
                    f"zstd frame declares {said}, the block header `{info.raw_length}`",
                    position=position, source=source, status=st.BAD_LENGTH)
            # One frame and nothing after it, as lz4's block is the whole of the stored bytes.
            raw = _zstd_decompressor().decompress(stored, allow_extra_data=False)
    except CorruptDataError:
        raise
    except (lz4.block.LZ4BlockError, zstandard.ZstdError, ValueError) as e:
        raise CorruptDataError(f"{info.compression} block does not decompress ({e})",
                               position=position, source=source, status=st.BAD_LENGTH) from None
    if len(raw) != info.raw_length:
        raise CorruptDataError(f"block decompresses to `{len(raw)}` bytes, not `{info.raw_length}`",
                               position=position, source=source, status=st.BAD_LENGTH)
    return raw


def encode_block(stream_id: int, batches: Sequence[RecordBatch], *,
                 compression: Compression = "none", zstd_level: int = 3) -> bytes:
    """One data block of ``stream_id``: the batches (each with its ``base_offset``, contiguous),
    framed, compressed as a unit, and checksummed."""
    stream_id = check_int(stream_id, "stream_id", 0, UINT64_MAX)
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of none, lz4, zstd: compression=`{compression}`")
    zstd_level = check_int(zstd_level, "zstd_level", 1, 22)
    if not isinstance(batches, Sequence) or isinstance(batches, str | bytes | bytearray):
        raise TypeError(f"batches must be a sequence of RecordBatch, not {type(batches).__name__}")
    if not batches:
        raise ValueError("a data block needs at least one batch")
    for i, batch in enumerate(batches):
        if not isinstance(batch, RecordBatch):
            raise TypeError(f"batches[{i}] must be a RecordBatch, not {type(batch).__name__}")
    expected = batches[0].base_offset
    parts = []
    records = 0
    for i, batch in enumerate(batches):
        if batch.base_offset is None or batch.base_offset != expected:
            raise ValueError(f"batches of a block must be contiguous: batches[{i}] has "
                             f"base_offset=`{batch.base_offset}`, expected=`{expected}`")
        parts.append(batch_header(stream_id, batch.base_offset, batch))
        parts.append(batch.payload)
        expected = batch.base_offset + batch.count
        records += batch.count
    raw = b"".join(parts)
    if len(raw) > MAX_BLOCK:
        raise ValueError(f"a data block holds at most {MAX_BLOCK} bytes: size=`{len(raw)}`")
    if records > 0xFFFFFFFF:
        raise ValueError(f"a data block holds at most 2^32-1 records: count=`{records}`")
    code, stored = _compress(raw, compression, zstd_level)
    first = batches[0]
    assert first.base_offset is not None  # the contiguity check above refuses None
    status, header = _impl.block_header(code, len(raw), len(batches), records, stream_id,
                                        first.base_offset, first.base_timestamp,
                                        max(b.max_timestamp for b in batches), stored)
    if status != st.OK:
        raise AssertionError(f"codec refused a block it built: status={status}")
    return header + stored


def scan_blocks(buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None, *,
                source: str | None = None, strict: bool = True) -> Scan[BlockInfo]:
    """As :func:`scan_batches`, for a run of data blocks (an object's data section)."""
    return _run_scan(_impl.scan_blocks, _block_info, buf, start, end, source, strict)


def decode_block(buf: bytes | bytearray | memoryview, position: int = 0, *,
                 source: str | None = None) -> tuple[BlockInfo, list[PlacedBatch]]:
    """The block at ``position``, checked, decompressed, and split into its batches; every
    disagreement between the header and the batches inside raises CorruptDataError.
    ``position`` is checked as in :func:`decode_batch`."""
    _check_buffer(buf)
    view = _view(buf, None)
    scan = _run_scan(_impl.scan_blocks, _block_info, view, position, None, source, True, 1)
    if not scan.entries:
        raise CorruptDataError(st.MESSAGES[st.TRUNCATED], position=position, source=source,
                               status=st.TRUNCATED)
    info = scan.entries[0]
    raw = _decompress(view[info.position + BLOCK_HEADER_SIZE:info.end], info, source)
    return info, _block_batches(raw, info, source)


_BLOCK_SCAN_STEP = 256  # batches of a block scanned, and checked against its header, at a time


def _block_batches(raw: bytes, info: BlockInfo, source: str | None) -> list[PlacedBatch]:
    """The batches of a decompressed block, each checked against the block's header as the scan
    finds it: a header contradicted early costs no more than the batches before (a few bytes of
    zstd can hold a million copies of one batch)."""
    inner = f"{source or 'buffer'} block@{info.position} (decompressed)"
    view = memoryview(raw)
    batches: list[PlacedBatch] = []
    expected = info.base_offset
    top = info.first_timestamp
    start = 0
    while start < len(raw):
        status, entries, start, at = _impl.scan_batches(view, start, _BLOCK_SCAN_STEP)
        for entry in entries:
            batch = _batch_info(entry)
            problem = _batch_mismatch(info, batch, len(batches), expected)
            if problem:
                raise CorruptDataError(f"block contents contradict its header: {problem}",
                                       position=info.position, source=source,
                                       status=st.BAD_RECORD)
            batches.append(_batch_from(batch, view))
            expected += batch.count
            top = max(top, batch.max_timestamp)
        if status not in (st.OK, st.MORE):
            raise _corrupt(status, at, inner)
    problem = ""
    if len(batches) != info.batch_count:
        problem = f"batches=`{len(batches)}` header=`{info.batch_count}`"
    elif expected - info.base_offset != info.record_count:
        problem = f"records=`{expected - info.base_offset}` header=`{info.record_count}`"
    elif top != info.max_timestamp:
        problem = f"max timestamp `{top}`, header `{info.max_timestamp}`"
    if problem:
        raise CorruptDataError(f"block contents contradict its header: {problem}",
                               position=info.position, source=source, status=st.BAD_RECORD)
    return batches


def _batch_mismatch(info: BlockInfo, batch: BatchInfo, index: int, expected: int) -> str:
    """What batch number ``index`` of a block, expected at offset ``expected``, contradicts in
    the block's header; empty if nothing."""
    if index == info.batch_count:
        return f"batches=`>{index}` header=`{info.batch_count}`"
    if batch.stream_id != info.stream_id:
        return f"batch of stream `{batch.stream_id}` in a block of stream `{info.stream_id}`"
    if batch.base_offset != expected:
        return f"batch at offset `{batch.base_offset}`, expected `{expected}`"
    if batch.next_offset - info.base_offset > info.record_count:
        return f"records=`>{info.record_count}` header=`{info.record_count}`"
    if index == 0 and batch.base_timestamp != info.first_timestamp:
        return f"first timestamp `{batch.base_timestamp}`, header `{info.first_timestamp}`"
    if batch.max_timestamp > info.max_timestamp:
        return f"max timestamp `{batch.max_timestamp}` above the header's `{info.max_timestamp}`"
    return ""


__all__ = [
    "BATCH_HEADER_SIZE", "BLOCK_HEADER_SIZE", "COMPRESSIONS", "MAX_BLOCK", "MAX_PAYLOAD",
    "BatchInfo", "BlockInfo", "RecordIndex", "Scan", "backend", "batch_header", "check_records",
    "decode_batch", "decode_block", "decode_records", "encode_batch", "encode_block",
    "encode_records", "encode_values", "index_records", "read_batches", "scan_batches",
    "scan_blocks", "xxh64",
]
