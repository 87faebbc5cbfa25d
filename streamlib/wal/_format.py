"""The WAL record format (docs/wal.md) and the scan of a run of records, shared by backends."""

from __future__ import annotations

import struct

from streamlib import codec
from streamlib.records import PlacedBatch
from streamlib.wal import Recovery, WalEntry, WalRecord

HEADER_SIZE = 40
MAGIC = b"SLWR"
VERSION = 1
TYPE_BATCH = 1
TYPE_PADDING = 2
TYPE_END = 3
# version type reserved body_length group_offset position epoch: the epoch unsigned, as
# WalRecord's (any in [0, 2^64)); the position signed, as positions are below 2^63
_TAIL = struct.Struct("<BBHIIqQ")
_CHECKSUM = struct.Struct("<Q")
_POSITION = struct.Struct("<q")  # the header's position field, at offset 24
POSITION_LIMIT = 1 << 63
"""Positions are below it: the header's position field is a signed 64-bit integer."""
_PAYLOAD_LENGTH = struct.Struct("<I")  # a batch header's payload_length, at its offset 16


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


def end_marker(position: int, group_start: int) -> bytes:
    """The end marker a file WAL group write puts after its records (docs/wal.md): a header of
    no body at ``position``, the group's end, overwritten by the next group's first record."""
    return header(TYPE_END, 0, position, 0, group_start)


def read_header(buf: bytes | memoryview, at: int, position: int
                ) -> tuple[int, int, int, int] | None:
    """(type, body length, epoch, group start) of a valid header at ``buf[at:]`` that claims
    ``position`` and whose body fits in ``buf``; else None."""
    if len(buf) - at < HEADER_SIZE or buf[at:at + 4] != MAGIC:
        return None
    # The position first: it costs no hash, and stale bytes and stray patterns fail it.
    if _POSITION.unpack_from(buf, at + 24)[0] != position:
        return None
    tail = buf[at + 12:at + HEADER_SIZE]
    if _CHECKSUM.unpack_from(buf, at + 4)[0] != codec.xxh64(tail):
        return None
    version, kind, reserved, body, group_offset, claimed, epoch = _TAIL.unpack(tail)
    if (version != VERSION or reserved or claimed != position or group_offset > position
            or kind not in (TYPE_BATCH, TYPE_PADDING, TYPE_END) or (kind == TYPE_END and body)
            or body > len(buf) - at - HEADER_SIZE):
        return None
    return kind, body, epoch, position - group_offset


def examine(buf: bytes | memoryview, at: int, position: int, *, ends: bool = False
            ) -> tuple[tuple[WalRecord | None, int, int] | None, int]:
    """What a scan finds at ``buf[at:]``, where ``position`` is expected: the record as
    :func:`read_record` gives it (or None), and how many bytes the scan may move on by.

    An end marker is found as ``(None, 0, group start)`` when ``ends`` is set (the log ends
    there), and is not a valid record otherwise: only the file WAL writes them.

    That is the record's length when its header is valid, even if its body is not: the header's
    checksum vouches for the length, so no record of this log starts inside the damaged one, and
    skipping it whole hashes each byte at most once — the scan stays linear in the bytes
    scanned, whatever they hold. With no valid header, it is 1: the next byte may start one."""
    found = read_header(buf, at, position)
    if found is None:
        return None, 1
    kind, body, epoch, group = found
    length = HEADER_SIZE + body
    if kind == TYPE_END:
        return ((None, 0, group), length) if ends else (None, length)
    if kind == TYPE_PADDING:
        return (None, length, group), length
    start, end = at + HEADER_SIZE, at + length
    # The body is one batch exactly, so its header must say that it ends where the body does.
    # Checked first: the scan below then checks one batch, never a chain of them (which a
    # crafted body could hold, to be walked and hashed batch by batch at every candidate).
    if (body < codec.BATCH_HEADER_SIZE or _PAYLOAD_LENGTH.unpack_from(buf, start + 16)[0]
            != body - codec.BATCH_HEADER_SIZE):
        return None, length
    scan = codec.scan_batches(buf, start, end, strict=False)
    if scan.error is not None or len(scan.entries) != 1:
        return None, length
    info = scan.entries[0]
    payload = bytes(buf[info.payload_position:info.end])
    batch = PlacedBatch._trusted(payload, info.count, info.base_timestamp, info.max_timestamp,
                                 info.encoding, info.base_offset)
    return (WalRecord(info.stream_id, epoch, batch), length, group), length


