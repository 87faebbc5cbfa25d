"""streamlib quickstart: records, batches, and the bytes they become.

Run with `make demo`. The stream store itself (open, append, fetch) lands on top of this codec;
this walk-through shows what every append will write and every reader will check.
"""

from __future__ import annotations

import streamlib
from streamlib import CorruptDataError, Record, RecordBatch, codec


def main() -> None:
    print(f"streamlib {streamlib.__version__}, codec backend: {codec.backend}")

    # A batch from records: keys, headers and timestamps are all optional.
    batch = RecordBatch.from_records([
        Record(b'{"event": "signup", "user": "ada"}', key=b"ada", timestamp=1_700_000_000_000),
        Record(b'{"event": "login", "user": "ada"}', key=b"ada",
               headers={"trace-id": b"7f3a"}, timestamp=1_700_000_000_250),
        Record(b'{"event": "signup", "user": "lin"}'),  # no key, takes the batch's time
    ], timestamp=1_700_000_000_500)
    print(f"\n{batch}")

    # A broker with its own record format brings an opaque payload and a record count.
    opaque = RecordBatch(b"\x00my-own-format\x00", count=4, base_timestamp=1_700_000_001_000)

    # Framed at their offsets in stream 42: what the write-ahead log will hold.
    log = codec.encode_batch(42, 0, batch) + codec.encode_batch(42, batch.count, opaque)
    print(f"\nframed log of {len(log)} bytes:")
    for info in codec.scan_batches(log).entries:
        print(f"  @{info.position:<4} stream={info.stream_id} offsets "
              f"[{info.base_offset}, {info.next_offset}) {info.encoding}")

    # Read back: records come with their timestamps.
    for _, read in codec.read_batches(log):
        if read.encoding == "records":
            for i, record in enumerate(read.records()):
                print(f"  offset {read.base_offset + i}: {record}")

    # A data block: a run of one stream's batches, compressed as a unit, as objects store them.
    placed = [batch.with_offset(0), opaque.with_offset(batch.count)]
    for compression in ("none", "lz4", "zstd"):
        block = codec.encode_block(42, placed, compression=compression)
        info = codec.scan_blocks(block).entries[0]
        print(f"\nblock ({compression:>4}): {info.raw_length} bytes of batches stored in "
              f"{info.stored_length} ({info.compression})")

    # Damage is found, never returned: flip one bit of the log.
    damaged = bytearray(log)
    damaged[70] ^= 0x10
    scan = codec.scan_batches(bytes(damaged), strict=False)
    print(f"\nafter a flipped bit: {len(scan.entries)} good batches, then {scan.error}")
    try:
        codec.read_batches(bytes(damaged))
    except CorruptDataError as e:
        print(f"strict read refuses it: {type(e).__name__} at position {e.position}")


if __name__ == "__main__":
    main()
