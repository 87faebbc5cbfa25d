"""The WAL record format (docs/wal.md) and the scan of a run of records, shared by backends."""

from __future__ import annotations

import struct

from streamlib import codec
from streamlib.records import RecordBatch
from streamlib.wal import Recovery, WalEntry, WalRecord

HEADER_SIZE = 40
MAGIC = b"SLWR"
VERSION = 1
TYPE_BATCH = 1
TYPE_PADDING = 2
# version type reserved body_length group_offset position epoch
_TAIL = struct.Struct("<BBHIIqq")
_CHECKSUM = struct.Struct("<Q")


def header(kind: int, body_length: int, position: int, epoch: int, group_start: int) -> bytes:
    """``group_start``: where the group commit this record belongs to begins (docs/wal.md)."""
    tail = _TAIL.pack(VERSION, kind, 0, body_length, position - group_start, position, epoch)
    return MAGIC + _CHECKSUM.pack(codec.xxh64(tail)) + tail


def record_size(record: WalRecord) -> int:
    return HEADER_SIZE + codec.BATCH_HEADER_SIZE + len(record.batch.payload)


def record_parts(position: int, record: WalRecord, group_start: int
                 ) -> tuple[bytes, bytes, bytes]:
    """The record's bytes in three parts (WAL header, batch header, payload), for a gathered
    write that does not copy the payload."""
    batch = record.batch
    frame_header = codec.batch_header(record.stream_id, record.base_offset, batch)
    body = codec.BATCH_HEADER_SIZE + len(batch.payload)
    return (header(TYPE_BATCH, body, position, record.epoch, group_start), frame_header,
            batch.payload)


def padding(position: int, length: int, group_start: int) -> bytes:
    """A padding record filling exactly ``length`` bytes (at least HEADER_SIZE)."""
    return (header(TYPE_PADDING, length - HEADER_SIZE, position, 0, group_start)
            + bytes(length - HEADER_SIZE))


def read_header(buf: bytes | memoryview, at: int, position: int
                ) -> tuple[int, int, int, int] | None:
    """(type, body length, epoch, group start) of a valid header at ``buf[at:]`` that claims
    ``position`` and whose body fits in ``buf``; else None."""
    if len(buf) - at < HEADER_SIZE or buf[at:at + 4] != MAGIC:
        return None
    tail = buf[at + 12:at + HEADER_SIZE]
    if _CHECKSUM.unpack_from(buf, at + 4)[0] != codec.xxh64(tail):
        return None
    version, kind, reserved, body, group_offset, claimed, epoch = _TAIL.unpack(tail)
    if (version != VERSION or reserved or claimed != position or group_offset > position
            or kind not in (TYPE_BATCH, TYPE_PADDING) or body > len(buf) - at - HEADER_SIZE):
        return None
    return kind, body, epoch, position - group_offset


def read_record(buf: bytes | memoryview, at: int, position: int
                ) -> tuple[WalRecord | None, int, int] | None:
    """The record at ``buf[at:]`` claiming ``position``: (record, or None for padding; its
    length; its group's start), or None if it is not a valid record."""
    found = read_header(buf, at, position)
    if found is None:
        return None
    kind, body, epoch, group = found
    length = HEADER_SIZE + body
    if kind == TYPE_PADDING:
        return None, length, group
    start, end = at + HEADER_SIZE, at + length
    scan = codec.scan_batches(buf, start, end, strict=False)
    if scan.error is not None or len(scan.entries) != 1:
        return None
    info = scan.entries[0]
    payload = bytes(buf[info.payload_position:info.end])
    batch = RecordBatch._trusted(payload, info.count, info.base_timestamp, info.max_timestamp,
                                 info.encoding, info.base_offset)
    return WalRecord(info.stream_id, epoch, batch), length, group


def next_valid(buf: bytes, start: int, base: int) -> int | None:
    """The offset of the first valid record at or after ``start`` (a header that claims its own
    position ``base + offset``), or None."""
    at = buf.find(MAGIC, start)
    while at >= 0:
        if read_record(buf, at, base + at) is not None:
            return at
        at = buf.find(MAGIC, at + 1)
    return None


def scan_run(buf: bytes, base: int, recovery: Recovery, *, last: bool = False
             ) -> tuple[list[WalEntry], int]:
    """The valid records of ``buf``, whose first byte is at position ``base``, skipping (and
    reporting) damaged bytes between valid records; and the offset where the valid records end:
    what follows is a tail with no valid record in it, for the caller to judge.

    ``last``: ``buf`` ends the log, so its last group may have been torn by a machine crash
    (docs/wal.md). If the last hole lies inside the last group — every record after it belongs
    to a group that began at or before it — that group was never synced, so none of it was
    acknowledged: the valid records end at the group's start, and the hole is not damage."""
    entries: list[WalEntry] = []
    groups: list[int] = []  # each entry's group start
    holes: list[tuple[int, int]] = []
    at = 0
    while at < len(buf):
        found = read_record(buf, at, base + at)
        if found is None:
            resume = next_valid(buf, at + 1, base)
            if resume is None:
                break
            holes.append((base + at, base + resume))
            at = resume
            continue
        record, length, group = found
        if record is not None:
            entries.append(WalEntry(base + at, record))
            groups.append(group)
        at += length
    if last and holes:
        hole = holes[-1][0]
        after = [g for entry, g in zip(entries, groups, strict=True) if entry.position > hole]
        if after and after[0] <= hole and all(g == after[0] for g in after):
            torn = after[0]
            holes = [h for h in holes if h[1] <= torn]
            entries = [e for e in entries if e.position < torn]
            at = torn - base
    for start, end in holes:
        recovery.drop(start, end, "damaged bytes between valid records")
    return entries, at
