"""WAL recovery takes time linear in the bytes it scans, whatever they hold.

Each backend recovers a log whose valid records are followed by garbage: a file segment's tail,
a ring's live window, an object. Uniform random bytes are the easy case; the hard ones are
crafted so that every place the scan may resume at looks like a record until its body is
checked, and that body claims the rest of the garbage. A scan that checks each such candidate
in full is quadratic; recovery must not be.

Times are CPU seconds of the recovering thread (so that other processes on a loaded machine do
not count), and the bounds are generous: 4 MiB may take 8 times as long as 1 MiB plus a second,
and at most a few seconds. A quadratic scan takes 16 times as long, and tens of seconds.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streamlib import codec
from streamlib.io import ObjectStore
from streamlib.records import RecordBatch
from streamlib.testing.wal import make_record, recover_all
from streamlib.wal import Damage, Recovery, Wal
from streamlib.wal._format import HEADER_SIZE, TYPE_BATCH, header
from streamlib.wal.block import BLOCK, RING_START, BlockWal
from streamlib.wal.file import FileWal
from streamlib.wal.object import ObjectWal

KiB = 1 << 10
MiB = 1 << 20
SIZES = (1 * MiB, 4 * MiB)
# A batch header (docs/format.md): magic, checksum, version, flags, reserved, payload_length,
# count, stream_id, base_offset, base_timestamp, max_timestamp.
_BATCH = struct.Struct("<4sQBBHIIQqqq")
_UNIT = 128  # the spacing of crafted candidates: a record header and a batch header fit
Garbage = Callable[[int, int, random.Random], bytes]


def random_garbage(size: int, base: int, rng: random.Random) -> bytes:
    return rng.randbytes(size)


def long_garbage(size: int, base: int, rng: random.Random) -> bytes:
    """Every 128 bytes a record header valid at its own position (``base`` + its offset) whose
    body claims the rest of the garbage and starts with a batch header whose payload does too,
    under a wrong checksum: each is rejected only once the rest has been hashed."""
    buf = bytearray(rng.randbytes(size))
    at = -base % _UNIT
    while at + _UNIT <= size:
        body = size - at - HEADER_SIZE
        buf[at:at + HEADER_SIZE] = header(TYPE_BATCH, body, base + at, 1, base + at)
        buf[at + HEADER_SIZE:at + HEADER_SIZE + _BATCH.size] = _BATCH.pack(
            b"SLRB", rng.getrandbits(64), 1, 0, 0, body - _BATCH.size, 1, 0, 0, 0, 0)
        at += _UNIT
    return bytes(buf)


def chained_garbage(size: int, base: int, rng: random.Random) -> bytes:
    """At every 4 KiB-aligned position a record header valid at its own position whose body
    claims the rest of the garbage: a chain of small valid batches (each next header is the end
    of one's payload), so that each body holds thousands of batches where a record has one."""
    buf = bytearray(rng.randbytes(size))
    first = -base % BLOCK
    for at in range(first, size - HEADER_SIZE, BLOCK):
        buf[at:at + HEADER_SIZE] = header(TYPE_BATCH, size - at - HEADER_SIZE, base + at, 1,
                                          base + at)
    # 4 KiB is 32 units: the batch of each 32nd unit ends with the next record header.
    for at in range(first + HEADER_SIZE, size - _UNIT + 1, _UNIT):
        payload = RecordBatch(bytes(buf[at + _BATCH.size:at + _UNIT]), 1, base_timestamp=0)
        buf[at:at + _BATCH.size] = codec.batch_header(0, 0, payload)
    return bytes(buf)


GARBAGE = pytest.mark.parametrize("garbage", [random_garbage, long_garbage, chained_garbage],
                                  ids=["random", "long", "chained"])


def timed(wal: Wal) -> tuple[float, Recovery, list[int]]:
    """CPU seconds of this thread to recover ``wal``; the recovery; the recovered offsets."""
    started = time.thread_time()
    recovery = wal.recover()
    entries = recovery.entries()
    spent = time.thread_time() - started
    wal.close()
    return spent, recovery, [e.record.base_offset for e in entries]


def check_linear(times: dict[int, float]) -> None:
    """4 times the bytes: at most 8 times the time and a second, and a few seconds at most."""
    small, large = times[SIZES[0]], times[SIZES[1]]
    assert large < 8 * small + 1.0 and large < 4.0, (
        f"recovery time grows faster than the bytes scanned (seconds by size): {times}")


def file_recovery(path: Path, size: int, garbage: Garbage) -> float:
    wal = FileWal(path)
    recover_all(wal)
    for i in range(3):
        wal.append(make_record(1, i)).result(timeout=30)
    end = wal.end_position
    wal.close()
    (segment,) = path.glob("*.wal")
    with open(segment, "r+b") as f:  # garbage in place of its end marker and preallocation
        f.truncate(end - int(segment.stem))
        f.seek(end - int(segment.stem))
        f.write(garbage(size, end, random.Random(size)))
    spent, recovery, offsets = timed(FileWal(path))
    assert offsets == [0, 1, 2]
    assert recovery.dropped == [Damage(end, end + size, "torn tail (never acknowledged)")]
    return spent


def block_recovery(path: Path, size: int, garbage: Garbage) -> float:
    # A ring four times the garbage: its longest record, and so the window recovery reads at
    # once, spans all of the garbage.
    ring = 4 * size + 64 * KiB
    wal = BlockWal(path, size=ring)
    recover_all(wal)
    for i in range(3):
        wal.append(make_record(1, i)).result(timeout=30)
    end = wal.end_position
    wal.close()
    data = garbage(size, end, random.Random(size))
    with open(path, "r+b") as f:  # the garbage's logical positions, wrapping at the ring's end
        offset = end % ring
        f.seek(RING_START + offset)
        f.write(data[:ring - offset])
        f.seek(RING_START)
        f.write(data[ring - offset:])
    spent, recovery, offsets = timed(BlockWal(path))
    assert offsets == [0, 1, 2]
    assert recovery.dropped == [] and recovery.end == end  # the ring's end is not damage
    return spent


def object_recovery(path: Path, size: int, garbage: Garbage) -> float:
    store = ObjectStore.from_url(f"file://{path}")
    wal = ObjectWal(store, "node-1")
    recover_all(wal)
    for i in range(3):
        wal.append(make_record(1, i)).result(timeout=30)
    end, epoch = wal.end_position, wal.epoch
    wal.close()
    # One more object of the same epoch, after the others, holding the garbage.
    store.put(f"wal/node-1/{epoch:020d}/{end:020d}-{end + size:020d}-{end:020d}.wal",
              garbage(size, end, random.Random(size)))
    spent, recovery, offsets = timed(ObjectWal(store, "node-1"))
    assert offsets == [0, 1, 2]
    assert recovery.dropped == [Damage(end, end + size, "damaged end of a WAL object")]
    return spent


@GARBAGE
@pytest.mark.parametrize("recover", [file_recovery, block_recovery, object_recovery],
                         ids=["file", "block", "object"])
def test_recovery_time_is_linear_in_the_garbage_scanned(
        tmp_path: Path, garbage: Garbage, recover: Callable[[Path, int, Garbage], float]
        ) -> None:
    check_linear({size: recover(tmp_path / str(size), size, garbage) for size in SIZES})
