"""The file WAL: the contract suite, plus what only segment files have (lock, roll, sweep)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlib.errors import NodeLockedError
from streamlib.testing.wal import WalContract, make_record, recover_all
from streamlib.wal import Wal
from streamlib.wal._format import record_size
from streamlib.wal.file import ZERO_AHEAD, FileWal

SEGMENT = 256 * 1024


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
    options.setdefault("segment_bytes", SEGMENT)
    wal = FileWal(path, **options)  # type: ignore[arg-type]
    recover_all(wal)
    positions = [wal.append(make_record(1, i, size=500)).result(timeout=30) for i in range(count)]
    wal.close()
    return positions


def only_segment(path: Path) -> Path:
    (segment,) = path.glob("*.wal")
    return segment


def records_end(positions: list[int]) -> int:
    """Where the records ``filled_wal`` wrote end (they are all of one size)."""
    return positions[-1] + record_size(make_record(1, len(positions) - 1, size=500))


def test_a_segment_ends_with_an_end_marker_after_its_last_group(tmp_path: Path) -> None:
    positions = filled_wal(tmp_path)
    end = records_end(positions)
    data = only_segment(tmp_path).read_bytes()
    assert data[end:end + 4] == b"SLWR"  # overwritten by the next group
    # small groups fill the file with zeros ahead of them, up to the segment's size at most
    assert len(data) >= end + 40 and data[end + 40:] == bytes(len(data) - end - 40)
    assert len(data) <= SEGMENT
    wal = FileWal(tmp_path, segment_bytes=SEGMENT)
    recovery = wal.recover()
    assert len(recovery.entries()) == 30 and recovery.dropped == [] and recovery.end == end
    wal.close()


def test_small_groups_write_zeros_ahead_and_big_groups_grow_the_file(tmp_path: Path) -> None:
    # zeros ahead of small groups: the syncs of the next groups are of data only
    wal = FileWal(tmp_path, segment_bytes=64 * ZERO_AHEAD)
    recover_all(wal)
    first = wal.append(make_record(1, 0, size=100)).result(timeout=30)
    size = only_segment(tmp_path).stat().st_size
    assert size >= ZERO_AHEAD and size % 4096 == 0
    for i in range(1, 20):  # within the zeros: the file does not grow
        wal.append(make_record(1, i, size=100)).result(timeout=30)
    assert only_segment(tmp_path).stat().st_size == size
    # a group as large as the zeros ahead grows the file by itself, with no zeros after it
    big = wal.append(make_record(1, 20, size=ZERO_AHEAD)).result(timeout=30)
    end = big - first + record_size(make_record(1, 20, size=ZERO_AHEAD))
    assert only_segment(tmp_path).stat().st_size == end + 40
    wal.close()
    again = FileWal(tmp_path, segment_bytes=64 * ZERO_AHEAD)
    assert [e.record.base_offset for e in recover_all(again)] == list(range(21))
    again.close()


def test_torn_last_record_is_dropped_and_cleared(tmp_path: Path) -> None:
    positions = filled_wal(tmp_path)
    segment = only_segment(tmp_path)
    end = records_end(positions)
    with open(segment, "r+b") as f:
        f.truncate(end - 100)  # the last record loses its end (and the file its preallocation)
    wal = FileWal(tmp_path, segment_bytes=SEGMENT)
    recovery = wal.recover()
    assert [e.record.base_offset for e in recovery] == list(range(29))
    (damage,) = recovery.dropped
    assert (damage.start, damage.end) == (positions[29], end - 100) and "torn" in damage.reason
    assert recovery.end == positions[29]
    assert segment.stat().st_size == positions[29]  # cut off
    assert wal.append(make_record(1, 29, size=500)).result(timeout=30) == positions[29]
    wal.close()
    again = FileWal(tmp_path, segment_bytes=SEGMENT)
    assert [e.record.base_offset for e in recover_all(again)] == list(range(30))
    again.close()


def test_zero_filled_tail_without_an_end_marker_is_a_torn_tail(tmp_path: Path) -> None:
    """A segment written before end markers (or whose marker a crash lost), followed by an
    extent allocated but never written."""
    positions = filled_wal(tmp_path)
    segment = only_segment(tmp_path)
    end = records_end(positions)
    with open(segment, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(bytes(8192))
    wal = FileWal(tmp_path, segment_bytes=SEGMENT)
    recovery = wal.recover()
    assert len(recovery.entries()) == 30
    assert [(d.start, d.end) for d in recovery.dropped] == [(end, end + 8192)]
    wal.close()


def test_a_segment_without_an_end_marker_that_ends_at_its_last_record_is_whole(
        tmp_path: Path) -> None:
    """Segments written before end markers end where their last record does."""
    positions = filled_wal(tmp_path)
    segment = only_segment(tmp_path)
    with open(segment, "r+b") as f:
        f.truncate(records_end(positions))
    wal = FileWal(tmp_path, segment_bytes=SEGMENT)
    recovery = wal.recover()
    assert len(recovery.entries()) == 30 and recovery.dropped == []
    assert wal.append(make_record(1, 30, size=500)).result(timeout=30) == records_end(positions)
    wal.close()
    again = FileWal(tmp_path, segment_bytes=SEGMENT)
    assert [e.record.base_offset for e in recover_all(again)] == list(range(31))
    again.close()


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
    assert recovery.end == group[0]
    assert segment.stat().st_size == group[0]  # what the torn group left is gone
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
    end = records_end(positions)
    assert again.append(make_record(1, 30, size=500)).result(timeout=30) == end
    again.close()


def recycled_wal(path: Path) -> tuple[FileWal, int]:
    """A WAL whose last segment is a recycled file (its old records behind the new ones), and
    the position where that segment starts."""
    wal = FileWal(path, segment_bytes=8192, group_bytes=1024)
    recover_all(wal)
    positions = [wal.append(make_record(1, i, size=300)).result(timeout=30) for i in range(60)]
    wal.trim(positions[-1])  # every segment but the last is a spare now (at most two kept)
    assert len(list(path.glob("*.spare"))) == 2
    spare_inodes = {p.stat().st_ino for p in path.glob("*.spare")}
    offset = 60
    while len(list(path.glob("*.spare"))) == 2:  # until the writer rolled into a spare
        wal.append(make_record(1, offset, size=300)).result(timeout=30)
        offset += 1
    segment = max(path.glob("*.wal"))
    assert segment.stat().st_ino in spare_inodes  # written over a spare's old records
    return wal, int(segment.stem)


def test_the_old_records_of_a_recycled_segment_never_come_back(tmp_path: Path) -> None:
    """A spare is written over from its start: beyond the new records lie the old ones, each
    valid at the position it was written at — never at the one where it now lies. With the
    end marker after the new records lost (a torn write), recovery scans them all and returns
    none, and appends go on after the new records."""
    wal, start = recycled_wal(tmp_path)
    first = wal.append(make_record(2, 0, size=300)).result(timeout=30)
    end = wal.end_position
    wal.close()
    segment = tmp_path / f"{start:020d}.wal"
    data = bytearray(segment.read_bytes())
    assert data[end - start + 100:].count(b"SLWR") > 10  # old records lie after the new ones
    data[end - start:end - start + 40] = bytes(40)  # the end marker lost
    segment.write_bytes(bytes(data))
    again = FileWal(tmp_path, segment_bytes=8192)
    recovery = again.recover()
    entries = recovery.entries()
    assert entries[-1].position == first and entries[-1].record.stream_id == 2
    offsets = [e.record.base_offset for e in entries if e.record.stream_id == 1]
    assert offsets == sorted(set(offsets))  # nothing old came back
    assert [(d.start, d.reason) for d in recovery.dropped] == [
        (end, "torn tail (never acknowledged)")]
    assert again.append(make_record(2, 1, size=300)).result(timeout=30) == end
    again.close()


def test_spares_are_reused_and_bounded(tmp_path: Path) -> None:
    """Trimmed segments become spares (at most ``spares``, filled out to ``segment_bytes``),
    the next segments are made of them, and a reopen with another segment size deletes the
    ones it cannot use."""
    wal, _start = recycled_wal(tmp_path)
    wal.close()
    spares = list(tmp_path.glob("*.spare"))
    assert len(spares) <= 2 and all(p.stat().st_size == 8192 for p in spares)
    FileWal(tmp_path, segment_bytes=8192).close()
    assert list(tmp_path.glob("*.spare")) == spares  # kept by a reopen
    FileWal(tmp_path, segment_bytes=16384).close()
    assert list(tmp_path.glob("*.spare")) == []
