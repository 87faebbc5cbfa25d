"""What a forger who read the formats does to bytes after a mutation: checksums recomputed
(batches, blocks, WAL records, ring headers, object indexes and footers), a data block rebuilt
around changed contents, a zstd frame made to declare another size; and where each header's
fields lie, for the mutations that overwrite them with extreme values."""

from __future__ import annotations

import json
import random
import struct

import lz4.block
import xxhash
import zstandard

from fuzz.mutate import Field, MiB, Shape, dump_json, mutate_bytes, mutate_json
from streamlib import codec
from streamlib.meta import _manifest_checkpoint as checkpoint
from streamlib.wal import _format as wal_format

# ---- fields ----

BATCH_FIELDS = tuple(Field(b"SLRB", offset, width) for offset, width in
                     ((12, 1), (13, 1), (14, 2), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8),
                      (48, 8)))
BLOCK_FIELDS = tuple(Field(b"SLDB", offset, width) for offset, width in
                     ((12, 1), (13, 1), (14, 2), (16, 4), (20, 4), (24, 4), (28, 4), (32, 8),
                      (40, 8), (48, 8), (56, 8)))
FOOTER_FIELDS = (Field(b"", -32, 8), Field(b"", -24, 4), Field(b"", -20, 1),
                 Field(b"", -19, 1), Field(b"", -8, 4), Field(b"SLIX", 12, 4))
WAL_FIELDS = tuple(Field(wal_format.MAGIC, offset, width) for offset, width in
                   ((12, 1), (13, 1), (14, 2), (16, 4), (20, 4), (24, 8), (32, 8)))
RING_HEADER_FIELDS = tuple(Field(b"SLWH", o, 8) for o in range(16, 64, 8))


# ---- checksums ----

# magic: (header size, where the header says how many bytes follow it)
_FRAMES = {b"SLRB": (56, 16), b"SLDB": (64, 16)}
_RESEALED = 64  # frames resealed at most (the first ones found): a tiled input holds thousands


def positions(buf: bytes | bytearray, magic: bytes, limit: int = 4096) -> list[int]:
    found: list[int] = []
    at = buf.find(magic)
    while at >= 0 and len(found) < limit:
        found.append(at)
        at = buf.find(magic, at + 1)
    return found


def seal(buf: bytearray, at: int, end: int) -> None:
    """Checksum of ``buf[at + 12:end]`` into ``buf[at + 4:at + 12]``."""
    buf[at + 4:at + 12] = struct.pack("<Q", xxhash.xxh64_intdigest(bytes(buf[at + 12:end])))


def reseal_frames(buf: bytearray) -> None:
    """Recompute the checksum of every batch and block header found, the later ones first, so
    that a block resealed after the batches inside it covers their new checksums."""
    found = sorted(((at, magic) for magic in _FRAMES
                    for at in positions(buf, magic, _RESEALED)), reverse=True)
    for at, magic in found:
        header, length_at = _FRAMES[magic]
        if at + header <= len(buf):
            length = struct.unpack_from("<I", buf, at + length_at)[0]
            seal(buf, at, min(len(buf), at + header + length))


def reseal_wal(buf: bytearray) -> None:
    """Batches, then each WAL record header (its checksum covers the header's own fields)."""
    reseal_frames(buf)
    for at in positions(buf, wal_format.MAGIC, _RESEALED):
        if at + wal_format.HEADER_SIZE <= len(buf):
            seal(buf, at, at + wal_format.HEADER_SIZE)


def reseal_ring_header(buf: bytearray) -> None:
    for at in positions(buf, b"SLWH", 4):
        if at + 64 <= len(buf):
            seal(buf, at, at + 64)


def reseal_object(buf: bytearray) -> None:
    """Blocks and batches, the index block (where the footer says, else the last one found),
    then the footer."""
    reseal_frames(buf)
    n = len(buf)
    if n < 32 or buf[-4:] != b"SLOB":
        return
    position, size = struct.unpack_from("<QI", buf, n - 32)
    if not (position + size <= n - 32 and size >= 16 and buf[position:position + 4] == b"SLIX"):
        found = positions(buf, b"SLIX")
        position, size = (found[-1], n - 32 - found[-1]) if found else (n, 0)
    if size >= 16 and position + size <= n - 32:
        seal(buf, position, position + size)
    buf[n - 16:n - 8] = struct.pack("<Q", xxhash.xxh64_intdigest(bytes(buf[n - 32:n - 16])))


