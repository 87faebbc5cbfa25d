"""The child of the store crash test: open the store (recovering it), then append from several
threads to several streams until killed.

    python store_crash_child.py CONFIG_JSON ACKLOG GEN KILL_POINT KILL_AT SEED

``CONFIG_JSON`` is the store's config (a mapping for ``streamlib.open``); for an ``s3://``
``objects_url`` the storage options come as JSON in ``S3_STORAGE_OPTIONS``. ``GEN`` numbers this
child among all the children run on the store: it goes into every payload, so the parent can
tell which child wrote a batch.

``KILL_POINT`` is ``none`` (the parent kills the child at a random moment) or a point inside an
upload round where the child kills itself with SIGKILL the ``KILL_AT``-th time it gets there
(counting the recovery upload inside ``streamlib.open`` too):

- ``before_put``: before a PUT of a round's object (nothing of the round, or only its first
  objects, stored);
- ``after_put``: every object of the round stored, the metadata commit not made (orphans);
- ``after_commit``: committed, the WAL not trimmed (recovery finds committed data in the WAL).

Rounds with no object (an empty final round) do not count. The kill points are fault-injecting
components handed to ``streamlib.open``: a :class:`~streamlib.testing.FaultyFileSystem` around
the objects' filesystem (``before_put``) and a :class:`~streamlib.testing.FaultyMetadataStore`
around the SQLite metadata (``after_put``, ``after_commit``); the store's code runs untouched.

After opening, the child prints ``ready <stream next offsets as JSON>``. ``THREADS`` threads
append to ``STREAMS`` streams (``s0``…), each thread choosing a stream at random for every batch,
with up to ``IN_FLIGHT`` appends in flight. Each batch is :func:`expected_records` of
``(gen, stream, thread, seq)`` where ``seq`` counts the batches of that thread to that stream.
Lines of ACKLOG, each written with one unbuffered ``os.write`` *after* the event:

- ``A gen stream thread seq base_offset count digest``: an append acknowledged;
- ``T stream offset``: ``trim`` returned (thread 0 trims stream 0 once, now and then, to an
  offset at or below where the stream ended when this child started);
- ``K point objects``: the child is about to kill itself at ``point`` (``objects``: how many
  the round PUT, for ``after_put`` and ``after_commit``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import threading
import traceback
from collections import deque
from typing import Any

STREAMS = 6
THREADS = 3
IN_FLIGHT = 16
BASE_TIMESTAMP = 1_700_000_000_000
SIZES = (5, 30, 120, 400, 1500)
KILL_POINTS = ("none", "before_put", "after_put", "after_commit")


def expected_records(gen: int, stream: int, thread: int, seq: int) -> list[Any]:
    """The records of the one batch child ``gen``'s thread ``thread`` appends as its ``seq``-th
    batch to stream ``s<stream>``. The first record's key names the four numbers."""
    from streamlib import Record

    seed = hashlib.blake2b(f"{gen}/{stream}/{thread}/{seq}".encode(), digest_size=8).digest()
    pick = int.from_bytes(seed, "big")
    records = []
    for j in range(1 + pick % 4):
        size = SIZES[(pick >> (8 + 4 * j)) % len(SIZES)]
        value = (seed.hex().encode() * (size // 16 + 1))[:size]
        records.append(Record(value, key=f"{gen}:{stream}:{thread}:{seq}:{j}".encode(),
                              timestamp=BASE_TIMESTAMP + gen * 1_000_000 + seq))
    return records


def header(batch: Any) -> tuple[int, int, int, int]:
    """``(gen, stream, thread, seq)`` of a batch this child wrote (from its first key)."""
    key = batch.records()[0].key
    gen, stream, thread, seq, j = map(int, key.decode().split(":"))
    assert j == 0, key
    return gen, stream, thread, seq


def digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=12).hexdigest()


class _Killer:
    """Kills this process with SIGKILL the ``at``-th time :meth:`hit` is called."""

    def __init__(self, point: str, at: int, log: int) -> None:
        self.point, self.at, self.log = point, at, log
        self.count = 0
        self.lock = threading.Lock()

    def hit(self, detail: object = "") -> None:
        if self.reached(detail):
            os.kill(os.getpid(), signal.SIGKILL)

    def reached(self, detail: object = "") -> bool:
        """Count one more time here; True (after logging it) the ``at``-th time."""
        with self.lock:
            self.count += 1
            if self.count == self.at:
                os.write(self.log, f"K {self.point} {detail}\n".encode())
                return True
            return False


def faulty_parts(point: str, at: int, log: int, config: dict[str, Any],
                 options: dict[str, Any] | None) -> dict[str, Any]:
    """The store's object store and metadata, wrapped by fault-injecting components that kill
    this process at ``point`` (arguments for ``streamlib.open``)."""
    import fsspec

    import streamlib
    from streamlib.meta.local import SQLiteMetadataStore
    from streamlib.testing import FaultyFileSystem, FaultyMetadataStore

    killer = _Killer(point, at, log)
    settings = streamlib.Config.load(config)
    url = settings.objects_url or "file://" + os.path.join(settings.path, "objects")
    protocol, _, root = url.partition("://")
    local = {"auto_mkdir": True} if protocol == "file" else {}
    faulty_fs = FaultyFileSystem(fsspec.filesystem(protocol, **local, **(options or {})))
    meta = FaultyMetadataStore(SQLiteMetadataStore(
        settings.metadata_path or os.path.join(settings.path, "meta.sqlite")))

    def kill(*_: object) -> BaseException:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    def count(what: object) -> bool:
        killer.hit(what)  # logs and kills on the at-th time
        return False

    if point == "before_put":  # a PUT of a round's object
        faulty_fs.inject("put", match=lambda path: "/data/" in path and count(""), times=None)
    elif point in ("after_put", "after_commit"):  # a commit of a round with objects
        meta.inject("commit", kill, after=point == "after_commit", times=None,
                    match=lambda call: bool(call.args["commit"].objects)
                    and killer.reached(len(call.args["commit"].objects)))
    return {"filesystem": faulty_fs, "metadata_store": meta,
            "objects_url": f"{protocol}://{root}"}


def main() -> None:
    config = json.loads(sys.argv[1])
    acklog, gen, point, at, seed = (sys.argv[2], int(sys.argv[3]), sys.argv[4],
                                    int(sys.argv[5]), int(sys.argv[6]))
    assert point in KILL_POINTS, point
    log = os.open(acklog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    import streamlib

    options = json.loads(os.environ.get("S3_STORAGE_OPTIONS", "null"))
    if point == "none":
        store = streamlib.open(config, storage_options=options)
    else:
        parts = faulty_parts(point, at, log, config, options)
        store = streamlib.open({**config, "objects_url": parts.pop("objects_url")},
                               storage_options=options, **parts)
    streams = []
    for i in range(STREAMS):
        try:
            streams.append(store.open_stream(f"s{i}"))
        except streamlib.StreamNotFound:
            streams.append(store.create_stream(f"s{i}"))
    starts = [s.start_offset for s in streams]
    ends = [s.next_offset for s in streams]
    print("ready", json.dumps(ends), flush=True)

    def produce(thread: int) -> None:
        rng = random.Random(seed * 1000 + thread)
        seqs = [0] * STREAMS
        inflight: deque = deque()
        acked = 0
        trim_after = rng.randrange(50, 400) if thread == 0 and rng.random() < 0.5 else -1
        while True:
            while len(inflight) < IN_FLIGHT:
                i = rng.randrange(STREAMS)
                records = expected_records(gen, i, thread, seqs[i])
                batch = streamlib.RecordBatch.from_records(records)
                inflight.append((i, seqs[i], batch, streams[i].append_future(batch)))
                seqs[i] += 1
            i, seq, batch, future = inflight.popleft()
            result = future.result()
            os.write(log, (f"A {gen} {i} {thread} {seq} {result.base_offset} {result.count} "
                           f"{digest(batch.payload)}\n").encode())
            acked += 1
            if acked == trim_after and ends[0] > starts[0]:
                offset = rng.randint(starts[0] + 1, ends[0])
                streams[0].trim(offset)
                os.write(log, f"T 0 {offset}\n".encode())

    def run(thread: int) -> None:
        try:
            produce(thread)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(3)  # the parent sees a child that died by itself

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
