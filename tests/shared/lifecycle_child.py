"""A node of the lifecycle test on a shared bucket (test_lifecycle_processes.py): one process
appends, one reads, two compact and collect garbage, all on one shared manifest.

    python lifecycle_child.py ROLE CONFIG_JSON COUNT OUT

``CONFIG_JSON`` is the node's config (``metadata="manifest"``); an ``s3://`` store's storage
options come as JSON in ``S3_STORAGE_OPTIONS``. ``COUNT`` is how many appends the writer makes
to the stream ``main`` (append ``i`` holds the records :func:`batch_values` ``(i)``, so every
node knows what each offset must hold). Warnings go to stderr; stdout carries the lines the
test waits for, and a JSON summary last. The test steers a child through its stdin.

- ``writer``: creates ``main`` and ``side``, prints ``created``, waits for ``go`` on stdin, then
  makes ``COUNT`` appends to ``main`` (and some to ``side``, which it destroys half way),
  uploading every :data:`FLUSH_EVERY` appends; after each acknowledged append it writes
  ``base_offset i`` to OUT (one unbuffered write). Prints its summary and exits.
- ``compactor``: prints ``ready``, then runs ``store.compact()`` and ``store.collect_garbage()``
  in turn, writing a line to OUT after each round, until ``stop`` (or the end of stdin).
- ``reader``: opens ``main``, prints ``ready``, tails it, checking that every record comes at
  the next offset with the value that offset must hold, and every :data:`CATCH_UP_EVERY`
  batches reads the stream again from offset 0, checking it whole. Once told ``target N``,
  it reads up to offset N, checks the stream whole once more, and exits; ``stop`` (or the end
  of stdin) ends it at once.

Every exception a loop meets is caught, recorded in the summary and the loop goes on: the test
decides what was allowed.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

KiB = 1024
FLUSH_EVERY = 4
"""The writer uploads every this many appends: many small objects for the compactors."""
CATCH_UP_EVERY = 25
"""The reader reads the stream from offset 0 again every this many batches it tails."""
SWEEP_EVERY = 2
"""A compactor sweeps every this many rounds (a sweep lists the bucket: the costlier step)."""
PAUSE_S = 0.05
"""A compactor's pause between rounds: enough to leave the server to the other nodes, short
enough that many passes run while the writer appends."""
IDLE_S = 0.5
"""How long the reader's tail waits for a record before it looks at its orders."""


def batch_values(i: int) -> list[bytes]:
    """The record values of the writer's append ``i`` to ``main``: 1 to 4 records, each
    naming its append and place, with 64 random bytes and 100–1,600 bytes of padding."""
    return [f"main:{i}:{j}:".encode() + random.Random(i * 8 + j).randbytes(64)
            + bytes([(i + j) % 251]) * (100 + (i * 37 + j * 101) % 1500)
            for j in range(1 + i % 4)]


def expected_values(count: int) -> list[bytes]:
    """What ``main`` holds, offset by offset, once ``count`` appends are made."""
    return [value for i in range(count) for value in batch_values(i)]


