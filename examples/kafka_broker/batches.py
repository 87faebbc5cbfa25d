"""Kafka record batches (format v2, "magic 2") as the broker stores and serves them.

A produced batch is kept as the bytes the client sent; this module reads its 61-byte header,
checks it (kafka-python's ``DefaultRecordBatch`` checks the CRC-32C, in C when ``crc32c`` is
installed), writes the base offset a fetch serves it at, and finds the first record at or after
a timestamp inside one batch (decoding it, decompression included, with kafka-python).

The header, big-endian (Kafka's ``DefaultRecordBatch``)::

    baseOffset int64 | batchLength int32 | partitionLeaderEpoch int32 | magic int8 | crc uint32 |
    attributes int16 | lastOffsetDelta int32 | firstTimestamp int64 | maxTimestamp int64 |
    producerId int64 | producerEpoch int16 | baseSequence int32 | recordsCount int32

The CRC covers everything from ``attributes`` on: the base offset and the leader epoch, the two
fields a broker sets, are outside it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from kafka.record.default_records import DefaultRecordBatch

from .protocol import ErrorCode

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_BYTES = HEADER.size  # 61
LOG_OVERHEAD = 12  # baseOffset + batchLength: batchLength counts the bytes after them
BASE_OFFSET = struct.Struct(">q")
TRANSACTIONAL = 0x10
CONTROL = 0x20
LOG_APPEND_TIME = 0x08
NO_PRODUCER_ID = -1
SEQUENCE_WRAP = 1 << 31


class BatchError(ValueError):
    """A produced batch the broker refuses; ``code`` is the Kafka error to answer with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class KafkaBatch:
    """One record batch as produced: its bytes and what the broker needs of its header."""

    payload: bytes
    records: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int

    @property
    def idempotent(self) -> bool:
        return self.producer_id != NO_PRODUCER_ID

    @property
    def next_sequence(self) -> int:
        """The base sequence the producer's next batch carries."""
        return (self.base_sequence + self.records) % SEQUENCE_WRAP


def split(records: bytes, *, check_crc: bool = True) -> list[KafkaBatch]:
    """The batches of a Produce request's ``records`` for one partition, checked: magic 2, the
    lengths adding up, the CRC, at least one record and offset deltas ``0 … n-1``, neither
    transactional nor control. :class:`BatchError` names the first fault."""
    batches = []
    view = memoryview(records)
    position = 0
    while position < len(view):
        if len(view) - position < HEADER_BYTES:
            raise BatchError(f"a batch header is cut short at byte {position}",
                             ErrorCode.CORRUPT_MESSAGE)
        (_, length, _, magic, _, attributes, last_delta, first_ts, max_ts, producer_id,
         producer_epoch, base_sequence, count) = HEADER.unpack_from(view, position)
        end = position + LOG_OVERHEAD + length
        if magic != 2:
            raise BatchError(f"message format {magic} is not served: only record batches v2",
                             ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT)
        if length < HEADER_BYTES - LOG_OVERHEAD or end > len(view):
            raise BatchError(f"a batch length does not fit: length=`{length}`",
                             ErrorCode.CORRUPT_MESSAGE)
        payload = bytes(view[position:end])
        if check_crc and not DefaultRecordBatch(payload).validate_crc():
            raise BatchError("a batch's CRC does not match its bytes", ErrorCode.CORRUPT_MESSAGE)
        if attributes & (TRANSACTIONAL | CONTROL):
            raise BatchError("transactional and control batches are not served",
                             ErrorCode.INVALID_RECORD)
        if count < 1 or last_delta != count - 1:
            raise BatchError(f"a batch's record count and offset deltas disagree: "
                             f"records=`{count}` last_offset_delta=`{last_delta}`",
                             ErrorCode.INVALID_RECORD)
        batches.append(KafkaBatch(payload, count, first_ts, max(first_ts, max_ts), producer_id,
                                  producer_epoch, base_sequence))
        position = end
    if not batches:
        raise BatchError("a produce request without a batch", ErrorCode.CORRUPT_MESSAGE)
    return batches


def at_offset(payload: bytes, base_offset: int) -> bytes:
    """The stored batch as a fetch serves it: ``base_offset`` in its first 8 bytes."""
    return BASE_OFFSET.pack(base_offset) + payload[BASE_OFFSET.size:]


def first_at_or_after(payload: bytes, base_offset: int,
                      timestamp: int) -> tuple[int, int] | None:
    """``(offset, timestamp)`` of the batch's first record whose timestamp is at least
    ``timestamp``, or None (the batch is decoded: decompressed if it is)."""
    for offset, record_timestamp in _timestamps(payload, base_offset):
        if record_timestamp >= timestamp:
            return offset, record_timestamp
    return None


def _timestamps(payload: bytes, base_offset: int) -> Iterator[tuple[int, int]]:
    for record in DefaultRecordBatch(at_offset(payload, base_offset)):
        yield record.offset, record.timestamp
