"""The golden files pin the batch and block format, version 1 (docs/format.md), and the file
WAL's segment (docs/wal.md): a change to the bytes fails here."""

from __future__ import annotations

import pathlib
import shutil
import struct
import sys

import pytest
import xxhash

from streamlib import Record, codec
from streamlib.wal.file import FileWal

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))

import make_golden  # noqa: E402
from cases import BASE_OFFSET, RECORDS, STREAM_ID, block_batches, records_batch  # noqa: E402

EXACT = ["batch_records.bin", "batch_opaque.bin", "block_none.bin", "wal_segment.bin"]


@pytest.mark.parametrize("name", EXACT)
def test_encoding_gives_the_golden_bytes(name: str) -> None:
    assert make_golden.files()[name] == (GOLDEN / name).read_bytes()


@pytest.mark.parametrize("name", ["block_none.bin", "block_lz4.bin", "block_zstd.bin"])
def test_golden_blocks_decode(name: str) -> None:
    # Compressed bytes come from the lz4 / zstd libraries, so only their decoding is pinned.
    info, batches = codec.decode_block((GOLDEN / name).read_bytes())
    assert batches == block_batches()
    assert info.compression == name.split("_")[1].removesuffix(".bin")
    assert (info.stream_id, info.base_offset, info.batch_count) == (STREAM_ID, BASE_OFFSET, 3)


def test_golden_records_decode() -> None:
    info, batch = codec.decode_batch((GOLDEN / "batch_records.bin").read_bytes())
    assert (info.stream_id, info.base_offset, info.count) == (STREAM_ID, BASE_OFFSET, len(RECORDS))
    assert batch.records() == [Record(r.value, r.key, r.headers, r.timestamp) for r in RECORDS]
    assert batch.payload == records_batch().payload


def test_batch_header_layout_read_by_hand() -> None:
    """The header as docs/format.md draws it, read with struct alone."""
    data = (GOLDEN / "batch_opaque.bin").read_bytes()
    magic, checksum = data[:4], struct.unpack_from("<Q", data, 4)[0]
    version, flags, reserved, length, count, stream, base, ts, top = struct.unpack_from(
        "<BBHIIQqqq", data, 12)
    assert magic == b"SLRB" and version == 1 and flags == 0 and reserved == 0
    assert (length, count, stream, base) == (len(data) - 56, 12, STREAM_ID, 5)
    assert (ts, top) == (1_700_000_100_000, 1_700_000_100_999)
    assert checksum == xxhash.xxh64_intdigest(data[12:])


def test_block_header_layout_read_by_hand() -> None:
    data = (GOLDEN / "block_zstd.bin").read_bytes()
    assert data[:4] == b"SLDB"
    version, compression, reserved, stored, raw, batches, records, stream, base, first, top = (
        struct.unpack_from("<BBHIIIIQqqq", data, 12))
    assert (version, compression, reserved) == (1, 2, 0)
    assert stored == len(data) - 64 and raw == len((GOLDEN / "block_none.bin").read_bytes()) - 64
    assert (batches, records, stream, base) == (3, 5 + 20 + 12, STREAM_ID, BASE_OFFSET)
    # the first batch's base timestamp is its first record's; its fourth record holds INT64_MAX
    assert (first, top) == (1_700_000_000_000, (1 << 63) - 1)
    assert struct.unpack_from("<Q", data, 4)[0] == xxhash.xxh64_intdigest(data[12:])


def golden_wal(directory: pathlib.Path, start: int) -> FileWal:
    """A file WAL whose only segment is the golden one, named as starting at ``start``."""
    shutil.copy(GOLDEN / "wal_segment.bin", directory / f"{start:020d}.wal")
    return FileWal(directory, segment_bytes=make_golden.WAL_SEGMENT_BYTES)


def test_golden_wal_segment_recovers(tmp_path: pathlib.Path) -> None:
    wal = golden_wal(tmp_path, 0)
    recovery = wal.recover()
    entries = recovery.entries()
    wal.close()
    assert [e.record for e in entries] == make_golden.wal_records()
    assert recovery.dropped == [] and entries[0].position == 0


def test_golden_wal_segment_at_another_position_holds_nothing(tmp_path: pathlib.Path) -> None:
    """The same bytes as a recycled file's old records: each claims the position it was
    written at, so none is valid where it now lies."""
    wal = golden_wal(tmp_path, 4096)
    recovery = wal.recover()
    assert recovery.entries() == [] and recovery.end == 4096
    wal.close()


def test_wal_records_and_end_marker_read_by_hand() -> None:
    """The WAL record header and the end marker as docs/wal.md draws them, with struct alone."""
    data = (GOLDEN / "wal_segment.bin").read_bytes()
    at = group = 0
    for index in range(4):  # three records, one group each, then the end marker
        magic, checksum = data[at:at + 4], struct.unpack_from("<Q", data, at + 4)[0]
        version, kind, reserved, body, group_offset, position, epoch = struct.unpack_from(
            "<BBHIIqQ", data, at + 12)
        assert magic == b"SLWR" and version == 1 and reserved == 0
        assert checksum == xxhash.xxh64_intdigest(data[at + 12:at + 40])
        assert position == at
        if index < 3:
            assert group_offset == 0  # each group begins at its record
            group = at
            assert (kind, epoch) == (1, make_golden.WAL_EPOCH)
            assert data[at + 40:at + 44] == b"SLRB"  # the body: one framed batch
        else:
            assert (kind, body, epoch, group_offset) == (3, 0, 0, at - group)  # the last group's
        at += 40 + body
    assert len(data) == at