class Orders:
    """What the test says on stdin: ``go``, ``target N``, ``stop`` (the end of stdin: stop)."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.stop = threading.Event()
        self.changed = threading.Event()
        self.target: int | None = None
        threading.Thread(target=self._listen, name="orders", daemon=True).start()

    def _listen(self) -> None:
        for line in sys.stdin:
            words = line.split()
            if words == ["go"]:
                self.go.set()
            elif len(words) == 2 and words[0] == "target":
                self.target = int(words[1])
            elif words == ["stop"]:
                self.stop.set()
            self.changed.set()
        self.stop.set()
        self.go.set()
        self.changed.set()


def open_store(config: dict[str, Any]) -> Any:
    import streamlib

    options = json.loads(os.environ.get("S3_STORAGE_OPTIONS", "null"))
    return streamlib.open(config, storage_options=options)


def say(*words: object) -> None:
    print(*words, flush=True)


def writer(config: dict[str, Any], count: int, acklog: str, orders: Orders) -> None:
    from streamlib import Record
    from streamlib.errors import StorageUnavailable

    store = open_store(config)
    main = store.create_stream("main")
    side: Any = store.create_stream("side")
    say("created")
    orders.go.wait()
    fd = os.open(acklog, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    errors: list[str] = []

    def flush() -> None:  # the data stays in the WAL meanwhile: try again
        for _ in range(50):
            try:
                store.flush()
                return
            except StorageUnavailable as error:
                errors.append(repr(error))
        raise AssertionError(f"flush kept failing: {errors[-1]}")

    for i in range(count):
        if orders.stop.is_set():
            break
        result = main.append([Record(v) for v in batch_values(i)])
        os.write(fd, f"{result.base_offset} {i}\n".encode())
        if side is not None and i % 3 == 0:
            side.append([f"side:{i}".encode() * 40])
        if side is not None and i == count // 2:
            store.destroy_stream("side")
            side = None
        if i % FLUSH_EVERY == FLUSH_EVERY - 1:
            flush()
    flush()
    os.close(fd)
    summary = {"next_offset": main.next_offset, "errors": errors, "stats": store.stats()}
    store.close()
    say(json.dumps(summary, default=str))


def compactor(config: dict[str, Any], progress: str, orders: Orders) -> None:
    store = open_store(config)
    say("ready")
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    totals = {"rounds": 0, "tasks": 0, "objects_read": 0, "objects_written": 0,
              "objects_doomed": 0, "conflicts": 0, "failures": 0, "gc_deleted": 0}
    errors: list[str] = []
    while not orders.stop.is_set():
        try:
            report = store.compact()
            for name in ("tasks", "objects_read", "objects_written", "objects_doomed",
                         "conflicts", "failures"):
                totals[name] += getattr(report, name)
            errors.extend(report.errors)
        except Exception as error:
            errors.append(f"compact: {error!r}")
        if totals["rounds"] % SWEEP_EVERY == 0:
            try:
                totals["gc_deleted"] += store.collect_garbage().objects
            except Exception as error:
                errors.append(f"collect_garbage: {error!r}")
        totals["rounds"] += 1
        os.write(fd, b"round\n")
        orders.stop.wait(PAUSE_S)  # a pace, not a wait for anything
    os.close(fd)
    lifecycle = store.stats()["lifecycle"]
    store.close()
    say(json.dumps({"totals": totals, "errors": errors, "lifecycle": lifecycle}, default=str))


def records(batches: Iterator[Any], offset: int) -> Iterator[tuple[int, bytes]]:
    """(offset, value) of each record of ``batches`` at or after ``offset``."""
    for batch in batches:
        for at, record in enumerate(batch.records(), batch.base_offset):
            if at >= offset:
                yield at, record.value


def reader(config: dict[str, Any], count: int, orders: Orders) -> None:
    store = open_store(config)
    stream = store.open_stream("main", read_only=True)
    expected = expected_values(count)
    errors: list[str] = []
    say("ready")

    def check(at: int, value: bytes, offset: int) -> None:
        if at != offset:
            errors.append(f"gap or repeat: offset {at} where {offset} was next")
        elif at >= len(expected) or value != expected[at]:
            errors.append(f"wrong value at {at}: {value[:30]!r}")

    def catch_up(end: int) -> int:
        """Read ``[0, end)`` again with fetches, checking each record; returns how many."""
        offset = 0
        while offset < end:
            result = stream.fetch(offset, end, max_bytes=256 * KiB)
            for at, value in records(iter(result.batches), offset):
                if at >= end:
                    break
                check(at, value, offset)
                offset = at + 1
            if not result.batches:
                errors.append(f"catch-up found nothing at {offset} below {end}")
                break
        return offset

    offset = batches = catch_ups = 0
    while not orders.stop.is_set() and len(errors) < 20:
        target = orders.target
        if target is not None and offset >= target:
            break
        tail = stream.read(offset, max_bytes=64 * KiB, idle_timeout=IDLE_S)
        try:
            for batch in tail:
                for at, value in records(iter([batch]), offset):
                    check(at, value, offset)
                    offset = at + 1
                batches += 1
                if batches % CATCH_UP_EVERY == 0:
                    catch_up(offset)
                    catch_ups += 1
                if orders.stop.is_set() or (orders.target is not None
                                            and offset >= orders.target):
                    break
        except Exception as error:
            errors.append(f"read: {error!r}")
        finally:
            tail.close()
    final = None
    if not orders.stop.is_set():
        try:
            final = catch_up(offset)
        except Exception as error:
            errors.append(f"final catch-up: {error!r}")
    summary = {"offset": offset, "batches": batches, "catch_ups": catch_ups,
               "final_catch_up": final, "errors": errors}
    store.close()
    say(json.dumps(summary))


def main() -> None:
    role, config, count, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), \
        sys.argv[4]
    orders = Orders()
    if role == "writer":
        writer(config, count, out, orders)
    elif role == "compactor":
        compactor(config, out, orders)
    elif role == "reader":
        reader(config, count, orders)
    else:
        raise SystemExit(f"unknown role: {role}")


if __name__ == "__main__":
    main()