def read_record(buf: bytes | memoryview, at: int, position: int
                ) -> tuple[WalRecord | None, int, int] | None:
    """The record at ``buf[at:]`` claiming ``position``: (record, or None for padding; its
    length; its group's start), or None if it is not a valid record."""
    return examine(buf, at, position)[0]


def scan_run(buf: bytes, base: int, recovery: Recovery, *, last: bool = False,
             groups_from: int | None = None, ends: bool = False) -> tuple[list[WalEntry], int]:
    """The valid records of ``buf``, whose first byte is at position ``base``, skipping (and
    reporting) damaged bytes between valid records; and the offset where the valid records end:
    what follows is a tail with no valid record in it, for the caller to judge.

    ``groups_from``: where the segment or object that ``buf`` is read from begins (default:
    ``base``). Its groups all begin there or after (the writer starts one only between
    groups), so a record whose header says its group began before it is damage.

    ``last``: ``buf`` ends the log, so its last group may have been torn by a machine crash
    (docs/wal.md). If the last hole lies inside the last group — every record after it belongs
    to a group that began at or before it, in ``buf`` — that group was never synced, so none of
    it was acknowledged: the valid records end at the group's start, and the hole is not
    damage.

    ``ends``: the run may hold an end marker (the file WAL's, docs/wal.md): the scan stops at
    one valid at its own position — nothing after it was ever synced — and returns its offset
    (:func:`ends_at` tells the caller that it stopped there). It belongs to its group as the
    group's records do: a hole before it inside its group makes that group torn.
    Without ``ends``, an end marker is invalid bytes."""
    entries: list[WalEntry] = []
    groups: list[int] = []  # each entry's group start
    holes: list[tuple[int, int]] = []
    first_group = base if groups_from is None else groups_from
    at = 0
    damaged: int | None = None  # where the invalid bytes being skipped began
    end_group: int | None = None  # the group of the end marker the scan stopped at
    while at < len(buf):
        found, step = examine(buf, at, base + at, ends=ends)
        if found is not None and found[2] < first_group:
            found = None  # damage at its own position, skipped whole as its header allows
        if found is None:
            if damaged is None:
                damaged = at
            at = buf.find(MAGIC, at + step)  # a record starts with its magic
            if at < 0:
                at = damaged
                break
            continue
        if damaged is not None:
            holes.append((base + damaged, base + at))
            damaged = None
        record, length, group = found
        if not length:  # an end marker: the log ends here
            end_group = group
            break
        if record is not None:
            entries.append(WalEntry(base + at, record))
            groups.append(group)
        at += length
    if last and holes:
        hole = holes[-1][0]
        after = [g for entry, g in zip(entries, groups, strict=True) if entry.position > hole]
        if end_group is not None and base + at > hole:
            after.append(end_group)
        if after and base <= after[0] <= hole and all(g == after[0] for g in after):
            torn = after[0]
            holes = [h for h in holes if h[1] <= torn]
            entries = [e for e in entries if e.position < torn]
            at = torn - base
    for start, end in holes:
        recovery.drop(start, end, "damaged bytes between valid records")
    return entries, at


def ends_at(buf: bytes | memoryview, at: int, position: int) -> bool:
    """Whether ``buf[at:]`` holds an end marker valid at ``position``."""
    found = read_header(buf, at, position)
    return found is not None and found[0] == TYPE_END
