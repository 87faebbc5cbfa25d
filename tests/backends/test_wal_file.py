"""The file WAL: the contract suite, plus what only segment files have (lock, roll, sweep)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlib.errors import NodeLockedError
from streamlib.testing.wal import WalContract, make_record, recover_all
from streamlib.wal import Wal
from streamlib.wal.file import FileWal


class TestFileWal(WalContract):
    def open_wal(self, location: Path, **options: object) -> Wal:
        return FileWal(location, **options)  # type: ignore[arg-type]


def test_a_second_process_cannot_open_the_same_wal(tmp_path: Path) -> None:
    wal = FileWal(tmp_path)
    with pytest.raises(NodeLockedError, match="locked"):
        FileWal(tmp_path)
    wal.close()
    FileWal(tmp_path).close()  # the lock went with the first


def test_segments_roll_and_trim_deletes_whole_segments(tmp_path: Path) -> None:
    wal = FileWal(tmp_path, segment_bytes=20_000, group_bytes=4096)
    recover_all(wal)
    positions = [wal.append(make_record(1, i, size=1000)).result(timeout=30) for i in range(100)]
    segments = sorted(tmp_path.glob("*.wal"))
    assert len(segments) >= 5
    wal.trim(positions[60])
    left = sorted(tmp_path.glob("*.wal"))
    assert len(left) < len(segments)
    assert int(left[0].stem) <= positions[60]  # the segment holding the trim position stays
    wal.close()
    again = FileWal(tmp_path, segment_bytes=20_000)
    assert [e.record.base_offset for e in recover_all(again)] == list(range(60, 100))
    again.close()


def filled_wal(path: Path, count: int = 30, **options: object) -> list[int]:
    wal = FileWal(path, **options)  # type: ignore[arg-type]
    recover_all(wal)
    positions = [wal.append(make_record(1, i, size=500)).result(timeout=30) for i in range(count)]
    wal.close()
    return positions


def only_segment(path: Path) -> Path:
    (segment,) = path.glob("*.wal")
    return segment


def test_torn_last_record_is_dropped_and_truncated(tmp_path: Path) -> None:
    positions = filled_wal(tmp_path)
    segment = only_segment(tmp_path)
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 100)  # the last record loses its end
    wal = FileWal(tmp_path)
    recovery = wal.recover()
    assert [e.record.base_offset for e in recovery] == list(range(29))
    (damage,) = recovery.dropped
    assert (damage.start, damage.end) == (positions[29], size - 100) and "torn" in damage.reason
    assert recovery.end == positions[29] and segment.stat().st_size == positions[29]
    assert wal.append(make_record(1, 29, size=500)).result(timeout=30) == positions[29]
    wal.close()
    again = FileWal(tmp_path)
    assert [e.record.base_offset for e in recover_all(again)] == list(range(30))
    again.close()


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    filled_wal(tmp_path)
    segment = only_segment(tmp_path)
    size = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(bytes(8192))  # an extent allocated, never written
    wal = FileWal(tmp_path)
    recovery = wal.recover()
    assert len(recovery.entries()) == 30
    assert [(d.start, d.end) for d in recovery.dropped] == [(size, size + 8192)]
    wal.close()


def test_flipped_bit_in_the_middle_skips_that_record_only(tmp_path: Path) -> None:
    positions = filled_wal(tmp_path)
    segment = only_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[positions[10] + 300] ^= 0x04  # inside record 10's payload
    segment.write_bytes(bytes(data))
    wal = FileWal(tmp_path)
    recovery = wal.recover()
    offsets = [e.record.base_offset for e in recovery]
    assert offsets == [i for i in range(30) if i != 10]  # never a damaged record
    (damage,) = recovery.dropped
    assert (damage.start, damage.end) == (positions[10], positions[11])
    assert "damaged" in damage.reason
    wal.close()


def test_damaged_header_in_the_middle_resyncs_at_the_next_record(tmp_path: Path) -> None:
    positions = filled_wal(tmp_path)
    segment = only_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[positions[5] + 16:positions[5] + 20] = b"\xff\xff\xff\x7f"  # an absurd body length
    segment.write_bytes(bytes(data))
    wal = FileWal(tmp_path)
    recovery = wal.recover()
    assert [e.record.base_offset for e in recovery] == [i for i in range(30) if i != 5]
    assert [(d.start, d.end) for d in recovery.dropped] == [(positions[5], positions[6])]
    wal.close()


def test_missing_segment_in_the_middle_is_reported(tmp_path: Path) -> None:
    filled_wal(tmp_path, count=100, segment_bytes=20_000, group_bytes=4096)
    segments = sorted(tmp_path.glob("*.wal"))
    victim = segments[2]
    start, end = int(victim.stem), int(segments[3].stem)
    victim.unlink()
    wal = FileWal(tmp_path, segment_bytes=20_000)
    recovery = wal.recover()
    entries = recovery.entries()
    assert all(not start <= e.position < end for e in entries)
    assert len(entries) < 100
    offsets = [e.record.base_offset for e in entries]
    assert offsets == sorted(offsets)
    assert [(d.start, d.end) for d in recovery.dropped] == [(start, end)]
    assert "missing" in recovery.dropped[0].reason
    wal.close()


def test_a_hole_inside_the_last_group_drops_the_whole_group(tmp_path: Path) -> None:
    """A machine crash during the last group's write can keep a later page and lose an earlier
    one. That group was never synced, so none of it was acknowledged: recovery must not return
    its surviving records (they would leave a hole in their streams)."""
    positions = filled_wal(tmp_path, count=5)  # five groups of one record each
    wal = FileWal(tmp_path, linger=0.2)
    recover_all(wal)
    futures = [wal.append(make_record(2, i, size=500)) for i in range(5)]  # one group of five
    group = [f.result(timeout=30) for f in futures]
    wal.close()
    segment = only_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[group[1]:group[3]] = bytes(group[3] - group[1])  # records 1 and 2 of the group lost
    segment.write_bytes(bytes(data))
    wal = FileWal(tmp_path)
    recovery = wal.recover()
    assert [e.position for e in recovery.entries()] == positions
    (torn,) = recovery.dropped
    assert torn.start == group[0] and "torn" in torn.reason
    assert segment.stat().st_size == group[0] and recovery.end == group[0]
    wal.close()


def test_a_hole_before_a_later_group_is_damage(tmp_path: Path) -> None:
    positions = filled_wal(tmp_path, count=5)
    segment = only_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[positions[3]:positions[3] + 200] = bytes(200)  # record 3 lost; record 4 came later
    segment.write_bytes(bytes(data))
    wal = FileWal(tmp_path)
    recovery = wal.recover()
    assert [e.record.base_offset for e in recovery.entries()] == [0, 1, 2, 4]
    assert [(d.start, d.end, d.reason) for d in recovery.dropped] == [
        (positions[3], positions[4], "damaged bytes between valid records")]
    wal.close()


def test_recovery_reads_the_segment_from_the_trim_position(tmp_path: Path) -> None:
    """The segment holding the trim position is read from there: bytes before it (trimmed
    records, here damaged) are neither decoded nor reported — a reopen after an upload costs
    what is left in the WAL, not the segment's size."""
    positions = filled_wal(tmp_path)
    wal = FileWal(tmp_path)
    recover_all(wal)
    wal.trim(positions[20])
    wal.close()
    segment = only_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[positions[5]:positions[15]] = bytes(positions[15] - positions[5])  # trimmed: damaged
    segment.write_bytes(bytes(data))
    again = FileWal(tmp_path)
    recovery = again.recover()
    assert [e.record.base_offset for e in recovery] == list(range(20, 30))
    assert recovery.dropped == []
    assert again.append(make_record(1, 30, size=500)).result(timeout=30) == len(data)
    again.close()
