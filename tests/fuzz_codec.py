"""Random-bytes fuzz loop over every decoder of both codec backends (run by `make asan`).

Not a pytest file: a time-bounded loop. Each round feeds the C and the Python decoders the same
input — pure noise, or a valid batch or block with bytes changed and, half the time, its checksum
recomputed so that the damage reaches the deeper checks — and requires that both return the same
result. Under AddressSanitizer any out-of-bounds access aborts the process.

    python tests/fuzz_codec.py --seconds 60 [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import struct
import sys
import time

import xxhash

from streamlib import Record, RecordBatch, codec
from streamlib.codec import _native, _python


def sample_batches(rng: random.Random) -> list[RecordBatch]:
    batches = []
    for _ in range(rng.randrange(1, 4)):
        records = [Record(rng.randbytes(rng.randrange(0, 60)),
                          key=rng.choice([None, b"", rng.randbytes(5)]),
                          headers=[("h\u00e9", rng.randbytes(3))] * rng.randrange(0, 3),
                          timestamp=rng.choice([None, rng.randrange(-(1 << 63), 1 << 63)]))
                   for _ in range(rng.randrange(1, 12))]
        batches.append(RecordBatch.from_records(records, timestamp=rng.randrange(0, 1 << 41)))
    return batches


def mutate(rng: random.Random, data: bytes, header: int) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        if not buf:
            break
        choice = rng.random()
        at = rng.randrange(len(buf))
        if choice < 0.6:
            buf[at] = rng.randrange(256)
        elif choice < 0.8:
            del buf[at:at + rng.randrange(1, 8)]
        else:
            buf[at:at] = rng.randbytes(rng.randrange(1, 8))
    if rng.random() < 0.5 and len(buf) >= header:  # reseal: judge the damage past the checksum
        buf[4:12] = struct.pack("<Q", xxhash.xxh64_intdigest(bytes(buf[12:])))
    return bytes(buf)


def same(name: str, *args: object) -> None:
    a, b = getattr(_python, name)(*args), getattr(_native, name)(*args)
    if a != b:
        raise SystemExit(f"backends differ on {name}{args!r}:\n  python={a!r}\n  c={b!r}")


def one_round(rng: random.Random) -> None:
    batches = sample_batches(rng)
    offsets = [0]
    for b in batches:
        offsets.append(offsets[-1] + b.count)
    frames = b"".join(codec.encode_batch(1, o, b) for o, b in zip(offsets, batches, strict=False))
    placed = [b.with_offset(o) for o, b in zip(offsets, batches, strict=False)]
    block = codec.encode_block(1, placed, compression=rng.choice(["none", "lz4", "zstd"]))

    noise = rng.randbytes(rng.randrange(0, 300))
    damaged_frames = mutate(rng, frames, 56)
    damaged_block = mutate(rng, block, 64)
    for buf in (noise, damaged_frames):
        same("scan_batches", buf, 0, rng.choice([None, 1, 2]))
    for buf in (noise, damaged_block):
        same("scan_blocks", buf, 0, rng.choice([None, 1]))
        # the facade over the active backend: decompression and content checks too
        with contextlib.suppress(codec.CorruptDataError):
            codec.decode_block(buf)
    payload = mutate(rng, batches[0].payload, 1 << 30)  # never resealed: payloads have no header
    count = rng.choice([batches[0].count, rng.randrange(1, 40)])
    if count <= len(payload) // 6:
        same("records_index", payload, count, batches[0].base_timestamp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    deadline = time.monotonic() + args.seconds
    rounds = 0
    while time.monotonic() < deadline:
        one_round(rng)
        rounds += 1
    print(f"fuzz_codec: {rounds} rounds in {args.seconds:.0f} s, seed {seed}, backends agree, "
          f"no crash (active backend: {codec.backend})")
    sys.exit(0)


if __name__ == "__main__":
    main()
