"""The file WAL: the contract suite, plus what only segment files have (lock, roll, sweep)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlib.errors import WalLockedError
from streamlib.testing.wal import WalContract, make_record, recover_all
from streamlib.wal import Wal
from streamlib.wal.file import FileWal


class TestFileWal(WalContract):
    def open_wal(self, location: Path, **options: object) -> Wal:
        return FileWal(location, **options)  # type: ignore[arg-type]


def test_a_second_process_cannot_open_the_same_wal(tmp_path: Path) -> None:
    wal = FileWal(tmp_path)
    with pytest.raises(WalLockedError, match="locked"):
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
