"""WAL fields whose checksum holds but whose values lie at or beyond what the format's integers
hold (docs/wal.md): recovery reads them as the writer writes them, or refuses them as damage, and
never lets a ValueError, AssertionError or struct.error out.

- A record header's epoch is unsigned, as WalRecord's: every epoch a record takes is written
  and read back, 2^63 and more included.
- A record's group began in the run that holds it: a segment or an object begins with a group,
  so a header claiming a group that began before it is damage at its own position.
- A ring header's trim position leaves the live window below 2^63 (the records' signed position
  field), and its generation is below 2^63 (each header write adds one): else the open refuses
  it with CorruptDataError naming the field.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from fuzz.forge import reseal_ring_header, seal

from streamlib.errors import CorruptDataError
from streamlib.testing.wal import make_record, recover_all
from streamlib.wal import Damage, Recovery, Wal, WalRecord
from streamlib.wal import _format as wal_format
from streamlib.wal.block import BLOCK, RING_START, BlockWal, RingHeader
from streamlib.wal.file import FileWal

RING = 256 * 1024
BASE = 1 << 30  # a run's first position, as a segment's start
EPOCHS = (0, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
_EPOCH = 32  # the record header's epoch field
_GROUP_OFFSET = 20  # the record header's group offset field


def run_of(records: list[WalRecord]) -> tuple[bytes, list[int]]:
    """Records back to back from BASE, each a group of its own, and their positions."""
    parts, positions = [], []
    position = BASE
    for record in records:
        piece = b"".join(wal_format.record_parts(position, record, position))
        parts.append(piece)
        positions.append(position)
        position += len(piece)
    return b"".join(parts), positions


def forge_field(buf: bytearray, at: int, field: int, fmt: str, value: int) -> None:
    """Set a field of the record header at ``buf[at:]`` and reseal the header."""
    struct.pack_into(fmt, buf, at + field, value)
    seal(buf, at, at + wal_format.HEADER_SIZE)


# ---- the record header's epoch ----


def test_a_record_header_epoch_of_2_63_or_more_is_read_as_written() -> None:
    records = [make_record(1, i, epoch=1) for i in range(len(EPOCHS))]
    data, positions = run_of(records)
    buf = bytearray(data)
    for epoch, position in zip(EPOCHS, positions, strict=True):
        forge_field(buf, position - BASE, _EPOCH, "<Q", epoch)
    recovery = Recovery(lambda _recovery: iter(()), BASE)
    entries, end = wal_format.scan_run(bytes(buf), BASE, recovery, last=True)
    assert [e.record.epoch for e in entries] == list(EPOCHS)
    assert end == len(buf) and recovery.dropped == []


@pytest.mark.parametrize("backend", ["file", "block"])
def test_every_epoch_a_record_takes_is_written_and_recovered(tmp_path: Path,
                                                             backend: str) -> None:
    def open_wal() -> Wal:
        if backend == "file":
            return FileWal(tmp_path / "wal")
        return BlockWal(tmp_path / "ring", size=None if (tmp_path / "ring").exists() else RING)

    records = [make_record(1, i, epoch=epoch) for i, epoch in enumerate(EPOCHS)]
    wal = open_wal()
    recover_all(wal)
    for record in records:
        wal.append(record).result(timeout=10)
    wal.close()
    wal = open_wal()
    assert [e.record for e in recover_all(wal)] == records
    wal.close()


# ---- the record header's group offset ----


def test_a_record_claiming_a_group_before_its_run_is_damage() -> None:
    """Record 1 lost, record 2's header (checksum valid) claims a group that began before the
    run, record 3 intact: record 2 is damage, reported with the hole before it."""
    records = [make_record(1, i, size=300) for i in range(4)]
    data, positions = run_of(records)
    buf = bytearray(data)
    buf[positions[1] - BASE:positions[1] - BASE + 40] = bytes(40)
    forge_field(buf, positions[2] - BASE, _GROUP_OFFSET, "<I", positions[2] - BASE + BLOCK)
    for last in (False, True):
        recovery = Recovery(lambda _recovery: iter(()), BASE)
        entries, end = wal_format.scan_run(bytes(buf), BASE, recovery, last=last)
        assert [e.record for e in entries] == [records[0], records[3]]
        assert end == len(buf)
        assert recovery.dropped == [Damage(positions[1], positions[3],
                                           "damaged bytes between valid records")]


def test_a_run_read_from_inside_its_object_ends_within_it() -> None:
    """Read from the trim on, a run's records may belong to a group that began before it, at
    its object's start (``groups_from``). A hole in that group is damage: the valid records
    cannot end before the run, however last it is."""
    records = [make_record(1, i, size=300) for i in range(3)]
    group = BASE - 100
    parts, positions = [], []
    position = BASE
    for record in records:
        parts.append(b"".join(wal_format.record_parts(position, record, group)))
        positions.append(position)
        position += len(parts[-1])
    buf = bytearray(b"".join(parts))
    buf[positions[1] - BASE:positions[1] - BASE + 40] = bytes(40)
    recovery = Recovery(lambda _recovery: iter(()), BASE)
    entries, end = wal_format.scan_run(bytes(buf), BASE, recovery, last=True, groups_from=group)
    assert [e.record for e in entries] == [records[0], records[2]] and end == len(buf)
    assert recovery.dropped == [Damage(positions[1], positions[2],
                                       "damaged bytes between valid records")]


def test_a_last_record_claiming_a_group_before_its_segment_loses_nothing_before_it(
        tmp_path: Path) -> None:
    """The same record at the end of the last segment: once taken for the end of a torn group
    that began before the segment, it cut the segment at a negative length and dropped every
    record before it. It is damage where it lies; the records before it are kept."""
    wal = FileWal(tmp_path, segment_bytes=1500)
    recover_all(wal)
    first = make_record(1, 0, size=1000)
    wal.append(first).result(timeout=10)
    records = [make_record(1, 1 + i, size=300) for i in range(3)]
    positions = [wal.append(r).result(timeout=10) for r in records]  # one group each
    wal.close()
    segment = max(tmp_path.glob("*.wal"))
    start = int(segment.stem)
    assert start == positions[0]  # the three records are the last segment's
    buf = bytearray(segment.read_bytes())
    buf[positions[1] - start:positions[1] - start + 40] = bytes(40)
    # Record 2 says its group began one byte before the segment.
    forge_field(buf, positions[2] - start, _GROUP_OFFSET, "<I", positions[2] - start + 1)
    segment.write_bytes(bytes(buf))
    wal = FileWal(tmp_path)
    recovery = wal.recover()
    assert [e.record for e in recovery.entries()] == [first, records[0]]
    # The end marker after record 2 is intact, so its group was written whole: the bytes
    # before it are damage, not a torn group, and appends go on after them.
    end = positions[2] + wal_format.record_size(records[2])
    assert [(d.start, d.end, d.reason) for d in recovery.dropped] == [
        (positions[1], end, "damaged bytes between valid records")]
    assert recovery.end == end
    wal.close()


# ---- the ring header ----


def forge_ring_header(path: Path, **fields: int) -> RingHeader:
    """Rewrite the newest header slot with ``fields`` changed, its checksum valid."""
    data = path.read_bytes()[:RING_START]
    found = [RingHeader.unpack(data[i * BLOCK:(i + 1) * BLOCK]) for i in (0, 1)]
    newest = max((h for h in found if h is not None), key=lambda h: h.generation)
    slot = bytearray(newest.pack())
    for name, value in fields.items():
        at = 16 + 8 * ("generation", "ring_size", "trim").index(name)
        struct.pack_into("<Q", slot, at, value)
    reseal_ring_header(slot)
    forged = RingHeader.unpack(bytes(slot))
    assert forged is not None
    with open(path, "r+b") as f:
        f.seek(newest.slot * BLOCK)
        f.write(slot)
    return forged


def new_ring(path: Path) -> None:
    wal = BlockWal(path, size=RING, direct_io=False)
    recover_all(wal)
    wal.append(make_record(1, 0)).result(timeout=10)
    wal.close()


@pytest.mark.parametrize("trim", [1 << 63, (1 << 64) - 1, (1 << 63) - RING + 1],
                         ids=["2^63", "2^64-1", "window-past-2^63"])
def test_a_ring_header_trim_beyond_the_positions_is_refused(tmp_path: Path, trim: int) -> None:
    path = tmp_path / "ring"
    new_ring(path)
    forge_ring_header(path, trim=trim)
    before = path.read_bytes()
    with pytest.raises(CorruptDataError, match=f"trim position is out of range: trim=`{trim}`"):
        BlockWal(path, direct_io=False)
    assert path.read_bytes() == before  # refused before anything was written


def test_a_ring_header_trim_at_the_last_window_is_used(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    new_ring(path)
    trim = (1 << 63) - RING  # the live window ends at 2^63
    forge_ring_header(path, trim=trim)
    wal = BlockWal(path, direct_io=False)
    recovery = wal.recover()
    assert recovery.entries() == [] and recovery.end == trim
    record = make_record(2, 0)
    assert wal.append(record).result(timeout=10) == trim
    wal.close()
    wal = BlockWal(path, direct_io=False)
    assert [(e.position, e.record) for e in recover_all(wal)] == [(trim, record)]
    wal.close()


@pytest.mark.parametrize("generation", [1 << 63, (1 << 64) - 1], ids=["2^63", "2^64-1"])
def test_a_ring_header_generation_out_of_range_is_refused(tmp_path: Path,
                                                          generation: int) -> None:
    path = tmp_path / "ring"
    new_ring(path)
    forge_ring_header(path, generation=generation)
    before = path.read_bytes()
    with pytest.raises(CorruptDataError,
                       match=f"generation is out of range: generation=`{generation}`"):
        BlockWal(path, direct_io=False)
    assert path.read_bytes() == before
