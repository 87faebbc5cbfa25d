"""The child of the WAL crash test: recover, then append as fast as possible until killed.

    python wal_crash_child.py SPEC ACKLOG SEED

SPEC names the WAL (see ``open_wal``). After recovery the child prints ``ready`` and appends
records of 4 streams with up to 64 appends in flight, continuing each stream right after its
last recovered offset. Each acknowledged append is written to ACKLOG as
``A <stream> <offset> <position>`` with one unbuffered write, after its future completed; every
trim as ``T <position>`` just before ``trim`` is called. The child never stops by itself.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import deque

from streamlib.testing.wal import make_record
from streamlib.wal import Wal, WalRecord

STREAMS = 4
IN_FLIGHT = 64
KEEP = 2000  # acknowledged records kept untrimmed (trim the rest, so the WAL stays small)


def open_wal(spec: str) -> Wal:
    """``file:DIR``, ``block:PATH:SIZE`` (``block:PATH:buffered:SIZE`` without O_DIRECT) or
    ``object:URL``; for an ``s3://`` URL the storage
    options (endpoint, credentials) come as JSON in S3_STORAGE_OPTIONS."""
    kind, _, rest = spec.partition(":")
    if kind == "file":
        from streamlib.wal.file import FileWal

        return FileWal(rest, segment_bytes=1 << 20)
    if kind == "block":
        from streamlib.wal.block import BlockWal

        path, _, size = rest.rpartition(":")
        buffered = path.endswith(":buffered")  # block:PATH:buffered:SIZE
        if buffered:
            path = path.removesuffix(":buffered")
        return BlockWal(path, size=int(size), direct_io=False if buffered else None)
    if kind == "object":
        from streamlib.io import ObjectStore
        from streamlib.wal.object import ObjectWal

        options = json.loads(os.environ.get("S3_STORAGE_OPTIONS", "null"))  # a test server's
        return ObjectWal(ObjectStore.from_url(rest, options), node_id=1)
    raise SystemExit(f"unknown WAL spec: {spec}")


def expected(stream: int, offset: int) -> WalRecord:
    """The one record the child ever appends at (stream, offset): the parent rebuilds it."""
    size = (20, 100, 300, 1000, 3000)[(stream * 31 + offset * 17) % 5] + offset % 50
    return make_record(stream, offset, size=size, epoch=1 + stream)


def main() -> None:
    spec, acklog, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    wal = open_wal(spec)
    next_offset = [0] * STREAMS
    for entry in wal.recover():
        next_offset[entry.record.stream_id] = entry.record.base_offset + 1
    log = os.open(acklog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("ready", flush=True)
    pending: deque = deque()
    acked: deque[int] = deque()
    while True:
        while len(pending) < IN_FLIGHT:
            stream = rng.randrange(STREAMS)
            offset = next_offset[stream]
            next_offset[stream] += 1
            pending.append((stream, offset, wal.append(expected(stream, offset))))
        stream, offset, future = pending.popleft()
        position = future.result()
        os.write(log, f"A {stream} {offset} {position}\n".encode())
        acked.append(position)
        if len(acked) > KEEP + 500:
            while len(acked) > KEEP:
                trim_to = acked.popleft()
            # Logged before trimming: a kill in between leaves the parent expecting less, never
            # expecting records that were trimmed away.
            os.write(log, f"T {trim_to}\n".encode())
            wal.trim(trim_to)


if __name__ == "__main__":
    main()
