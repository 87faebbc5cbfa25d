"""The block WAL after it dropped a torn last group: appends go on at that group's start, so
they take the very positions its surviving records claim. Those records must not come back
at the next recovery — neither as live records after shorter appends, nor as a "hole inside
the last group" that would drop the acknowledged appends with them (docs/wal.md, "block")."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlib import codec
from streamlib.testing.wal import make_record, recover_all
from streamlib.wal import WalRecord
from streamlib.wal._format import HEADER_SIZE, read_header, record_size
from streamlib.wal.block import BLOCK, RING_START, BlockWal

RING = 256 * 1024


def block_record(stream_id: int, offset: int) -> WalRecord:
    """A record of exactly one 4 KiB block, so that every record of a group starts on a block
    boundary, where recovery looks for the next valid record after a hole."""
    record = make_record(stream_id, offset, size=BLOCK - HEADER_SIZE - codec.BATCH_HEADER_SIZE,
                         opaque=True)
    assert record_size(record) == BLOCK
    return record


def ring_bytes(path: Path, position: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(RING_START + position % RING)
        return f.read(length)


def lose_block(path: Path, position: int) -> None:
    """What a machine crash leaves of a page that never reached the disk: the fresh ring's
    zeros."""
    with open(path, "r+b") as f:
        f.seek(RING_START + position % RING)
        f.write(bytes(BLOCK))


@pytest.mark.parametrize("appended", [1, 2], ids=["shorter-by-three", "shorter-by-two"])
def test_a_dropped_torn_group_stays_dropped_after_shorter_appends(tmp_path: Path,
                                                                  appended: int) -> None:
    path = tmp_path / "ring"
    wal = BlockWal(path, size=RING)
    recover_all(wal)
    before = [block_record(1, i) for i in range(2)]
    for r in before:
        wal.append(r).result(timeout=10)
    wal.close()

    # One group of four one-block records: it closes once all four are queued (the long
    # linger only matters on a loaded machine, where the appends may be far apart).
    torn = [block_record(2, i) for i in range(4)]
    wal = BlockWal(path, linger=60.0, group_bytes=4 * BLOCK)
    recover_all(wal)
    group = [f.result(timeout=10) for f in [wal.append(r) for r in torn]]
    wal.close()
    assert group == [group[0] + i * BLOCK for i in range(4)]
    for position in group:  # each record says the group began at the first one
        found = read_header(ring_bytes(path, position, BLOCK), 0, position)
        assert found is not None and found[3] == group[0]

    lose_block(path, group[1])  # the crash kept records 0, 2 and 3 of the group, not 1
    wal = BlockWal(path)
    recovery = wal.recover()
    assert [e.record for e in recovery.entries()] == before
    assert recovery.end == group[0]  # the group is dropped whole; appends go on at its start
    after = [block_record(3, i) for i in range(appended)]
    assert [wal.append(r).result(timeout=10) for r in after] == group[:appended]
    wal.close()

    # Records 2 and 3 of the torn group still claim their positions on the ring; the appends
    # above end on a block boundary at or before them.
    wal = BlockWal(path)
    recovery = wal.recover()
    assert [e.record for e in recovery.entries()] == [*before, *after]
    assert recovery.end == group[0] + appended * BLOCK
    assert recovery.dropped == []
    wal.close()
