"""The C codec and its pure-Python twin agree: same bytes out, and on damaged input the same
status, the same position and the same partial results."""

from __future__ import annotations

import struct

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    INT64_MAX,
    INT64_MIN,
    record_lists,
    reseal,
    small_record_lists,
    timestamps,
)

from streamlib import Record, RecordBatch, codec
from streamlib.codec import _python

_native = pytest.importorskip("streamlib.codec._native", reason="C codec not built")
BACKENDS = (_python, _native)
ONCE = pytest.mark.once
"""For a test that compares the two backends themselves, whichever one the facade uses: the C
pass runs it (conftest.py). Those that also decode through the facade run in both passes."""


def both(name: str, *args: object) -> object:
    results = [getattr(b, name)(*args) for b in BACKENDS]
    assert results[0] == results[1], f"{name} differs"
    return results[0]


@ONCE
@given(record_lists, timestamps)
def test_encode_gives_equal_bytes(records: list[Record], default_ts: int) -> None:
    ts, base, _top, *columns = codec._columns(records, default_ts)
    status, payload = both("records_encode", len(records), ts, base, *columns)
    assert status == 0 and len(payload) > 0


@ONCE
@given(small_record_lists, st.data())
def test_index_agrees_on_damaged_payloads(records: list[Record], data: st.DataObject) -> None:
    batch = RecordBatch.from_records(records, timestamp=5)
    payload = bytearray(batch.payload)
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    payload = bytes(payload[:cut]) + data.draw(st.binary(max_size=4))
    count = data.draw(st.sampled_from([batch.count, batch.count + 1, max(1, batch.count - 1)]))
    if count <= len(payload) // 6:
        both("records_index", payload, count, batch.base_timestamp)


@ONCE
@given(st.binary(min_size=6, max_size=200), st.integers(1, 30), timestamps)
def test_index_agrees_on_random_bytes(payload: bytes, count: int, base: int) -> None:
    if count <= len(payload) // 6:
        both("records_index", payload, count, base)


@ONCE
@given(st.integers(0, 3), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
       st.integers(-5, INT64_MAX), timestamps, timestamps, st.binary(max_size=100))
def test_batch_headers_agree(flags: int, count: int, stream_id: int, base_offset: int,
                             base_ts: int, max_ts: int, payload: bytes) -> None:
    both("batch_header", flags, count, stream_id, base_offset, base_ts, max_ts, payload)


