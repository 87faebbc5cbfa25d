"""The inputs behind the golden files. Changing one changes the bytes: that is a format change
(docs/format.md), to be made with a new version, never by regenerating the files."""

from __future__ import annotations

from streamlib import Record, RecordBatch

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

RECORDS = [
    Record(b'{"event": "signup", "user": "ada"}', key=b"user-ada", timestamp=1_700_000_000_000),
    Record(b"", timestamp=1_699_999_999_000),  # no key, empty value, earlier than the base
    Record(b"value with empty key", key=b"", headers=[("trace", b"7f3a"), ("ключ", b""),
                                                      ("trace", b"second")],
           timestamp=1_700_000_000_250),
    Record(bytes(range(256)), key=b"\x00\xff", timestamp=INT64_MAX),
    Record(b"extreme", headers={"名前": b"\x00\x01"}, timestamp=INT64_MIN),
]
STREAM_ID = 7
BASE_OFFSET = 1000


def records_batch() -> RecordBatch:
    return RecordBatch.from_records(RECORDS, timestamp=0)


def opaque_batch() -> RecordBatch:
    return RecordBatch(b"\x01opaque broker format\x02" * 3, 12, base_timestamp=1_700_000_100_000,
                       max_timestamp=1_700_000_100_999)


def block_batches() -> list[RecordBatch]:
    first = records_batch().with_offset(BASE_OFFSET)
    text = RecordBatch.from_records([Record(b'{"n": %d, "pad": "%s"}' % (i, b"x" * 40))
                                     for i in range(20)], timestamp=1_700_000_200_000)
    second = text.with_offset(first.next_offset)
    return [first, second, opaque_batch().with_offset(second.next_offset)]
