"""Records, batches and results: cheap, immutable, and strict about what they are given."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError, replace

import pytest

from streamlib import (
    AppendResult,
    DecodedRecord,
    FetchResult,
    PlacedBatch,
    Record,
    RecordBatch,
    codec,
)
from streamlib.records import MAX_PAYLOAD_BYTES


def test_record_fields_and_defaults() -> None:
    r = Record(b"v")
    assert (r.value, r.key, r.headers, r.timestamp) == (b"v", None, (), None)
    full = Record(bytearray(b"v"), key=memoryview(b"k"), headers={"a": b"1"}, timestamp=-5)
    assert full == Record(b"v", b"k", (("a", b"1"),), -5)
    assert type(full.value) is bytes and type(full.key) is bytes
    assert Record(b"v", headers=[["n", b"x"]]).headers == (("n", b"x"),)
    assert Record(b"v", headers=None).headers == ()  # type: ignore[arg-type]


def test_record_is_immutable_hashable_and_picklable() -> None:
    r = Record(b"v", key=b"k", headers=[("h", b"1")], timestamp=3)
    with pytest.raises(AttributeError):
        r.value = b"x"  # type: ignore[misc]
    assert hash(r) == hash(Record(b"v", key=b"k", headers=[("h", b"1")], timestamp=3))
    assert pickle.loads(pickle.dumps(r)) == r
    assert "key=b'k'" in repr(r)


@pytest.mark.parametrize("kwargs, error, text", [
    ({"value": "text"}, TypeError, "record value must be bytes"),
    ({"value": None}, TypeError, "record value"),
    ({"value": b"v", "key": "k"}, TypeError, "record key"),
    ({"value": b"v", "headers": "abc"}, TypeError, "headers must be"),
    ({"value": b"v", "headers": [("a",)]}, TypeError, "pair"),
    ({"value": b"v", "headers": [(b"a", b"v")]}, TypeError, "header name must be str"),
    ({"value": b"v", "headers": [("a", "v")]}, TypeError, "header `a` value"),
    ({"value": b"v", "headers": [("\ud800", b"v")]}, ValueError, "UTF-8"),
    ({"value": b"v", "timestamp": 1.5}, TypeError, "timestamp must be an int"),
    ({"value": b"v", "timestamp": True}, TypeError, "timestamp must be an int"),
    ({"value": b"v", "timestamp": 2**63}, ValueError, r"timestamp must be in \[-9223372"),
])
def test_record_rejects_bad_fields(kwargs: dict, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        Record(**kwargs)


def test_opaque_batch() -> None:
    batch = RecordBatch(b"payload", 5, base_timestamp=10)
    assert (batch.count, batch.base_timestamp, batch.max_timestamp) == (5, 10, 10)
    assert batch.encoding == "opaque" and batch.base_offset is None and batch.size == 7
    placed = batch.with_offset(20)
    assert placed.next_offset == 25 and placed.payload is batch.payload
    with pytest.raises(ValueError, match="no base_offset"):
        _ = batch.next_offset
    with pytest.raises(FrozenInstanceError):
        batch.count = 3  # type: ignore[misc]
    for bad, error in ((-5, ValueError), ("x", TypeError), (2**63 - 5, ValueError)):
        with pytest.raises(error, match="base_offset"):
            batch.with_offset(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("args, kwargs, error, text", [
    (("text", 1), {}, TypeError, "payload must be bytes"),
    ((b"p", 0), {}, ValueError, "count must be in"),
    ((b"p", -1), {}, ValueError, "count must be in"),
    ((b"p", 2**31), {}, ValueError, "count must be in"),
    ((b"p", 1.0), {}, TypeError, "count must be an int"),
    ((b"p", True), {}, TypeError, "count must be an int"),
    ((b"p", 2), {"base_offset": 2**63 - 2}, ValueError, "base_offset must be in"),
    ((b"p", 1), {"base_offset": "3"}, TypeError, "base_offset must be an int"),
    ((b"p" * 6, 1), {"encoding": "records"}, ValueError, "needs the base_timestamp"),
    ((b"p", 1), {"base_timestamp": 5, "max_timestamp": 4}, ValueError, "below base"),
    ((b"p", 1), {"encoding": "json"}, ValueError, "encoding must be"),
    ((b"p", 1), {"base_offset": -1}, ValueError, "base_offset must be in"),
    ((b"x" * (MAX_PAYLOAD_BYTES + 1), 1), {}, ValueError, "exceeds the format's limit"),
])
def test_batch_rejects_bad_arguments(args: tuple, kwargs: dict, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        RecordBatch(*args, **kwargs)


def test_records_batch_built_by_hand_is_checked_against_its_payload() -> None:
    good = RecordBatch.from_records([Record(b"a"), Record(b"b")], timestamp=9)
    again = RecordBatch(good.payload, 2, 9, 9, encoding="records")
    assert again == good
    with pytest.raises(ValueError, match="does not hold `3` valid records"):
        RecordBatch(good.payload, 3, 9, 9, encoding="records")
    with pytest.raises(ValueError, match="does not hold `1` valid records"):
        RecordBatch(good.payload, 1, 9, 9, encoding="records")
    with pytest.raises(ValueError, match="max_timestamp does not match"):
        RecordBatch(good.payload, 2, 9, 10, encoding="records")
    with pytest.raises(ValueError, match="valid records"):
        RecordBatch(b"\x00" * 12, 2, 9, 9, encoding="records")


def test_from_records_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        RecordBatch.from_records([])
    with pytest.raises(TypeError, match=r"records\[1\] must be a streamlib\.Record, not bytes"):
        RecordBatch.from_records([Record(b"a"), b"b"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"sequence of streamlib\.Record"):
        RecordBatch.from_records(b"abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timestamp must be an int"):
        RecordBatch.from_records([Record(b"a")], timestamp="now")  # type: ignore[arg-type]
    # a generator works as well as a list
    assert RecordBatch.from_records(Record(bytes([i])) for i in range(3)).count == 3


def test_framing_rejects_bad_stream_and_offset() -> None:
    batch = RecordBatch(b"p", 2, base_timestamp=0)
    with pytest.raises(ValueError, match="stream_id must be in"):
        codec.encode_batch(-1, 0, batch)
    with pytest.raises(ValueError, match="stream_id must be in"):
        codec.encode_batch(2**64, 0, batch)
    with pytest.raises(TypeError, match="stream_id must be an int"):
        codec.encode_batch("7", 0, batch)  # type: ignore[arg-type]
    for offset in (-1, 2**63 - 1, 2**64):
        with pytest.raises(ValueError, match="base_offset must be in"):
            codec.encode_batch(1, offset, batch)
    with pytest.raises(ValueError, match="placed elsewhere"):
        codec.encode_batch(1, 5, batch.with_offset(4))
    with pytest.raises(TypeError, match="must be a RecordBatch"):
        codec.encode_batch(1, 0, b"p")  # type: ignore[arg-type]


def test_block_rejects_bad_arguments() -> None:
    a = RecordBatch(b"p", 2, base_timestamp=0)
    with pytest.raises(ValueError, match="at least one batch"):
        codec.encode_block(1, [])
    with pytest.raises(ValueError, match="contiguous"):
        codec.encode_block(1, [a])  # no base_offset
    with pytest.raises(ValueError, match="contiguous"):
        codec.encode_block(1, [a.with_offset(0), a.with_offset(3)])
    with pytest.raises(ValueError, match="compression must be one of"):
        codec.encode_block(1, [a.with_offset(0)], compression="gzip")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of RecordBatch"):
        codec.encode_block(1, "abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"batches\[0\] must be a RecordBatch"):
        codec.encode_block(1, [b"x"])  # type: ignore[list-item]
    for level, error in ((0, ValueError), (23, ValueError), (True, TypeError)):
        with pytest.raises(error, match="zstd_level"):
            codec.encode_block(1, [a.with_offset(0)], compression="zstd", zstd_level=level)


@pytest.mark.parametrize("call, error, text", [
    (lambda: codec.scan_batches(b"x" * 10, 11), ValueError, "start must be in"),
    (lambda: codec.scan_batches(b"x" * 10, -1), ValueError, "start must be in"),
    (lambda: codec.scan_batches(b"x" * 10, 5, 3), ValueError, "start must be in"),
    (lambda: codec.scan_batches(b"x" * 10, 0, -1), ValueError, "end must be in"),
    (lambda: codec.scan_blocks(b"x" * 10, False), TypeError, "start must be an int"),
    (lambda: codec.scan_batches("text"), TypeError, "bytes-like"),
    (lambda: codec.decode_batch(b"", 2**64), ValueError, "start must be in"),
    (lambda: codec.decode_records(b"\x00" * 6, 1, 2**64), ValueError, "base_timestamp"),
    (lambda: codec.decode_records(b"\x00" * 6, 1, 0, position=-10), ValueError, "position"),
    (lambda: codec.xxh64(b"a", -1), ValueError, "seed"),
])
def test_bad_arguments_are_caller_errors_not_damage(call, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        call()


def test_decoded_values_are_bytes_whatever_the_payload_type() -> None:
    batch = RecordBatch.from_records([Record(b"v", key=b"k", headers=[("h", b"x")])],
                                     timestamp=1)
    for payload in (bytearray(batch.payload), memoryview(batch.payload)):
        (record,) = codec.decode_records(payload, 1, 1)
        assert type(record.value) is bytes and type(record.headers[0][1]) is bytes
        assert hash(record) == hash(Record(b"v", key=b"k", headers=[("h", b"x")], timestamp=1))


def test_results() -> None:
    assert AppendResult(10, 5).next_offset == 15
    batch = RecordBatch.from_records([Record(b"x"), Record(b"y")], timestamp=1).with_offset(40)
    opaque = RecordBatch(b"o", 1, base_timestamp=1).with_offset(42)
    result = FetchResult([batch], next_fetch_offset=42, start_offset=0, end_offset=43)
    assert len(result) == 1 and list(result) == [batch] and isinstance(result.batches, tuple)
    assert list(result.records()) == [(40, Record(b"x", timestamp=1)),
                                      (41, Record(b"y", timestamp=1))]
    with pytest.raises(TypeError, match="opaque"):
        FetchResult((batch, opaque), 43, 0, 43).records()  # before yielding anything
    with pytest.raises(ValueError, match="base_offset"):
        FetchResult((RecordBatch(b"o", 1, base_timestamp=1),), 43, 0, 43)


def test_batches_read_back_are_placed_batches_equal_to_their_record_batch() -> None:
    batch = RecordBatch(b"payload", 2, base_timestamp=3, max_timestamp=4)
    placed = batch.with_offset(10)
    assert type(placed) is PlacedBatch and placed.base_offset == 10
    by_hand = RecordBatch(b"payload", 2, base_timestamp=3, max_timestamp=4, base_offset=10)
    assert placed == by_hand and by_hand == placed and hash(placed) == hash(by_hand)
    assert placed != batch and placed != batch.with_offset(11)
    assert placed == PlacedBatch(b"payload", 2, 3, 4, base_offset=10)
    for copy in (pickle.loads(pickle.dumps(placed)), replace(placed, count=3)):
        assert type(copy) is PlacedBatch and copy.base_offset == 10
    with pytest.raises(TypeError, match="base_offset"):
        replace(placed, base_offset=None)
    with pytest.raises(TypeError, match="base_offset"):
        PlacedBatch(b"payload", 2)  # type: ignore[call-arg]  # no offset, on purpose
    (_, decoded), = codec.read_batches(codec.encode_batch(1, 10, batch))
    assert type(decoded) is PlacedBatch and decoded == placed
    _, blocked = codec.decode_block(codec.encode_block(1, [placed]))
    assert [type(b) for b in blocked] == [PlacedBatch] and blocked == [placed]


def test_a_fetch_result_built_by_hand_holds_placed_batches() -> None:
    by_hand = RecordBatch(b"o", 1, base_timestamp=1, base_offset=5)
    result = FetchResult(iter([by_hand]), 6, 0, 6)  # type: ignore[arg-type]  # as a user may
    assert [type(b) for b in result] == [PlacedBatch] and list(result) == [by_hand]
    placed = (by_hand.with_offset(5),)
    assert FetchResult(placed, 6, 0, 6).batches is placed  # nothing copied on the fetch path


def test_decoded_records_always_have_their_timestamp() -> None:
    records = RecordBatch.from_records([Record(b"a"), Record(b"b", timestamp=9)],
                                       timestamp=7).records()
    assert [type(r) for r in records] == [DecodedRecord, DecodedRecord]
    assert [r.timestamp for r in records] == [7, 9]
    assert records == [Record(b"a", timestamp=7), Record(b"b", timestamp=9)]
    assert hash(records[0]) == hash(Record(b"a", timestamp=7))
    again = pickle.loads(pickle.dumps(records[0]))
    assert type(again) is DecodedRecord and again == records[0]
    with pytest.raises(TypeError, match="timestamp"):
        DecodedRecord(b"a")
    # read back and appended again, as they are
    assert RecordBatch.from_records(records).records() == records
    with pytest.raises(TypeError, match=r"records\[1\] must be a streamlib.Record"):
        RecordBatch.from_records([records[0], b"not a record"])  # type: ignore[list-item]
