"""Damaged bytes never crash the codec and never come back as data: every kind of damage
raises CorruptDataError naming the position (docs/format.md lists the checks)."""

from __future__ import annotations

import contextlib
import struct

import lz4.block
import pytest
import zstandard
from strategies import reseal

from streamlib import CorruptDataError, Record, RecordBatch, codec
from streamlib.codec import _status as st

RECORDS = [Record(b"value-1", key=b"k", headers=[("h", b"v")], timestamp=100),
           Record(b"", timestamp=90), Record(b"third", key=b"", timestamp=120)]
BATCH = RecordBatch.from_records(RECORDS)
FRAME = codec.encode_batch(7, 1000, BATCH)


def patched(frame: bytes, fmt: str, offset: int, value: int) -> bytes:
    buf = bytearray(frame)
    struct.pack_into(fmt, buf, offset, value)
    return reseal(buf)


def raises_at(status: int, at: int, call, *args, **kwargs) -> CorruptDataError:  # type: ignore[no-untyped-def]
    with pytest.raises(CorruptDataError) as info:
        call(*args, **kwargs)
    error = info.value
    assert (error.status, error.position) == (status, at), str(error)
    assert f"position=`{at}`" in str(error)
    return error


def test_every_single_bit_flip_of_a_batch_is_caught() -> None:
    for bit in range(len(FRAME) * 8):
        buf = bytearray(FRAME)
        buf[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptDataError) as info:
            codec.decode_batch(bytes(buf))
        assert info.value.position is not None
        scan = codec.scan_batches(bytes(buf), strict=False)
        assert scan.entries == [] and scan.end == 0 and scan.error is not None


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_every_single_bit_flip_of_a_block_is_caught(compression: str) -> None:
    block = codec.encode_block(3, [BATCH.with_offset(0), BATCH.with_offset(3)],
                               compression=compression)
    for bit in range(len(block) * 8):
        buf = bytearray(block)
        buf[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptDataError):
            codec.decode_block(bytes(buf))


def test_every_truncation_is_caught_at_the_batch_start_or_its_length() -> None:
    second = len(FRAME)
    two = FRAME + codec.encode_batch(7, 1003, BATCH)
    for cut in range(second + 1, len(two)):
        scan = codec.scan_batches(two[:cut], strict=False)
        assert len(scan.entries) == 1 and scan.end == second
        assert scan.error is not None and scan.error.status == st.TRUNCATED
        assert scan.error.position in (second, second + 16)


def test_length_past_the_end_and_beyond_the_limit() -> None:
    raises_at(st.TRUNCATED, 16, codec.decode_batch,
              patched(FRAME, "<I", 16, len(BATCH.payload) + 1))
    raises_at(st.BAD_LENGTH, 16, codec.decode_batch, patched(FRAME, "<I", 16, 64 * 2**20 + 1))


@pytest.mark.parametrize("count", [0, 2**31, 2**32 - 1, 10**6])
def test_absurd_counts(count: int) -> None:
    raises_at(st.BAD_COUNT, 20, codec.decode_batch, patched(FRAME, "<I", 20, count))


def test_count_that_the_payload_does_not_hold() -> None:
    _, batch = codec.decode_batch(patched(FRAME, "<I", 20, 4))  # header fine, records are 3
    with pytest.raises(CorruptDataError, match="record batch payload"):
        batch.records()
    _, batch = codec.decode_batch(patched(FRAME, "<I", 20, 2))
    with pytest.raises(CorruptDataError):
        batch.records()


def test_unknown_versions() -> None:
    raises_at(st.BAD_VERSION, 12, codec.decode_batch, patched(FRAME, "<B", 12, 2))
    block = codec.encode_block(1, [BATCH.with_offset(0)])
    raises_at(st.BAD_VERSION, 12, codec.decode_block, patched(block, "<B", 12, 2))


def test_unknown_flags_and_compression() -> None:
    raises_at(st.BAD_FLAGS, 13, codec.decode_batch, patched(FRAME, "<B", 13, 0x03))
    raises_at(st.BAD_FLAGS, 13, codec.decode_batch, patched(FRAME, "<H", 14, 1))
    block = codec.encode_block(1, [BATCH.with_offset(0)])
    for code in (3, 7, 255):
        raises_at(st.BAD_FLAGS, 13, codec.decode_block, patched(block, "<B", 13, code))


