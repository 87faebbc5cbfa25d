"""The C codec (native/segment_codec.c) behind the same five functions as ``_python``.

The only importer of the cffi extension. cffi in API mode releases the GIL around each call, so
long encodes, indexes and scans run in parallel with other Python threads.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from typing import Final

from streamlib.codec._segment_codec import ffi, lib
from streamlib.codec._status import (
    BAD_ARGUMENT,
    BAD_COUNT,
    BATCH_FIELDS,
    BATCH_HEADER_SIZE,
    BLOCK_FIELDS,
    BLOCK_HEADER_SIZE,
    HEADER_FIELDS,
    MIN_RECORD_SIZE,
    MORE,
    NEED_SPACE,
    OK,
    RECORD_FIELDS,
)

NAME: Final = "c"
_SCAN_CHUNK = 256
_FIRST_RECORDS = 1024  # records the span arrays hold before they first grow
_FIRST_HEADERS = 256
MASK64 = (1 << 64) - 1
_from_buffer = ffi.from_buffer
_NULL = ffi.NULL
_EMPTY = bytearray(1)  # a valid pointer for empty inputs (C never reads it)


def _size(data: bytes | bytearray | memoryview) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _ptr(data: bytes | bytearray | memoryview) -> object:
    return _from_buffer(data) if _size(data) else _from_buffer(_EMPTY)


def _fits(column: Sequence[int] | None, count: int) -> bool:
    return column is None or len(column) >= count


def _i64(values: Sequence[int] | None) -> object:
    if values is None:
        return _NULL
    if not isinstance(values, array) or values.typecode != "q":
        values = array("q", values)
    return _from_buffer("int64_t[]", values)


def xxh64(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    digest: int = lib.slc_xxh64(_ptr(data), _size(data), seed)
    return digest


def records_encode(count: int, timestamps: Sequence[int] | None, base_timestamp: int,
                   key_lengths: Sequence[int] | None, keys: bytes,
                   value_lengths: Sequence[int], values: bytes,
                   header_counts: Sequence[int] | None, header_lengths: Sequence[int] | None,
                   header_bytes: bytes) -> tuple[int, bytes]:
    # C trusts the length of each column (it is never told them): check them here.
    header_total = sum(header_counts) if header_counts is not None else 0
    if (count < 1 or len(value_lengths) < count or not _fits(timestamps, count)
            or not _fits(key_lengths, count) or not _fits(header_counts, count)
            or (header_total and (header_lengths is None or len(header_lengths) < 2 * header_total))
            or (header_counts is not None and min(header_counts) < 0)):
        return BAD_ARGUMENT, b""
    counts = _NULL if header_counts is None else _from_buffer("uint32_t[]",
                                                                array("I", header_counts))
    # An upper bound on the size (10 bytes a varint), so that one C call sizes and writes.
    bound = (len(keys) + len(values) + len(header_bytes) + 60 * count + 20 * header_total)
    out = bytearray(bound)
    n = lib.slc_records_encode(count, _i64(timestamps), base_timestamp, _i64(key_lengths),
                               _ptr(keys), len(keys), _i64(value_lengths), _ptr(values),
                               len(values), counts, _i64(header_lengths), header_total,
                               _ptr(header_bytes), len(header_bytes), _from_buffer(out), bound)
    if n < 0:
        return -n, b""
    return OK, bytes(memoryview(out)[:n])


def records_index(payload: bytes, count: int, base_timestamp: int
                  ) -> tuple[int, int, array[int], array[int], int]:
    size = _size(payload)
    if count < 1 or count > size // MIN_RECORD_SIZE:
        return BAD_COUNT, 0, array("q"), array("q"), 0
    # The C code writes straight into the arrays that are returned: no copy, no int objects.
    # They grow (doubling) as records prove valid, so that bytes which only claim many records
    # cost no more than the records before the damage.
    records_cap = min(count, _FIRST_RECORDS)
    records = array("q", bytes(8 * RECORD_FIELDS * records_cap))
    headers, headers_cap = array("q"), 0
    cursor = ffi.new("slc_records_cursor *")
    cursor.max_timestamp = base_timestamp
    error = ffi.new("size_t *")
    data = _ptr(payload)
    while True:
        # A grown array is a new one: the old one's buffer may still be exported to cffi.
        status = lib.slc_records_index(
            data, size, count, base_timestamp,
            _from_buffer("int64_t[]", records, require_writable=True), records_cap,
            _from_buffer("int64_t[]", headers, require_writable=True) if headers_cap else _NULL,
            headers_cap, cursor, error)
        if status != NEED_SPACE:
            break
        if cursor.records == records_cap:
            records_cap = min(2 * records_cap, count)
            records = _grown(records, RECORD_FIELDS * records_cap)
        else:
            headers_cap = max(2 * headers_cap, cursor.headers_needed, _FIRST_HEADERS)
            headers = _grown(headers, HEADER_FIELDS * headers_cap)
    if status != OK:
        return status, error[0], array("q"), array("q"), 0
    del headers[HEADER_FIELDS * cursor.headers:]
    return OK, 0, records, headers, cursor.max_timestamp


def _grown(spans: array[int], length: int) -> array[int]:
    """A zeroed array of ``length`` ints that begins with ``spans``."""
    grown = array("q", bytes(8 * length))
    grown[:len(spans)] = spans
    return grown


def batch_header(flags: int, count: int, stream_id: int, base_offset: int, base_timestamp: int,
                 max_timestamp: int, payload: bytes | memoryview) -> tuple[int, bytes]:
    out = bytearray(BATCH_HEADER_SIZE)
    status = lib.slc_batch_header(_from_buffer(out), flags, count, stream_id, base_offset,
                                  base_timestamp, max_timestamp, _ptr(payload), _size(payload))
    return status, bytes(out) if status == OK else b""


def block_header(compression: int, raw_length: int, batch_count: int, record_count: int,
                 stream_id: int, base_offset: int, first_timestamp: int, max_timestamp: int,
                 stored: bytes | memoryview) -> tuple[int, bytes]:
    out = bytearray(BLOCK_HEADER_SIZE)
    status = lib.slc_block_header(_from_buffer(out), compression, raw_length, batch_count,
                                  record_count, stream_id, base_offset, first_timestamp,
                                  max_timestamp, _ptr(stored), _size(stored))
    return status, bytes(out) if status == OK else b""


def _scan(function: Callable[..., int], fields: int, stream_field: int,
          buf: bytes | bytearray | memoryview, start: int, limit: int | None
          ) -> tuple[int, list[tuple[int, ...]], int, int]:
    chunk = _SCAN_CHUNK if limit is None else max(1, min(limit, _SCAN_CHUNK))
    entries_out = ffi.new("int64_t[]", chunk * fields)
    out = ffi.new("size_t[3]")  # found, stop, error position
    data = _ptr(buf)
    size = _size(buf)
    entries: list[tuple[int, ...]] = []
    while True:
        cap = chunk if limit is None else min(chunk, limit - len(entries))
        status = function(data, size, start, entries_out, cap, out, out + 1, out + 2)
        flat = ffi.unpack(entries_out, out[0] * fields)
        flat[stream_field::fields] = [v & MASK64 for v in flat[stream_field::fields]]  # unsigned
        entries.extend(zip(*[iter(flat)] * fields, strict=True))
        if status != MORE or (limit is not None and len(entries) >= limit):
            return status, entries, out[1], out[2]
        start = out[1]


def scan_batches(buf: bytes | bytearray | memoryview, start: int = 0, limit: int | None = None
                 ) -> tuple[int, list[tuple[int, ...]], int, int]:
    return _scan(lib.slc_scan_batches, BATCH_FIELDS, 4, buf, start, limit)


def scan_blocks(buf: bytes | bytearray | memoryview, start: int = 0, limit: int | None = None
                ) -> tuple[int, list[tuple[int, ...]], int, int]:
    return _scan(lib.slc_scan_blocks, BLOCK_FIELDS, 7, buf, start, limit)
