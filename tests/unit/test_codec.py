"""Round trips through the codec facade, on whichever backend this run uses."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import record_lists, small_record_lists, timestamps

from streamlib import CorruptDataError, Record, RecordBatch, codec
from streamlib.records import now_ms


def filled(records: list[Record], default_ts: int) -> list[Record]:
    """What decoding must give back: every record with a timestamp."""
    return [Record(r.value, r.key, r.headers, default_ts if r.timestamp is None else r.timestamp)
            for r in records]


@given(record_lists, timestamps)
def test_records_round_trip(records: list[Record], default_ts: int) -> None:
    batch = RecordBatch.from_records(records, timestamp=default_ts)
    expected = filled(records, default_ts)
    assert batch.encoding == "records"
    assert batch.count == len(records)
    assert batch.base_timestamp == expected[0].timestamp
    assert batch.max_timestamp == max(r.timestamp for r in expected)
    assert batch.records() == expected


def test_missing_and_empty_keys_differ() -> None:
    batch = RecordBatch.from_records([Record(b"a"), Record(b"b", key=b""), Record(b"c", key=b"k")],
                                     timestamp=1)
    assert [r.key for r in batch.records()] == [None, b"", b"k"]


def test_records_without_timestamp_take_the_batch_time() -> None:
    before = now_ms()
    batch = RecordBatch.from_records([Record(b"x"), Record(b"y", timestamp=5)])
    first, second = batch.records()
    assert second.timestamp == 5
    assert before <= first.timestamp == batch.base_timestamp <= now_ms()


def test_one_mebibyte_value_and_empty_value() -> None:
    big = bytes(range(256)) * 4096
    batch = RecordBatch.from_records([Record(big), Record(b"")], timestamp=0)
    assert [r.value for r in batch.records()] == [big, b""]


def test_many_headers_with_non_ascii_names_keep_order_and_repeats() -> None:
    pairs = [("ключ", b"1"), ("名前", b""), ("ключ", b"2"), ("", b"\x00" * 3)] * 50
    (record,) = RecordBatch.from_records([Record(b"v", headers=pairs)], timestamp=0).records()
    assert record.headers == tuple(pairs)


@given(st.lists(small_record_lists, min_size=1, max_size=8), st.integers(0, 2**40),
       st.integers(0, 2**64 - 1))
def test_framed_batches_scan_and_decode(batches: list[list[Record]], base: int,
                                        stream_id: int) -> None:
    frames, offset, placed = [], base, []
    for records in batches:
        batch = RecordBatch.from_records(records, timestamp=7)
        frames.append(codec.encode_batch(stream_id, offset, batch))
        placed.append(batch.with_offset(offset))
        offset += batch.count
    buf = b"".join(frames)
    scan = codec.scan_batches(buf)
    assert scan.error is None and scan.end == len(buf)
    assert [(i.stream_id, i.base_offset, i.count) for i in scan.entries] == [
        (stream_id, b.base_offset, b.count) for b in placed]
    assert [b for _, b in codec.read_batches(buf)] == placed
    info, first = codec.decode_batch(buf, 0)
    assert first == placed[0] and info.length == len(frames[0])


def test_opaque_batch_round_trip() -> None:
    batch = RecordBatch(b"my own format", 12, base_timestamp=10, max_timestamp=20)
    info, back = codec.decode_batch(codec.encode_batch(3, 100, batch))
    assert info.encoding == "opaque" and info.next_offset == 112
    assert back == batch.with_offset(100)
    with pytest.raises(TypeError, match="opaque"):
        back.records()


def test_batch_header_plus_payload_is_the_frame() -> None:
    batch = RecordBatch.from_records([Record(b"abc")], timestamp=1)
    assert codec.batch_header(1, 2, batch) + batch.payload == codec.encode_batch(1, 2, batch)


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
@given(batches=st.lists(small_record_lists, min_size=1, max_size=6), base=st.integers(0, 2**40))
def test_block_round_trip(compression: str, batches: list[list[Record]], base: int) -> None:
    placed, offset = [], base
    for records in batches:
        batch = RecordBatch.from_records(records, timestamp=3).with_offset(offset)
        placed.append(batch)
        offset += batch.count
    block = codec.encode_block(9, placed, compression=compression)
    info, back = codec.decode_block(block)
    assert back == placed
    assert (info.stream_id, info.base_offset, info.next_offset) == (9, base, offset)
    assert info.batch_count == len(placed)
    assert info.compression in ("none", compression)


def test_compressible_block_is_compressed_and_incompressible_is_not() -> None:
    text = RecordBatch.from_records([Record(b'{"user": "alice", "n": 1}' * 40)] * 20,
                                    timestamp=0).with_offset(0)
    for compression in ("lz4", "zstd"):
        block = codec.encode_block(1, [text], compression=compression)
        info = codec.scan_blocks(block).entries[0]
        assert info.compression == compression and info.stored_length < info.raw_length / 4
    noise = RecordBatch(os.urandom(4096), 1, base_timestamp=0).with_offset(0)
    info = codec.scan_blocks(codec.encode_block(1, [noise], compression="zstd")).entries[0]
    assert info.compression == "none" and info.stored_length == info.raw_length


def test_scan_of_several_blocks_and_a_torn_tail() -> None:
    blocks = [codec.encode_block(5, [RecordBatch.from_records([Record(b"x" * n)], timestamp=0)
                                     .with_offset(i)], compression="lz4") for i, n in
              enumerate((10, 2000, 50))]
    buf = b"".join(blocks)
    assert [i.base_offset for i in codec.scan_blocks(buf).entries] == [0, 1, 2]
    torn = codec.scan_blocks(buf[:-1], strict=False)
    assert len(torn.entries) == 2 and torn.end == len(blocks[0]) + len(blocks[1])
    assert isinstance(torn.error, CorruptDataError)
    with pytest.raises(CorruptDataError, match="truncated"):
        codec.scan_blocks(buf[:-1])


def test_scan_respects_start_and_end() -> None:
    frames = [codec.encode_batch(1, i, RecordBatch(b"p" * i, 1, base_timestamp=0))
              for i in range(5)]
    buf = b"".join(frames)
    start = len(frames[0])
    end = start + len(frames[1]) + len(frames[2])
    scan = codec.scan_batches(buf, start, end)
    assert [i.base_offset for i in scan.entries] == [1, 2] and scan.end == end
    assert codec.scan_batches(bytearray(buf)).end == len(buf)
    assert codec.scan_batches(memoryview(buf)[start:]).entries[0].base_offset == 1


def test_xxh64_matches_the_reference() -> None:
    import xxhash

    for data in (b"", b"a", b"x" * 31, b"y" * 32, bytes(range(256)) * 5):
        assert codec.xxh64(data) == xxhash.xxh64_intdigest(data)
        assert codec.xxh64(data, 99) == xxhash.xxh64_intdigest(data, 99)


def test_scan_and_decode_from_a_scan_position() -> None:
    frames = [codec.encode_batch(2, i * 10, RecordBatch(b"z", 10, base_timestamp=i))
              for i in range(300)]  # more than the C scanner's chunk of 256
    buf = b"".join(frames)
    scan = codec.scan_batches(buf)
    assert len(scan.entries) == 300
    info = scan.entries[299]
    assert codec.decode_batch(buf, info.position)[1].base_offset == 2990


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=50), timestamps)
def test_values_alone_encode_as_their_records_do(values: list[bytes], ts: int) -> None:
    """``encode_values`` (an append of plain bytes) gives the bytes ``encode_records`` gives
    for ``Record(v)`` of each, without building the Records."""
    batch = codec.encode_values(values, timestamp=ts)
    assert batch == codec.encode_records([Record(v) for v in values], timestamp=ts)
    assert [r.value for r in batch.records()] == values


def test_values_alone_are_refused_as_records_are() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        codec.encode_values([])
    with pytest.raises(ValueError, match="timestamp"):
        codec.encode_values([b"x"], timestamp=2**63)