def test_bad_offsets_and_timestamps_in_a_sealed_header() -> None:
    raises_at(st.BAD_OFFSET, 32, codec.decode_batch, patched(FRAME, "<q", 32, -1))
    raises_at(st.BAD_OFFSET, 32, codec.decode_batch, patched(FRAME, "<q", 32, 2**63 - 2))
    raises_at(st.BAD_TIMESTAMP, 48, codec.decode_batch, patched(FRAME, "<q", 48, 89))


def test_bad_magic_and_checksum() -> None:
    raises_at(st.BAD_MAGIC, 0, codec.decode_batch, b"XLRB" + FRAME[4:])
    buf = bytearray(FRAME)
    buf[-1] ^= 0xFF
    raises_at(st.BAD_CHECKSUM, 4, codec.decode_batch, bytes(buf))
    raises_at(st.BAD_MAGIC, 0, codec.decode_block, FRAME)  # a batch is not a block


def payload_with(fields: bytes, count: int = 1) -> bytes:
    """A sealed frame around a hand-made records payload (one record: length + fields)."""
    payload = bytes([len(fields)]) + fields
    header = bytearray(FRAME[:56])
    struct.pack_into("<IIQqqq", header, 16, len(payload), count, 7, 0, 0, 0)
    return reseal(header + payload)


@pytest.mark.parametrize("fields, status, position", [
    # ts_delta, offset_delta, key_len (zigzag: 1 is -1, no key), value_len, value, header_count
    (bytes([0, 0, 1, 1]) + b"v" + bytes([0]), st.OK, None),
    (bytes([2, 0, 1, 1]) + b"v" + bytes([0]), st.BAD_RECORD, 1),        # first ts delta not 0
    (bytes([0, 5, 1, 1]) + b"v" + bytes([0]), st.BAD_RECORD, 2),        # offset delta not 0
    (bytes([0, 0, 3, 1]) + b"v" + bytes([0]), st.BAD_LENGTH, 3),        # key_len -2
    (bytes([0, 0, 40, 1]) + b"v" + bytes([0]), st.BAD_LENGTH, 3),       # key past the record
    (bytes([0, 0, 1, 9]) + b"v" + bytes([0]), st.BAD_LENGTH, 4),        # value past the record
    (bytes([0, 0x80, 0x00, 1, 1]) + b"v" + bytes([0]), st.BAD_VARINT, 2),  # overlong varint
    (bytes([0, 0, 1, 1]) + b"v" + bytes([9]), st.BAD_COUNT, 6),         # headers do not fit
    (bytes([0, 0, 1, 1]) + b"v" + bytes([1, 2]) + b"\xff\xfe" + bytes([0]), st.BAD_UTF8, 8),
    (bytes([0, 0, 1, 1]) + b"v" + bytes([0, 0]), st.BAD_LENGTH, 7),     # a byte left over
    (bytes([0, 0, 1, 1]) + b"v", st.BAD_VARINT, 6),                     # header count missing
])
def test_damage_inside_a_records_payload(fields: bytes, status: int, position: int | None) -> None:
    _, batch = codec.decode_batch(payload_with(fields))  # the frame itself is sound
    if status == st.OK:
        assert batch.records() == [Record(b"v", timestamp=0)]  # key_len 1 is zigzag -1: no key
    else:
        raises_at(status, position, codec.decode_records, batch.payload, 1, 0)


def test_records_past_the_count_and_trailing_bytes() -> None:
    payload = BATCH.payload + b"\x00" * 6
    raises_at(st.BAD_LENGTH, len(BATCH.payload), codec.decode_records, payload, 3, 100)


def test_decode_position_is_reported_relative_to_the_buffer() -> None:
    error = raises_at(st.BAD_RECORD, 57, codec.decode_records,
                      payload_with(bytes([2, 0, 1, 1]) + b"v" + bytes([0]))[56:], 1, 0,
                      position=56, source="wal/0001.seg")
    assert "wal/0001.seg" in str(error)


def sealed_block(stored: bytes, compression: int, raw_length: int) -> bytes:
    header = bytearray(codec.encode_block(1, [BATCH.with_offset(0)])[:64])
    struct.pack_into("<BBHII", header, 12, 1, compression, 0, len(stored), raw_length)
    return reseal(header + stored)


