"""What decoding costs in memory is bounded by the bytes present, not by the counts and lengths
they claim: the codec allocates as records and batches prove valid, and a compressed block's
output only once its raw_length is possible for its stored bytes (docs/format.md). Each input
below is sound up to its checksums, so only those bounds stand between it and the allocation.

Memory is the peak RSS growth of a child process running the active backend (the suite runs once
per backend): it sees the C code's allocations as well as Python's. The peak is Linux's VmHWM,
reset just before the call (``ru_maxrss`` would not do: a child started by vfork and exec
inherits its parent's peak, here the test process's)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest
import xxhash
import zstandard

from streamlib import CorruptDataError, codec

MiB = 1 << 20
FLAG_RECORDS = 1

CHILD = textwrap.dedent("""
    import sys, time
    from streamlib import codec

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    with open(sys.argv[1], "rb") as f:
        data = f.read()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) is now the current RSS
    before = status("VmRSS:")
    cpu = time.process_time()
    try:
        {call}
        outcome = "decoded"
    except codec.CorruptDataError as e:
        outcome = str(e)
    cpu = time.process_time() - cpu
    print(status("VmHWM:") - before, cpu, codec.backend, outcome, sep="\\n")
""")


def peak_growth(call: str, data: bytes, tmp_path: Path) -> tuple[int, float, str]:
    """(peak RSS growth in bytes, CPU seconds, error message) of ``call`` on ``data`` in a child
    process of the active backend."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    env = dict(os.environ, STREAMLIB_PURE="0" if codec.backend == "c" else "1")
    out = subprocess.run([sys.executable, "-c", CHILD.format(call=call), str(path)], env=env,
                         capture_output=True, text=True, check=True, timeout=300).stdout
    grown, cpu, backend, outcome = out.splitlines()
    assert backend == codec.backend
    print(f"{backend}: {len(data)} bytes in, peak RSS growth {int(grown) / MiB:.1f} MiB, "
          f"{float(cpu):.2f} s CPU: {outcome}")  # pytest -rP shows it
    return int(grown), float(cpu), outcome


def framed(payload: bytes, count: int, flags: int = FLAG_RECORDS, base_offset: int = 0) -> bytes:
    """A batch whose header holds, checksum included, around any payload and count."""
    tail = struct.pack("<BBHIIQqqq", 1, flags, 0, len(payload), count, 1, base_offset, 0, 0)
    digest = xxhash.xxh64(tail)
    digest.update(payload)
    return b"SLRB" + struct.pack("<Q", digest.intdigest()) + tail + payload


def block(stored: bytes, compression: int, raw_length: int, batches: int, records: int) -> bytes:
    """A data block whose header holds, checksum included, around any stored bytes."""
    tail = struct.pack("<BBHIIIIQqqq", 1, compression, 0, len(stored), raw_length, batches,
                       records, 1, 0, 0, 0)
    digest = xxhash.xxh64(tail)
    digest.update(stored)
    return b"SLDB" + struct.pack("<Q", digest.intdigest()) + tail + stored


def zstd(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)


def test_a_payload_claiming_a_record_per_6_bytes_costs_what_its_valid_records_do(
        tmp_path: Path) -> None:
    # 8 MiB of zeros: the count (size / 6, the most the format lets it claim) passes the
    # header's checks, the first record fails. Spans for every claimed record would be 75 MiB.
    payload = bytes(8 * MiB)
    grown, _, outcome = peak_growth(f"codec.decode_records(data, {len(payload) // 6}, 0)",
                                    payload, tmp_path)
    assert "malformed varint" in outcome
    assert grown < 4 * MiB, f"decoding grew the process by {grown / MiB:.1f} MiB"


def test_a_small_zstd_block_of_one_batch_claiming_many_records_costs_its_raw_length(
        tmp_path: Path) -> None:
    # 16 MiB of zeros framed as one records batch compress to about 600 bytes; the payload is
    # decompressed (16 MiB) and copied out of the block (16 MiB), then refused at its first
    # record, before any span of the 2.8 million records it claims is allocated.
    payload = bytes(16 * MiB)
    raw = framed(payload, len(payload) // 6)
    data = block(zstd(raw), 2, len(raw), 1, len(payload) // 6)
    assert len(data) < 1000
    grown, _, outcome = peak_growth(
        "for batch in codec.decode_block(data)[1]: batch.records()", data, tmp_path)
    assert "malformed varint" in outcome
    assert grown < 2 * len(raw) + 4 * MiB, f"decoding grew the process by {grown / MiB:.1f} MiB"


def test_a_small_zstd_block_of_copies_of_one_batch_stops_at_the_second(tmp_path: Path) -> None:
    # 16 MiB of one 64-byte batch repeated compress to about 1.5 KB, every copy with a valid
    # checksum: the second copy is at the wrong offset, and that is where decoding stops, before
    # a batch object for each of the 262,144 copies is made.
    one = framed(bytes(8), 1, flags=0)
    copies = 16 * MiB // len(one)
    data = block(zstd(one * copies), 2, len(one) * copies, copies, copies)
    grown, cpu, outcome = peak_growth("codec.decode_block(data)", data, tmp_path)
    assert "batch at offset `0`, expected `1`" in outcome
    assert grown < 16 * MiB + 8 * MiB, f"decoding grew the process by {grown / MiB:.1f} MiB"
    assert cpu < 5, f"decoding took {cpu:.1f} s of CPU"


@pytest.mark.parametrize("compression, most", [(1, 255), (2, 32 * 1024)], ids=["lz4", "zstd"])
def test_a_raw_length_beyond_what_the_stored_bytes_can_expand_to_is_refused_unallocated(
        compression: int, most: int) -> None:
    # A zstd frame's header (from 64 MiB of zeros) declares the header's raw_length, as the
    # format asks; 40 stored bytes can hold at most 40 x 32 KiB of it. lz4 has no header: any
    # 40 bytes are refused beyond 40 x 255.
    raw_length = 64 * MiB
    stored = zstd(bytes(raw_length))[:40] if compression == 2 else bytes(40)
    data = block(stored, compression, raw_length, 1, 1)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match="cannot decompress to") as caught:
            codec.decode_block(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB
    assert caught.value.position == 64
    # At the bound, the header is let through to the decompressor (which then refuses the bytes).
    at_bound = block(stored, compression, most * len(stored), 1, 1)
    with pytest.raises(CorruptDataError, match=r"does not decompress|declares"):
        codec.decode_block(at_bound)