def reseal_block_ring(buf: bytearray) -> None:
    reseal_wal(buf)
    reseal_ring_header(buf)


# ---- rebuilt contents ----

def with_content_size(frame: bytes, size: int) -> bytes | None:
    """The zstd frame with its header's content size set to ``size`` (in a field of 8 bytes,
    whatever it had), the rest unchanged; None if ``frame`` is no zstd frame."""
    if len(frame) < 6 or frame[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = frame[4]
    single_segment, dictionary = descriptor >> 5 & 1, descriptor & 3
    at = 5 + (1 - single_segment) + (0, 1, 2, 4)[dictionary]
    width = (single_segment, 2, 4, 8)[descriptor >> 6]
    if at + width > len(frame):
        return None
    return (frame[:4] + bytes([descriptor | 0xC0]) + frame[5:at] + struct.pack("<Q", size)
            + frame[at + width:])


BATCHES = Shape(magics=(b"SLRB",), fields=BATCH_FIELDS)


def mutate_block(rng: random.Random, data: bytes) -> bytes | None:
    """A block rebuilt around changed contents, its header and checksums made to agree: the
    batches inside mutated (through the compression), or the raw length and a zstd frame's
    declared size set together to one value, as a forger who read the format would."""
    if len(data) < 64 or data[:4] != b"SLDB":
        return None
    fields = list(struct.unpack_from("<BBHIIIIQqqq", data, 12))
    compression, stored = fields[1], data[64:64 + fields[3]]
    if compression > 2 or fields[4] > MiB:
        return None
    try:
        if compression == 1:
            raw = lz4.block.decompress(stored, uncompressed_size=fields[4])
        elif compression == 2 and -1 <= zstandard.frame_content_size(stored) <= MiB:
            raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=MiB)
        elif compression == 0:
            raw = stored
        else:
            return None
    except (lz4.block.LZ4BlockError, zstandard.ZstdError):
        return None
    if compression == 2 and rng.random() < 0.3:
        claimed = min(0xFFFFFFFF, max(0, rng.choice((
            len(raw) - 1, len(raw) + 1, 2 * len(raw), 32 * 1024 * len(stored),
            32 * 1024 * len(stored) + 1, 64 * MiB, 128 * MiB))))
        lying = with_content_size(stored, claimed)
        if lying is None:
            return None
        fields[4], new_stored = claimed, lying
    else:
        raw = mutate_bytes(rng, raw, BATCHES, ())
        buf = bytearray(raw)
        if rng.random() < 0.7:
            reseal_frames(buf)
        raw = bytes(buf)
        if compression == 1:
            new_stored = lz4.block.compress(raw, store_size=False)
        elif compression == 2:
            new_stored = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
        else:
            new_stored = raw
        fields[4] = len(raw)
        if rng.random() < 0.5:  # the counts as the batches now say, not as before
            scan = codec.scan_batches(raw, strict=False)
            fields[5] = len(scan.entries) or fields[5]
            fields[6] = sum(b.count for b in scan.entries) or fields[6]
    fields[3] = len(new_stored)
    header = bytearray(data[:12] + struct.pack("<BBHIIIIQqqq", *fields))
    block = header + new_stored
    seal(block, 0, len(block))
    return bytes(block) + data[64 + len(stored):]


def mutate_checkpoint(rng: random.Random, data: bytes) -> bytes | None:
    """The checkpoint's JSON mutated and compressed again: with its size declared, as writers
    do; without it; or declaring the largest size a checkpoint may have."""
    try:
        if not -1 <= zstandard.frame_content_size(data) <= MiB:  # it allocates what is declared
            return None
        value = json.loads(zstandard.ZstdDecompressor().decompress(data, max_output_size=MiB))
    except (zstandard.ZstdError, ValueError):
        return None
    frame = zstandard.ZstdCompressor(write_content_size=rng.random() < 0.8).compress(
        dump_json(mutate_json(rng, value)))
    if rng.random() < 0.2:  # a frame that claims far more than it holds
        return with_content_size(frame, checkpoint.MAX_CHECKPOINT_BYTES) or frame
    return frame