def test_decompression_failures() -> None:
    raw = codec.encode_batch(1, 0, BATCH)
    # a zstd frame whose declared size is not the header's: refused before decompressing
    lying = zstandard.ZstdCompressor().compress(raw + b"\x00" * 10_000)
    with pytest.raises(CorruptDataError, match="zstd frame declares"):
        codec.decode_block(sealed_block(lying, 2, len(raw)))
    with pytest.raises(CorruptDataError, match="does not decompress"):
        codec.decode_block(sealed_block(b"\xff" * 40, 1, len(raw)))
    with pytest.raises(CorruptDataError, match="zstd frame"):
        codec.decode_block(sealed_block(b"\x28\xb5\x2f\xfd" + b"\x00" * 20, 2, len(raw)))
    with pytest.raises(CorruptDataError, match="zstd block does not decompress"):
        codec.decode_block(sealed_block(b"\xff" * 40, 2, len(raw)))


def with_content_size(frame: bytes, size: int) -> bytes:
    """The zstd frame with its header's content size set to ``size`` (in a field as wide as
    before), the rest unchanged."""
    descriptor = frame[4]
    single_segment, dictionary = descriptor >> 5 & 1, descriptor & 3
    at = 5 + (1 - single_segment) + (0, 1, 2, 4)[dictionary]
    width = (single_segment, 2, 4, 8)[descriptor >> 6]
    stored = size - 256 if width == 2 else size
    return frame[:at] + stored.to_bytes(width, "little") + frame[at + width:]


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
@pytest.mark.parametrize("change", [-1, 1, 1000])
def test_decompression_yields_exactly_raw_length_bytes(compression: str, change: int) -> None:
    # The header's raw_length, and for zstd the frame's content size with it, one byte short of
    # what the stored bytes hold, one byte past it, or far past it: never a block.
    raw = codec.encode_batch(1, 0, RecordBatch(b"compressible " * 200, 4, base_timestamp=7))
    claimed = len(raw) + change
    if compression == "lz4":
        stored = lz4.block.compress(raw, store_size=False)
        expected = "does not decompress" if change < 0 else f"decompresses to `{len(raw)}` bytes"
    else:
        stored = with_content_size(zstandard.ZstdCompressor().compress(raw), claimed)
        assert zstandard.frame_content_size(stored) == claimed
        expected = "zstd block does not decompress"
    with pytest.raises(CorruptDataError, match=expected) as caught:
        codec.decode_block(sealed_block(stored, codec.COMPRESSIONS[compression], claimed))
    assert (caught.value.status, caught.value.position) == (st.BAD_LENGTH, 64)


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
@pytest.mark.parametrize("extra", [b"\x00", b"junk", None],
                         ids=["a zero byte", "junk", "a second frame"])
def test_bytes_after_the_compressed_data_are_damage(compression: str, extra: bytes | None
                                                    ) -> None:
    batch = RecordBatch(b"compressible " * 100, 4, base_timestamp=7, base_offset=0)
    block = codec.encode_block(1, [batch], compression=compression)
    info, _ = codec.decode_block(block)
    assert info.compression == compression  # compressed, not stored as it is
    stored = block[64:]
    damaged = bytearray(block + (stored if extra is None else extra))
    struct.pack_into("<I", damaged, 16, len(damaged) - 64)  # stored_length, then resealed
    with pytest.raises(CorruptDataError, match=f"{compression} block does not decompress"
                       ) as caught:
        codec.decode_block(reseal(damaged), source="obj")
    assert (caught.value.status, caught.value.position, caught.value.source) == (
        st.BAD_LENGTH, 64, "obj")


def test_block_header_that_contradicts_its_batches() -> None:
    block = codec.encode_block(1, [BATCH.with_offset(0), BATCH.with_offset(3)])
    for fmt, offset, value, what in [("<I", 28, 7, "records"), ("<Q", 32, 2, "stream"),
                                     ("<q", 40, 1, "offset"), ("<q", 48, 91, "first timestamp"),
                                     ("<I", 24, 1, "batches")]:
        with pytest.raises(CorruptDataError, match="contradict") as info:
            codec.decode_block(patched(block, fmt, offset, value))
        assert what in str(info.value)


def test_random_bytes_never_decode() -> None:
    import random

    rng = random.Random(1)
    for _ in range(2000):
        junk = rng.randbytes(rng.randrange(0, 200))
        for call in (codec.decode_batch, codec.decode_block):
            with pytest.raises(CorruptDataError):
                call(junk)
        if len(junk) >= 6:  # random bytes may happen to be valid records: then they decode
            with contextlib.suppress(CorruptDataError):
                codec.decode_records(junk, rng.randrange(1, len(junk) // 6 + 1), 0)