@ONCE
@given(st.lists(small_record_lists, min_size=1, max_size=5), st.data())
def test_batch_scans_agree_on_damage(batches: list[list[Record]], data: st.DataObject) -> None:
    buf = bytearray()
    starts = []
    for i, records in enumerate(batches):
        starts.append(len(buf))
        buf += codec.encode_batch(1, i * 100, RecordBatch.from_records(records, timestamp=0))
    victim = data.draw(st.sampled_from(starts))
    at = data.draw(st.integers(victim, len(buf) - 1))
    buf[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        reseal(buf, victim, victim + 56 + struct.unpack_from("<I", buf, victim + 16)[0])
    buf = buf[:data.draw(st.integers(0, len(buf)))]
    limit = data.draw(st.none() | st.integers(1, 4))
    both("scan_batches", bytes(buf), data.draw(st.sampled_from([0, *starts])), limit)


@ONCE
@given(st.sampled_from([0, 1, 2, 3]), st.integers(0, 2**28), st.integers(0, 300),
       st.integers(0, 400), st.integers(0, 2**64 - 1), st.integers(-1, INT64_MAX),
       timestamps, timestamps, st.binary(max_size=200))
def test_block_headers_agree(compression: int, raw: int, batches: int, records: int,
                             stream_id: int, base: int, first: int, top: int,
                             stored: bytes) -> None:
    if compression == 0:
        raw = len(stored) if raw % 2 else raw
    both("block_header", compression, raw, batches, records, stream_id, base, first, top, stored)


@ONCE
@given(st.lists(small_record_lists, min_size=1, max_size=4),
       st.sampled_from(["none", "lz4", "zstd"]), st.data())
def test_block_scans_agree_on_damage(blocks: list[list[Record]], compression: str,
                                     data: st.DataObject) -> None:
    buf = bytearray()
    starts = []
    for i, records in enumerate(blocks):
        starts.append(len(buf))
        batch = RecordBatch.from_records(records, timestamp=0).with_offset(i * 1000)
        buf += codec.encode_block(i, [batch], compression=compression)
    victim = data.draw(st.sampled_from(starts))
    at = data.draw(st.integers(victim, len(buf) - 1))
    buf[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        reseal(buf, victim, victim + 64 + struct.unpack_from("<I", buf, victim + 16)[0])
    buf = buf[:data.draw(st.integers(0, len(buf)))]
    both("scan_blocks", bytes(buf), 0, data.draw(st.none() | st.integers(1, 3)))


@ONCE
def test_extreme_timestamps_encode_equally() -> None:
    records = [Record(b"a", timestamp=INT64_MAX), Record(b"b", timestamp=INT64_MIN),
               Record(b"c", timestamp=0)]
    ts, base, _top, *columns = codec._columns(records, 0)
    _, payload = both("records_encode", 3, ts, base, *columns)
    result = both("records_index", payload, 3, base)
    assert result[0] == 0 and list(result[2][0::7]) == [INT64_MAX, INT64_MIN, 0]


@ONCE
@given(st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_xxh64_agrees(data: bytes, seed: int) -> None:
    assert both("xxh64", data, seed) == xxhash.xxh64_intdigest(data, seed)


@ONCE
@pytest.mark.parametrize("args", [
    (2, None, 0, None, b"", [0], b"", None, None, b""),               # value lengths too short
    (3, [], 0, None, b"", [0, 0, 0], b"", None, None, b""),           # timestamps too short
    (1, None, 0, None, b"", [0], b"", [1], [], b""),                  # header lengths missing
    (2, None, 0, [0], b"", [0, 0], b"", None, None, b""),             # key lengths too short
    (1, None, 0, None, b"", [5], b"abc", None, None, b""),            # lengths past the data
    (1, None, 0, None, b"", [1], b"ab", None, None, b""),             # data left over
])
def test_inconsistent_columns_are_refused_not_read_past(args: tuple) -> None:
    status, payload = both("records_encode", *args)
    assert status == 15 and payload == b""  # BAD_ARGUMENT


@ONCE
def test_unsigned_stream_ids_and_writer_refusals_agree() -> None:
    frame = codec.encode_batch(2**64 - 1, 0, RecordBatch(b"p", 1, base_timestamp=0))
    assert both("scan_batches", frame, 0, None)[1][0][4] == 2**64 - 1
    assert both("batch_header", 1, 10, 0, 0, 0, 0, b"")[0] == 15  # 10 records in 0 bytes
    assert both("records_index", b"\x00" * 12, 3, 0)[:2] == (7, 0)  # BAD_COUNT before anything


@ONCE
def test_memoryviews_of_any_format_are_measured_in_bytes() -> None:
    from array import array

    view = memoryview(array("q", [1, 2, 3]))
    assert both("xxh64", view, 0) == xxhash.xxh64_intdigest(bytes(view))


def test_a_header_max_timestamp_the_records_contradict_is_damage() -> None:
    batch = RecordBatch.from_records([Record(b"a", timestamp=1), Record(b"b", timestamp=5)])
    lying = RecordBatch._trusted(batch.payload, 2, 1, 9, "records")
    with pytest.raises(codec.CorruptDataError, match="largest timestamp"):
        lying.records()


@pytest.mark.parametrize("shape", ["many records", "many headers on one record",
                                   "headers spread over many records"])
def test_span_arrays_that_grow_while_indexing_agree(shape: str) -> None:
    # The C backend indexes into arrays that start small and grow as records prove valid; both
    # backends give the same spans however often they grow, and report damage found after.
    if shape == "many records":
        records = [Record(b"v%d" % i, key=b"k" if i % 3 else None) for i in range(5000)]
    elif shape == "many headers on one record":
        records = [Record(b"a", headers=[(f"h{i}", b"x") for i in range(3000)]),
                   *(Record(b"b") for _ in range(10))]
    else:
        records = [Record(b"c", headers=[("n", b"%d" % i)] * (i % 5)) for i in range(4000)]
    batch = RecordBatch.from_records(records, timestamp=7)
    result = both("records_index", batch.payload, batch.count, batch.base_timestamp)
    assert result[0] == 0 and len(result[2]) == 7 * batch.count
    assert len(result[3]) == 4 * sum(len(r.headers) for r in records)
    assert batch.records() == [Record(r.value, r.key, r.headers, 7) for r in records]
    damaged = batch.payload + b"\x00"  # a byte after the last record
    status, at, *_ = both("records_index", damaged, batch.count, batch.base_timestamp)
    assert (status, at) == (8, len(batch.payload))  # BAD_LENGTH
