"""The pure-Python twin of native/segment_codec.c.

Same functions, same checks in the same order, same status codes and positions, same bytes.
The facade (``streamlib.codec``) calls either this module or ``_native`` through the same five
functions; tests compare the two on random input.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Sequence
from typing import Final

import xxhash

from streamlib.codec._status import (
    BAD_ARGUMENT,
    BAD_CHECKSUM,
    BAD_COUNT,
    BAD_FLAGS,
    BAD_LENGTH,
    BAD_MAGIC,
    BAD_OFFSET,
    BAD_RECORD,
    BAD_TIMESTAMP,
    BAD_UTF8,
    BAD_VARINT,
    BAD_VERSION,
    BATCH_HEADER_SIZE,
    BLOCK_HEADER_SIZE,
    MAX_BLOCK,
    MAX_PAYLOAD,
    MIN_RECORD_SIZE,
    MORE,
    NEED_SPACE,
    OK,
    TRUNCATED,
)

NAME: Final = "python"

BATCH_MAGIC = b"SLRB"
BLOCK_MAGIC = b"SLDB"
VERSION = 1
FLAG_RECORDS = 0x01
COMPRESSION_MAX = 2
INT64_MAX = (1 << 63) - 1
MASK64 = (1 << 64) - 1
SIGN64 = 1 << 63

# After the checksum: version, flags, reserved, then the fields (offset 12 onwards).
_BATCH_TAIL = struct.Struct("<BBHIIQqqq")  # version flags reserved payload count stream base ts max
_BLOCK_TAIL = struct.Struct("<BBHIIIIQqqq")  # version comp reserved stored raw batches records …
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SMALL = [bytes((i,)) for i in range(128)]


def xxh64(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    return xxhash.xxh64_intdigest(data, seed)


def _signed(v: int) -> int:
    return v - (1 << 64) if v & SIGN64 else v


def _zigzag(v: int) -> int:
    """Zigzag of a signed 64-bit value (given as a Python int in range)."""
    return ((v << 1) ^ (v >> 63)) & MASK64


def uvarint(v: int) -> bytes:
    if v < 0x80:
        return _SMALL[v]
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _get_uvarint(p: bytes, pos: int, limit: int) -> tuple[int, int] | None:
    """(value, new position), or None for a truncated, too long, overflowing or overlong varint."""
    v = 0
    for n in range(10):
        i = pos + n
        if i >= limit:
            return None
        b = p[i]
        if n == 9 and b > 1:
            return None
        v |= (b & 0x7F) << (7 * n)
        if b < 0x80:
            if b == 0 and n > 0:
                return None
            return v, i + 1
    return None


# ---- records payload ----


def _take(length: int, left: int) -> int:
    """What remains of a budget after ``length``, or -1 for a negative length or an overdraft."""
    if length < 0 or length > left:
        return -1
    return left - length


def records_encode(count: int, timestamps: Sequence[int] | None, base_timestamp: int,
                   key_lengths: Sequence[int] | None, keys: bytes,
                   value_lengths: Sequence[int], values: bytes,
                   header_counts: Sequence[int] | None, header_lengths: Sequence[int] | None,
                   header_bytes: bytes) -> tuple[int, bytes]:
    """(status, payload): slc_records_size and slc_records_encode in one."""
    header_total = sum(header_counts) if header_counts is not None else 0
    if (count < 1 or any(column is not None and len(column) < count
                         for column in (timestamps, key_lengths, value_lengths, header_counts))
            or (header_total
                and (header_lengths is None or len(header_lengths) < 2 * header_total))):
        return BAD_ARGUMENT, b""
    keys_left, values_left, header_bytes_left = len(keys), len(values), len(header_bytes)
    out: list[bytes] = []
    append = out.append
    kpos = vpos = hpos = hl_index = 0
    total = 0
    small = _SMALL
    for i in range(count):
        ts_delta = 0
        if timestamps is not None:
            ts_delta = _zigzag(_signed((timestamps[i] - base_timestamp) & MASK64))
        key_len = key_lengths[i] if key_lengths is not None else -1
        value_len = value_lengths[i]
        hc = header_counts[i] if header_counts is not None else 0
        if key_len != -1:
            keys_left = _take(key_len, keys_left)
            if keys_left < 0:
                return BAD_ARGUMENT, b""
        values_left = _take(value_len, values_left)
        if values_left < 0 or (hc and header_lengths is None) or hc < 0:
            return BAD_ARGUMENT, b""
        parts = [small[ts_delta] if ts_delta < 0x80 else uvarint(ts_delta),
                 small[i] if i < 0x80 else uvarint(i),
                 small[_zigzag(key_len)] if -64 <= key_len < 64 else uvarint(_zigzag(key_len))]
        if key_len > 0:
            parts.append(keys[kpos:kpos + key_len])
            kpos += key_len
        parts.append(small[value_len] if value_len < 0x80 else uvarint(value_len))
        parts.append(values[vpos:vpos + value_len])
        vpos += value_len
        parts.append(small[hc] if hc < 0x80 else uvarint(hc))
        for _ in range(2 * hc):
            if header_lengths is None or hl_index >= len(header_lengths):
                return BAD_ARGUMENT, b""
            n = header_lengths[hl_index]
            hl_index += 1
            header_bytes_left = _take(n, header_bytes_left)
            if header_bytes_left < 0:
                return BAD_ARGUMENT, b""
            parts.append(uvarint(n))
            parts.append(header_bytes[hpos:hpos + n])
            hpos += n
        body = b"".join(parts)
        prefix = uvarint(len(body))
        total += len(prefix) + len(body)
        if total > MAX_PAYLOAD:
            return BAD_LENGTH, b""
        append(prefix)
        append(body)
    if keys_left or values_left or header_bytes_left or hl_index != 2 * header_total:
        return BAD_ARGUMENT, b""
    return OK, b"".join(out)


def _valid_utf8(data: bytes | memoryview) -> bool:
    try:
        str(data, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


def records_index(payload: bytes, count: int, base_timestamp: int
                  ) -> tuple[int, int, array[int], array[int], int]:
    """(status, error position, record spans, header spans, max timestamp).

    Spans are flat ``array('q')``s: RECORD_FIELDS ints a record (timestamp, key position, key
    length or -1, value position, value length, first header, header count) and HEADER_FIELDS a
    header (name position, name length, value position, value length). On an error, only the status
    and the position mean anything (empty spans and 0, as the C code gives).

    The spans grow as records prove valid, 8 bytes a field as in C: bytes that only claim many
    records cost no more than the records before the damage."""
    if count == 0 or count > len(payload) // MIN_RECORD_SIZE:
        return BAD_COUNT, 0, array("q"), array("q"), 0
    status, position, records, headers, max_ts = _index(payload, count, base_timestamp)
    if status != OK:
        return status, position, array("q"), array("q"), 0
    return OK, 0, records, headers, max_ts


def _index(payload: bytes, count: int, base_timestamp: int
           ) -> tuple[int, int, array[int], array[int], int]:
    size = len(payload)
    pos = 0
    records = array("q")
    headers = array("q")
    max_ts = base_timestamp
    get = _get_uvarint
    for i in range(count):
        # Each field is read with the one-byte case inline: it is nearly every varint here.
        field = pos
        if pos < size and payload[pos] < 0x80:
            v = payload[pos]
            pos += 1
        else:
            r = get(payload, pos, size)
            if r is None:
                return BAD_VARINT, field, records, headers, max_ts
            v, pos = r
        if v > size - pos:
            return BAD_LENGTH, field, records, headers, max_ts
        end = pos + v

        field = pos
        r = get(payload, pos, end)
        if r is None:
            return BAD_VARINT, field, records, headers, max_ts
        v, pos = r
        if i == 0 and v != 0:
            return BAD_RECORD, field, records, headers, max_ts
        ts = _signed((base_timestamp + ((v >> 1) ^ -(v & 1))) & MASK64)
        if ts > max_ts:
            max_ts = ts

        field = pos
        r = get(payload, pos, end)
        if r is None:
            return BAD_VARINT, field, records, headers, max_ts
        v, pos = r
        if v != i:
            return BAD_RECORD, field, records, headers, max_ts

        field = pos
        r = get(payload, pos, end)
        if r is None:
            return BAD_VARINT, field, records, headers, max_ts
        v, pos = r
        key_len = (v >> 1) ^ -(v & 1)
        if key_len < -1 or (key_len > 0 and key_len > end - pos):
            return BAD_LENGTH, field, records, headers, max_ts
        key_pos = pos
        if key_len > 0:
            pos += key_len

        field = pos
        r = get(payload, pos, end)
        if r is None:
            return BAD_VARINT, field, records, headers, max_ts
        v, pos = r
        if v > end - pos:
            return BAD_LENGTH, field, records, headers, max_ts
        value_pos = pos
        value_len = v
        pos += v

        field = pos
        r = get(payload, pos, end)
        if r is None:
            return BAD_VARINT, field, records, headers, max_ts
        v, pos = r
        if v > (end - pos) // 2:
            return BAD_COUNT, field, records, headers, max_ts
        header_count = v
        first_header = len(headers) // 4
        for _ in range(header_count):
            field = pos
            r = get(payload, pos, end)
            if r is None:
                return BAD_VARINT, field, records, headers, max_ts
            v, pos = r
            if v > end - pos:
                return BAD_LENGTH, field, records, headers, max_ts
            name_pos, name_len = pos, v
            if not _valid_utf8(payload[pos:pos + name_len]):
                return BAD_UTF8, name_pos, records, headers, max_ts
            pos += name_len
            field = pos
            r = get(payload, pos, end)
            if r is None:
                return BAD_VARINT, field, records, headers, max_ts
            v, pos = r
            if v > end - pos:
                return BAD_LENGTH, field, records, headers, max_ts
            headers.extend((name_pos, name_len, pos, v))
            pos += v
        if pos != end:
            return BAD_LENGTH, pos, records, headers, max_ts
        records.extend((ts, key_pos, key_len, value_pos, value_len, first_header, header_count))
    if pos != size:
        return BAD_LENGTH, pos, records, headers, max_ts
    return OK, 0, records, headers, max_ts


# ---- batches ----


def batch_header(flags: int, count: int, stream_id: int, base_offset: int, base_timestamp: int,
                 max_timestamp: int, payload: bytes | memoryview) -> tuple[int, bytes]:
    if (len(payload) > MAX_PAYLOAD or flags & ~FLAG_RECORDS or not 1 <= count <= 0x7FFFFFFF
            or (flags & FLAG_RECORDS and count > len(payload) // MIN_RECORD_SIZE)
            or base_offset < 0 or base_offset > INT64_MAX - count
            or max_timestamp < base_timestamp):
        return BAD_ARGUMENT, b""
    tail = _BATCH_TAIL.pack(VERSION, flags, 0, len(payload), count, stream_id, base_offset,
                            base_timestamp, max_timestamp)
    h = xxhash.xxh64(tail)
    h.update(payload)
    return OK, BATCH_MAGIC + _U64.pack(h.intdigest()) + tail


def _check_batch(buf: memoryview, size: int, p: int) -> tuple[int, int, tuple[int, ...] | None]:
    """(status, error position or batch length, header fields)."""
    if size - p < BATCH_HEADER_SIZE:
        return TRUNCATED, p, None
    if buf[p:p + 4] != BATCH_MAGIC:
        return BAD_MAGIC, p, None
    if buf[p + 12] != VERSION:
        return BAD_VERSION, p + 12, None
    fields = _BATCH_TAIL.unpack_from(buf, p + 12)
    _, flags, reserved, payload, count, _, base_offset, base_ts, max_ts = fields
    if payload > MAX_PAYLOAD:
        return BAD_LENGTH, p + 16, None
    if payload > size - p - BATCH_HEADER_SIZE:
        return TRUNCATED, p + 16, None
    if _U64.unpack_from(buf, p + 4)[0] != xxhash.xxh64_intdigest(
            buf[p + 12:p + BATCH_HEADER_SIZE + payload]):
        return BAD_CHECKSUM, p + 4, None
    if flags & ~FLAG_RECORDS or reserved:
        return BAD_FLAGS, p + 13, None
    if count == 0 or count > 0x7FFFFFFF:
        return BAD_COUNT, p + 20, None
    if flags & FLAG_RECORDS and count > payload // MIN_RECORD_SIZE:
        return BAD_COUNT, p + 20, None
    if base_offset < 0 or base_offset > INT64_MAX - count:
        return BAD_OFFSET, p + 32, None
    if max_ts < base_ts:
        return BAD_TIMESTAMP, p + 48, None
    return OK, BATCH_HEADER_SIZE + payload, fields


def _scan(check: Callable[[memoryview, int, int], tuple[int, int, tuple[int, ...] | None]],
          entry: Callable[[int, int, tuple[int, ...]], tuple[int, ...]],
          buf: bytes | bytearray | memoryview, start: int, limit: int | None
          ) -> tuple[int, list[tuple[int, ...]], int, int]:
    view = memoryview(buf).cast("B")
    size = len(view)
    if start > size:
        return TRUNCATED, [], size, size
    entries: list[tuple[int, ...]] = []
    p = start
    while p < size:
        if limit is not None and len(entries) == limit:
            return MORE, entries, p, 0
        status, value, fields = check(view, size, p)
        if status != OK:
            return status, entries, p, value
        assert fields is not None  # a header that checks out comes with its fields
        entries.append(entry(p, value, fields))
        p += value
    return OK, entries, p, 0


def _batch_entry(p: int, length: int, f: tuple[int, ...]) -> tuple[int, ...]:
    # position, length, flags, count, stream_id, base_offset, base_ts, max_ts
    return (p, length, f[1], f[4], f[5], f[6], f[7], f[8])


def scan_batches(buf: bytes | bytearray | memoryview, start: int = 0, limit: int | None = None
                 ) -> tuple[int, list[tuple[int, ...]], int, int]:
    """(status, entries, stop position, error position). OK: the end was reached; MORE: ``limit``
    entries were found and the scan may go on from the stop position."""
    return _scan(_check_batch, _batch_entry, buf, start, limit)


# ---- data blocks ----


def block_header(compression: int, raw_length: int, batch_count: int, record_count: int,
                 stream_id: int, base_offset: int, first_timestamp: int, max_timestamp: int,
                 stored: bytes | memoryview) -> tuple[int, bytes]:
    stored_size = len(stored)
    if (compression > COMPRESSION_MAX or compression < 0 or stored_size > MAX_BLOCK
            or raw_length > MAX_BLOCK or (compression == 0 and stored_size != raw_length)
            or batch_count == 0 or batch_count > raw_length // BATCH_HEADER_SIZE
            or record_count < batch_count or base_offset < 0
            or base_offset > INT64_MAX - record_count or max_timestamp < first_timestamp):
        return BAD_ARGUMENT, b""
    tail = _BLOCK_TAIL.pack(VERSION, compression, 0, stored_size, raw_length, batch_count,
                            record_count, stream_id, base_offset, first_timestamp, max_timestamp)
    h = xxhash.xxh64(tail)
    h.update(stored)
    return OK, BLOCK_MAGIC + _U64.pack(h.intdigest()) + tail


def _check_block(buf: memoryview, size: int, p: int) -> tuple[int, int, tuple[int, ...] | None]:
    if size - p < BLOCK_HEADER_SIZE:
        return TRUNCATED, p, None
    if buf[p:p + 4] != BLOCK_MAGIC:
        return BAD_MAGIC, p, None
    if buf[p + 12] != VERSION:
        return BAD_VERSION, p + 12, None
    fields = _BLOCK_TAIL.unpack_from(buf, p + 12)
    _, compression, reserved, stored, raw, batches, records, _, base_offset, first, max_ts = fields
    if stored > MAX_BLOCK:
        return BAD_LENGTH, p + 16, None
    if stored > size - p - BLOCK_HEADER_SIZE:
        return TRUNCATED, p + 16, None
    if _U64.unpack_from(buf, p + 4)[0] != xxhash.xxh64_intdigest(
            buf[p + 12:p + BLOCK_HEADER_SIZE + stored]):
        return BAD_CHECKSUM, p + 4, None
    if compression > COMPRESSION_MAX or reserved:
        return BAD_FLAGS, p + 13, None
    if raw > MAX_BLOCK or raw < BATCH_HEADER_SIZE:
        return BAD_LENGTH, p + 20, None
    if compression == 0 and stored != raw:
        return BAD_LENGTH, p + 16, None
    if batches == 0 or batches > raw // BATCH_HEADER_SIZE:
        return BAD_COUNT, p + 24, None
    if records < batches:
        return BAD_COUNT, p + 28, None
    if base_offset < 0 or base_offset > INT64_MAX - records:
        return BAD_OFFSET, p + 40, None
    if max_ts < first:
        return BAD_TIMESTAMP, p + 56, None
    return OK, BLOCK_HEADER_SIZE + stored, fields


def _block_entry(p: int, length: int, f: tuple[int, ...]) -> tuple[int, ...]:
    # position, length, compression, stored, raw, batches, records, stream_id, base_offset,
    # first_ts, max_ts
    return (p, length, f[1], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10])


def scan_blocks(buf: bytes | bytearray | memoryview, start: int = 0, limit: int | None = None
                ) -> tuple[int, list[tuple[int, ...]], int, int]:
    return _scan(_check_block, _block_entry, buf, start, limit)


__all__ = ["NAME", "NEED_SPACE", "batch_header", "block_header", "records_encode",
           "records_index", "scan_batches", "scan_blocks", "uvarint", "xxh64"]
