"""The block WAL: the contract suite (with and without O_DIRECT), plus what only a ring has:
laps, header slots, aligned group writes, padding, damage and torn groups inside the ring."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from streamlib.errors import ConfigError, CorruptDataError, NodeLockedError, WalFullError
from streamlib.testing.wal import WalContract, make_record, recover_all
from streamlib.wal import Damage, Wal, WalRecord, block
from streamlib.wal._format import record_size
from streamlib.wal.block import BLOCK, RING_START, BlockWal, RingHeader

MiB = 1 << 20
DEFAULT_RING = 32 * MiB
SMALL_RING = 256 * 1024
MODES = pytest.mark.parametrize("direct_io", [None, False], ids=["auto", "buffered"])


class TestBlockWal(WalContract):
    direct_io: bool | None = None

    def open_wal(self, location: Path, **options: object) -> Wal:
        # The suite's ``capacity`` is the ring size of a new ring; an existing one keeps its own.
        size = options.pop("capacity", None)
        if size is None and not location.exists():
            size = DEFAULT_RING
        return BlockWal(location, size=size, direct_io=self.direct_io,  # type: ignore[arg-type]
                        **options)  # type: ignore[arg-type]


class TestBlockWalBuffered(TestBlockWal):
    direct_io = False


def slots(path: Path) -> list[RingHeader | None]:
    data = path.read_bytes()[:RING_START]
    return [RingHeader.unpack(data[i * BLOCK:(i + 1) * BLOCK]) for i in (0, 1)]


def newest(path: Path) -> RingHeader:
    return max((h for h in slots(path) if h is not None), key=lambda h: h.generation)


def patch_ring(path: Path, ring: int, position: int, data: bytes) -> None:
    """Overwrite the ring bytes holding logical ``position`` (no wrap inside ``data``)."""
    with open(path, "r+b") as f:
        f.seek(RING_START + position % ring)
        f.write(data)


# ---- opening ----


def test_a_second_process_cannot_open_the_same_wal(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    wal = BlockWal(path, size=SMALL_RING)
    with pytest.raises(NodeLockedError, match="locked"):
        BlockWal(path)
    wal.close()
    BlockWal(path).close()  # the lock went with the first


def test_size_is_needed_checked_and_must_match(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    with pytest.raises(ValueError, match="needs its ring size"):
        BlockWal(path)
    assert not path.exists()
    for bad in (1000, 64 * 1024 + 1, 4096):
        with pytest.raises(ValueError, match="multiple of 4096"):
            BlockWal(path, size=bad)
    BlockWal(path, size=SMALL_RING).close()
    assert path.stat().st_size == RING_START + SMALL_RING
    with pytest.raises(ValueError, match="does not match the existing ring"):
        BlockWal(path, size=2 * SMALL_RING)
    with BlockWal(path, size=SMALL_RING) as wal:
        assert wal.capacity == SMALL_RING


def test_a_zeroed_file_is_formatted_and_a_foreign_one_refused(tmp_path: Path) -> None:
    zeroed = tmp_path / "zeroed"
    zeroed.write_bytes(bytes(4096))  # shorter than the ring: extended
    with BlockWal(zeroed, size=SMALL_RING) as wal:
        assert recover_all(wal) == []
    assert zeroed.stat().st_size == RING_START + SMALL_RING
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"not a ring" * 10000)
    with pytest.raises(CorruptDataError, match="no valid header slot"):
        BlockWal(foreign, size=SMALL_RING)


def test_a_short_file_is_formatted_only_if_empty_or_zeros(tmp_path: Path) -> None:
    """A file too short for the two header slots was taken for an unformatted one, whatever it
    held: formatted over with a size, refused with a misleading "needs its ring size" without.
    Only an empty or zeroed one is formatted; one holding anything else is someone else's file,
    or the remains of a ring."""
    notes = tmp_path / "notes"
    notes.write_bytes(b"someone else's notes\n")
    for size in (None, SMALL_RING):
        with pytest.raises(ConfigError, match="not a block WAL, and not empty") as refused:
            BlockWal(notes, size=size)
        assert refused.value.field == "wal_path" and refused.value.value == str(notes)
    assert notes.read_bytes() == b"someone else's notes\n"

    ring = tmp_path / "ring"
    BlockWal(ring, size=SMALL_RING).close()
    cut = tmp_path / "cut"  # a ring cut short: its newer header slot (1) is still valid
    cut.write_bytes(ring.read_bytes()[:BLOCK + 1000])
    with pytest.raises(CorruptDataError, match="ring size does not fit the file"):
        BlockWal(cut, size=SMALL_RING)
    damaged = tmp_path / "damaged"  # the ring's magic, a header of no ring
    damaged.write_bytes(b"SLWH" + bytes(60) + b"rest")
    with pytest.raises(CorruptDataError, match="no valid header slot: slot 0 damaged, slot 1 "
                                               "empty"):
        BlockWal(damaged, size=SMALL_RING)
    torn = tmp_path / "torn"  # a new ring's first header (slot 1) torn: the message says which
    data = bytearray(ring.read_bytes())
    data[:BLOCK] = bytes(BLOCK)
    data[BLOCK + 40] ^= 0xFF
    torn.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="no valid header slot: slot 0 empty, slot 1 "
                                               "damaged"):
        BlockWal(torn, size=SMALL_RING)
    assert cut.stat().st_size == BLOCK + 1000 and damaged.stat().st_size == 68

    empty = tmp_path / "empty"
    empty.touch()
    with pytest.raises(ValueError, match="needs its ring size"):
        BlockWal(empty)
    with BlockWal(empty, size=SMALL_RING) as wal:
        assert recover_all(wal) == []
    assert empty.stat().st_size == RING_START + SMALL_RING


def recovered_end(wal: Wal) -> int:
    recovery = wal.recover()
    recovery.entries()
    return recovery.end


def test_node_id_and_epoch_are_written_at_open(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    BlockWal(path, size=SMALL_RING, node_id=7, epoch=3).close()
    first = newest(path)
    assert (first.node_id, first.epoch, first.ring_size) == (7, 3, SMALL_RING)
    assert first.trim % BLOCK == 0  # a fresh ring starts at a random aligned position
    BlockWal(path, node_id=8, epoch=4).close()
    second = newest(path)
    assert (second.node_id, second.epoch) == (8, 4)
    assert second.generation == first.generation + 1 and second.slot != first.slot
    assert second.created_ms == first.created_ms
    with pytest.raises(ValueError, match="node_id"):
        BlockWal(path, node_id=-1)


def test_direct_io_falls_back_when_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    real_open = os.open

    def refuse_direct(path: str, flags: int, *args: object) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_direct)
    wal = BlockWal(tmp_path / "ring", size=SMALL_RING)
    assert wal.direct_io is False
    start = recovered_end(wal)
    assert wal.append(make_record(1, 0)).result(timeout=10) == start
    wal.close()
    if hasattr(os, "O_DIRECT"):
        with pytest.raises(OSError, match="Invalid argument"):
            BlockWal(tmp_path / "ring", direct_io=True)


# ---- header slots ----


def test_a_torn_header_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    wal = BlockWal(path, size=SMALL_RING)
    recover_all(wal)
    positions = [wal.append(make_record(1, i, size=500)).result(timeout=10) for i in range(20)]
    wal.trim(positions[5])
    wal.trim(positions[12])
    wal.close()
    older, newer = sorted((h for h in slots(path) if h is not None), key=lambda h: h.generation)
    assert (older.trim, newer.trim) == (positions[5], positions[12])
    with open(path, "r+b") as f:  # a write of the newer slot torn halfway through its fields
        f.seek(newer.slot * BLOCK + 30)
        f.write(b"\xff" * 10)
    wal = BlockWal(path)
    assert wal.trim_position == positions[5]
    assert [e.record.base_offset for e in recover_all(wal)] == list(range(5, 20))
    wal.close()
    assert newest(path).generation == older.generation + 1  # it overwrote the torn slot
    with open(path, "r+b") as f:  # both slots gone: refuse rather than guess
        f.write(b"\xff" * RING_START)
    with pytest.raises(CorruptDataError, match="no valid header slot"):
        BlockWal(path)


# ---- writes ----


@MODES
def test_groups_are_block_aligned_and_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              direct_io: bool | None) -> None:
    ring = 64 * 1024
    wal = BlockWal(tmp_path / "ring", size=ring, direct_io=direct_io, linger=0.02)
    if direct_io is False:
        assert wal.direct_io is False
    recover_all(wal)
    writes: list[tuple[int, int]] = []
    syncs: list[int] = []
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        writes.append((offset, len(data)))
        return real_pwrite(fd, data, offset)

    def fdatasync(fd: int) -> None:
        syncs.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    groups = []
    for g in range(30):  # groups of 1 to 3 records, some crossing the ring's end
        futures = [wal.append(make_record(1, 3 * g + i, size=800 * (g % 7) + 5 * i))
                   for i in range(1 + g % 3)]
        groups.append([f.result(timeout=10) for f in futures])
        wal.trim(groups[-1][0])  # a header write each, the only writes outside the ring
    monkeypatch.undo()
    assert all(offset % BLOCK == 0 and length % BLOCK == 0 for offset, length in writes)
    trims = len(groups) - 1  # the first, at 0, moved nothing
    assert sum(1 for offset, _ in writes if offset < RING_START) == trims
    assert all(group[0] % BLOCK == 0 for group in groups)
    assert wal.end_position > 3 * ring  # it wrapped
    assert len(syncs) == (0 if wal.direct_io else len(groups) + trims)  # O_DSYNC: none
    wal.close()
    again = BlockWal(tmp_path / "ring", direct_io=direct_io)
    assert [e.position for e in recover_all(again)] == groups[-1]
    again.close()


def test_a_record_too_large_for_the_ring_is_refused(tmp_path: Path) -> None:
    wal = BlockWal(tmp_path / "ring", size=64 * 1024)
    recover_all(wal)
    assert wal.capabilities.aligned_writes and wal.capabilities.max_record_bytes == 16 * 1024
    with pytest.raises(ValueError, match="too large"):
        wal.append(make_record(1, 0, size=16 * 1024))
    wal.close()


# ---- laps and back-pressure ----


@MODES
def test_the_ring_wraps_lap_after_lap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      direct_io: bool | None) -> None:
    path = tmp_path / "ring"
    wal = BlockWal(path, size=SMALL_RING, direct_io=direct_io)
    recover_all(wal)
    live: list[tuple[int, WalRecord]] = []
    offset = 0
    while wal.end_position < 3.5 * SMALL_RING:
        batch = [make_record(offset % 5, offset + i, size=300 + (offset * 37 + i * 911) % 6000)
                 for i in range(1 + offset % 4)]
        futures = [wal.append(r) for r in batch]
        live += [(f.result(timeout=10), r) for f, r in zip(futures, batch, strict=True)]
        offset += len(batch)
        if len(live) > 30:  # keep about 30 records live, sometimes across the ring's end
            live = live[-30:]
            wal.trim(live[0][0])
    end = wal.end_position
    wal.close()
    # Recovery reads in chunks as small as it may (two records long): records cross chunk ends.
    monkeypatch.setattr(block, "_SCAN_CHUNK", BLOCK)
    wal = BlockWal(path, direct_io=direct_io)
    recovery = wal.recover()
    entries = recovery.entries()
    assert [(e.position, e.record) for e in entries] == live  # nothing of an earlier lap
    assert recovery.dropped == [] and recovery.end == end
    assert wal.append(make_record(9, 0)).result(timeout=10) == end
    wal.close()


def test_a_small_ring_applies_back_pressure_without_overwriting(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    ring = 64 * 1024
    wal = BlockWal(path, size=ring, full_timeout=0.3)
    recover_all(wal)
    records = [make_record(1, i, size=6000 + 1500 * (i % 5)) for i in range(40)]
    futures = []
    with pytest.raises(WalFullError):
        for r in records:
            futures.append(wal.append(r))
    acked = [(f.result(), r) for f, r in zip(futures, records, strict=False)
             if f.exception(timeout=10) is None]
    assert acked and wal.usage <= ring
    wal.close()
    wal = BlockWal(path, full_timeout=5.0)  # every acknowledged record is still there
    assert [(e.position, e.record) for e in recover_all(wal)] == acked
    wal.trim(wal.end_position)

    positions: list[int] = []  # a producer, and trims that wake it up
    errors: list[BaseException] = []
    done = threading.Event()

    def produce() -> None:
        try:
            for r in records:
                positions.append(wal.append(r).result(timeout=10))
        except BaseException as e:
            errors.append(e)
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    while not done.wait(0.01):
        if positions:
            wal.trim(positions[-1])
        assert wal.usage <= ring
    thread.join()
    assert errors == [] and len(positions) == len(records) and wal.end_position > 5 * ring
    wal.close()
    wal = BlockWal(path)
    assert recover_all(wal)[-1].record == records[-1]
    wal.close()


# ---- damage ----


@MODES
def test_a_damaged_record_is_skipped_and_reported(tmp_path: Path, direct_io: bool | None
                                                  ) -> None:
    path = tmp_path / "ring"
    wal = BlockWal(path, size=SMALL_RING, direct_io=direct_io)
    recover_all(wal)
    records = [make_record(2, i, size=900) for i in range(20)]
    positions = [wal.append(r).result(timeout=10) for r in records]  # one group each
    wal.close()
    with open(path, "r+b") as f:  # one bit of record 10's payload
        f.seek(RING_START + (positions[10] + 200) % SMALL_RING)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    wal = BlockWal(path, direct_io=direct_io)
    recovery = wal.recover()
    entries = recovery.entries()
    assert [e.record for e in entries] == records[:10] + records[11:]
    assert recovery.dropped == [Damage(positions[10], positions[11],
                                       "damaged bytes between valid records")]
    wal.close()


@MODES
def test_a_torn_last_group_ends_recovery(tmp_path: Path, direct_io: bool | None) -> None:
    path = tmp_path / "ring"
    wal = BlockWal(path, size=SMALL_RING, direct_io=direct_io, linger=0.05)
    recover_all(wal)
    before = [make_record(3, i, size=800) for i in range(10)]
    for r in before:
        wal.append(r).result(timeout=10)
    last = [make_record(3, 10 + i, size=1500) for i in range(3)]
    tail = [f.result(timeout=10) for f in [wal.append(r) for r in last]]
    assert tail[1] == tail[0] + record_size(last[0])  # one group
    wal.close()

    patch_ring(path, SMALL_RING, tail[0] + 100, bytes(500))  # its first record never landed
    wal = BlockWal(path, direct_io=direct_io)
    recovery = wal.recover()
    assert [e.record for e in recovery.entries()] == before
    assert recovery.dropped == [] and recovery.end == tail[0]
    again = make_record(4, 0)
    assert wal.append(again).result(timeout=10) == tail[0]
    wal.close()
    wal = BlockWal(path, direct_io=direct_io)
    assert [e.record for e in recover_all(wal)] == [*before, again]
    wal.close()


def test_a_group_torn_after_its_first_record_continues_block_aligned(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    last = [make_record(3, i, size=1500) for i in range(3)]
    # One group of exactly these three: it closes when they are queued (the long linger only
    # matters on a loaded machine, where the appends may be far apart).
    wal = BlockWal(path, size=SMALL_RING, linger=5.0,
                   group_bytes=sum(record_size(r) for r in last))
    start = recovered_end(wal)
    tail = [f.result(timeout=10) for f in [wal.append(r) for r in last]]
    wal.close()
    # The group starts where recovery ended, or on the next lap when the ring's random start
    # left it too little room before the ring's end (a wrap padding fills that).
    first = tail[0]
    assert first == start or first % SMALL_RING == 0
    patch_ring(path, SMALL_RING, tail[1], bytes(3 * 1600))  # records 1, 2 and the padding
    wal = BlockWal(path)
    recovery = wal.recover()
    assert [e.record for e in recovery.entries()] == last[:1]
    assert recovery.dropped == [] and recovery.end == first + BLOCK  # the next group's block
    assert wal.append(make_record(4, 0)).result(timeout=10) == first + BLOCK
    wal.close()
    wal = BlockWal(path)  # the lost padding was rewritten: nothing to report the second time
    recovery = wal.recover()
    assert [e.record for e in recovery.entries()] == [last[0], make_record(4, 0)]
    assert recovery.dropped == []
    wal.close()


def test_the_writer_persists_the_trim_before_overwriting(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    ring = 64 * 1024
    wal = BlockWal(path, size=ring, persist_trims=False)  # headers lag behind trims
    recover_all(wal)
    records = [make_record(1, i, size=3000) for i in range(60)]
    positions = []
    for r in records:
        positions.append(wal.append(r).result(timeout=10))
        wal.trim(positions[-1])
    end = wal.end_position
    wal.close()
    trim = newest(path).trim  # written by the writer itself, only as far as it had to
    assert end - ring <= trim <= positions[-1] and trim in positions
    wal = BlockWal(path)
    recovery = wal.recover()
    assert [e.record for e in recovery.entries()] == records[positions.index(trim):]
    assert recovery.dropped == [] and recovery.end == end
    wal.close()


def test_a_hole_inside_the_last_group_drops_the_whole_group(tmp_path: Path) -> None:
    """A machine crash kept a later page of the last group and lost an earlier one: that group
    was never synced, so recovery returns none of it and appends go on at its start."""
    path = tmp_path / "ring"
    wal = BlockWal(path, size=SMALL_RING, direct_io=False)
    recover_all(wal)
    before = [make_record(1, i) for i in range(3)]
    for r in before:
        wal.append(r).result(timeout=10)
    wal.close()
    wal = BlockWal(path, size=SMALL_RING, direct_io=False, linger=0.2)
    recover_all(wal)
    # One group whose second record starts on a 4 KiB boundary, where recovery resyncs.
    size = next(n for n in range(3000, 4096) if record_size(make_record(2, 0, size=n)) == BLOCK)
    futures = [wal.append(make_record(2, i, size=size if i == 0 else 1500)) for i in range(4)]
    group = [f.result(timeout=10) for f in futures]
    assert group[1] == group[0] + BLOCK
    wal.close()
    patch_ring(path, SMALL_RING, group[0] + 100, bytes(200))  # record 0 torn, 1-3 kept
    wal = BlockWal(path)
    recovery = wal.recover()
    assert [e.record for e in recovery.entries()] == before
    assert recovery.dropped == [] and recovery.end == group[0]
    assert wal.append(make_record(3, 0)).result(timeout=10) == group[0]
    wal.close()


def test_a_hole_in_a_last_group_that_began_before_the_trim_is_damage(tmp_path: Path) -> None:
    """A trim inside the last group comes after that group's sync, so a hole in it is damage,
    not a torn write: recovery keeps the records around it and appends go on after them. Taken
    for a torn group, it sent appends back to the group's start, before the trim, where the
    next recovery — which starts at the trim — never looked for them."""
    path = tmp_path / "ring"
    wal = BlockWal(path, size=SMALL_RING, direct_io=False)
    recover_all(wal)
    wal.close()
    # One group of four one-block records (so that each starts on a boundary, where recovery
    # resyncs); it closes when the four are queued.
    size = next(n for n in range(3000, 4096) if record_size(make_record(2, 0, size=n)) == BLOCK)
    records = [make_record(2, i, size=size) for i in range(4)]
    wal = BlockWal(path, direct_io=False, linger=60.0, group_bytes=4 * BLOCK)
    recover_all(wal)
    group = [f.result(timeout=10) for f in [wal.append(r) for r in records]]
    assert group == [group[0] + i * BLOCK for i in range(4)]
    wal.trim(group[1])  # records 0 and 1 uploaded; the trim reaches the header
    wal.close()
    assert newest(path).trim == group[1]
    patch_ring(path, SMALL_RING, group[2] + 100, bytes(200))  # the medium lost record 2
    wal = BlockWal(path, direct_io=False)
    recovery = wal.recover()
    assert [e.record for e in recovery.entries()] == [records[1], records[3]]
    assert recovery.dropped == [Damage(group[2], group[3],
                                       "damaged bytes between valid records")]
    assert recovery.end == group[3] + BLOCK
    after = make_record(3, 0)
    assert wal.append(after).result(timeout=10) == group[3] + BLOCK
    wal.close()
    wal = BlockWal(path, direct_io=False)
    assert [e.record for e in recover_all(wal)] == [records[1], records[3], after]
    wal.close()
