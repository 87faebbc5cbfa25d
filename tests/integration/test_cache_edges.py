"""The message cache's one budget (pinned log-cache bytes, log chunks and blocks) at its
edges: appends waiting for room ask for uploads (alone and with a shared cache), close ends such
a wait, making room ahead of a lagging reader evicts one chunk, a read iterator collected as
garbage inside the cache, two consumers at one offset keeping their focus."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from waits import wait_for

import streamlib
from streamlib import RecordBatch
from streamlib.cache import BATCH_OVERHEAD, MessageCache
from streamlib.errors import StreamClosed

KiB = 1024
MiB = 1024 * KiB


def batch(n: int, size: int) -> RecordBatch:
    return RecordBatch(n.to_bytes(4, "big") * (size // 4), count=1)


def test_small_batches_fill_the_budget_below_the_upload_trigger(tmp_path: Path) -> None:
    """100-byte messages: each pins 100 + 200 bytes, but the uploader's size trigger counts
    payload bytes only (half the budget), and the append's "ask for a round" only re-checks
    that trigger. The budget fills with a third of the trigger waiting: appends wait for the
    time trigger and fail before it, while the object store is healthy and idle."""
    budget = 256 * KiB
    with streamlib.open(tmp_path / "data", cache=MessageCache(budget), compression="none",
                        upload_interval_ms=10_000) as store:
        stream = store.create_stream()
        per_batch = 100 + BATCH_OVERHEAD
        for n in range(budget // per_batch + 50):  # a little more than the budget holds
            stream.append(batch(n, 100), timeout=2)  # WalFullError at ~874 today
        assert stream.next_offset == budget // per_batch + 50


def test_a_store_sharing_the_cache_is_not_asked_to_upload(tmp_path: Path) -> None:
    """Two stores share a cache; each has a little under half the budget waiting (below its
    own trigger). An append of store b finds no room and asks b's uploader for a round — b is
    not due, and a (whose bytes fill the budget) is never asked. The append fails."""
    budget = 1 * MiB
    cache = MessageCache(budget)
    held = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB", "compression": "none"}
    size = 20_000
    with streamlib.open(tmp_path / "a", cache=cache, **held) as a, \
            streamlib.open(tmp_path / "b", cache=cache, **held) as b:
        sa, sb = a.create_stream(), b.create_stream()
        for n in range(26):  # 520,000 payload bytes: below a's trigger (524,288)
            sa.append(batch(n, size))
        for n in range(40):  # b's 26th append finds the budget full
            sb.append(batch(n, size), timeout=2)
        assert sb.next_offset == 40


def _break_object_store(root: Path) -> None:
    """The objects directory becomes a plain file: every PUT fails (a real outage)."""
    objects = root / "objects"
    for path in sorted(objects.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    objects.rmdir()
    objects.write_bytes(b"not a directory")


def test_close_does_not_wait_out_an_append_waiting_for_room(tmp_path: Path) -> None:
    """The object store is down and the budget is full of data waiting for upload; an append
    waits for room (timeout 15 s). close() sets _closing and wakes the store's _room, but the
    append waits on the cache's condition: close blocks on the stream's order lock until the
    append times out, and the append fails with WalFullError rather than StreamClosed."""
    budget = 4 * (16 * KiB + BATCH_OVERHEAD)
    store = streamlib.open(tmp_path / "data", cache=MessageCache(budget), compression="none",
                           retry_timeout_ms=20, upload_interval_ms=20)
    stream = store.create_stream()
    stream.append(batch(0, 16 * KiB))
    store.flush()
    _break_object_store(tmp_path / "data")
    for n in range(1, 5):
        stream.append(batch(n, 16 * KiB))
    errors: list[BaseException] = []

    def append() -> None:
        try:
            stream.append(batch(5, 16 * KiB), timeout=15)
        except BaseException as error:
            errors.append(error)

    waits = store.stats()["cache"]["log_waits"]  # type: ignore[index]
    thread = threading.Thread(target=append, daemon=True)
    thread.start()
    wait_for(lambda: store.stats()["cache"]["log_waits"] > waits,  # type: ignore[index]
             what="the append to wait for room")
    began = time.monotonic()
    store.close()
    took = time.monotonic() - began
    thread.join(20)
    assert took < 5, f"close() waited {took:.1f}s for an append waiting for room"
    assert errors and isinstance(errors[0], StreamClosed), errors


def test_making_room_ahead_of_a_lagging_reader_evicts_one_chunk_not_the_whole_log(
        tmp_path: Path) -> None:
    """A reader lags at the head of 15 uploaded chunks; appends need room for one batch at a
    time. _make_room ranks chunks ahead of a reader farthest first: the newest chunk, whose
    eviction takes every older chunk of the stream with it. One batch of room costs the whole
    log cache (14 chunks), the nearest chunks to the reader included."""
    size = 48 * KiB
    chunk = size + BATCH_OVERHEAD
    cache = MessageCache(1 * MiB, reader_timeout=60)
    with streamlib.open(tmp_path / "data", cache=cache, compression="none",
                        upload_interval_ms=3_600_000, upload_bytes="1GiB") as store:
        stream = store.create_stream()
        for n in range(15):
            stream.append(batch(n, size))
            store.flush()  # one log chunk each
        assert cache.usage()["log_chunks"] == 15
        assert stream.fetch(0, max_bytes=1).next_fetch_offset == 1  # a reader, at offset 1
        for n in range(15, 23):  # the 7th and 8th of these need room
            stream.append(batch(n, size))
        usage = cache.usage()
        evicted = cache.stats.evicted_bytes
        assert evicted <= 2 * chunk, (evicted // chunk, usage)
        assert usage["log_chunks"] >= 13, usage


def test_a_read_iterator_collected_as_garbage_inside_the_cache_does_not_deadlock(
        tmp_path: Path) -> None:
    """A started read() iterator left in a reference cycle is finalized by the cyclic GC,
    which runs wherever an allocation triggers it — also inside MessageCache code holding its
    (non-reentrant) lock, e.g. the lists _make_room builds. The iterator's ``finally`` calls
    cache.forget(), which takes that lock again: the thread deadlocks with the cache locked,
    and every append, fetch and close after it hangs. The cache's clock (called under the
    lock by _try_pin) runs the collection here, to place it deterministically."""
    armed = threading.Event()

    def clock() -> float:
        if armed.is_set():
            armed.clear()
            gc.collect()
        return time.monotonic()

    size = 16 * KiB
    cache = MessageCache(4 * (size + BATCH_OVERHEAD), clock=clock)
    store = streamlib.open(tmp_path / "data", cache=cache, compression="none",
                           upload_interval_ms=3_600_000, upload_bytes="1GiB")
    stream = store.create_stream()
    for n in range(2):
        stream.append(batch(n, size))
    store.flush()
    gc.disable()
    try:
        class Consumer:
            pass

        consumer = Consumer()
        consumer.me = consumer  # type: ignore[attr-defined]  # a cycle: only the GC frees it
        consumer.batches = stream.read(0, idle_timeout=0.01)  # type: ignore[attr-defined]
        next(consumer.batches)  # type: ignore[attr-defined]
        del consumer
        done = threading.Event()

        def append() -> None:
            for n in range(2, 5):  # the third needs room: _try_pin calls the clock, locked
                if n == 4:
                    armed.set()
                stream.append(batch(n, size))
            done.set()

        threading.Thread(target=append, daemon=True).start()
        assert done.wait(5), "the append deadlocked: the GC ran read()'s finally in the cache"
    finally:
        gc.enable()
    store.close()


def test_two_consumers_at_the_same_offsets_keep_the_consumer_focus(tmp_path: Path) -> None:
    """test_log_cache's slow-reader test with two consumers reading the same offsets (two
    consumer groups, say). The cache keys readers by (stream, end position) in one slot: the
    second consumer's fetch overwrites the first's slot, so every round orphans a reader at an
    old position, "active" for reader_timeout. The orphans make the chunks both consumers have
    passed look "ahead of a reader": the newest chunk goes first (with every older one), and
    the consumers make GETs the one-consumer case never makes."""
    size = 16 * KiB
    per_round = 10
    budget = 4 * per_round * (size + BATCH_OVERHEAD) + 1024
    cache = MessageCache(budget, reader_timeout=60)
    with streamlib.open(tmp_path / "data", cache=cache, compression="none",
                        upload_interval_ms=3_600_000, upload_bytes="1GiB") as store:
        stream = store.create_stream()
        offsets = [0, 0]
        for round_ in range(12):
            for n in range(per_round):
                stream.append(batch(round_ * per_round + n, size))
            store.flush()
            if round_ >= 3:
                for i in range(2):
                    result = stream.fetch(offsets[i], max_bytes=per_round * size)
                    assert result.batches[0].base_offset == (round_ - 3) * per_round
                    offsets[i] = result.next_fetch_offset
        stats = cache.stats.snapshot()
        assert stats["gets"] == 0 and stats["evicted_ahead_of_readers"] == 0, stats
        assert stats["readers"] <= 2, stats["readers"]
