"""Reads: tailing latency, catch-up from S3 (moto), warm re-read, beside SlateDB and SQLite.

    .venv/bin/python benchmarks/read.py [--quick] [--no-s3] [--sweep] [--profile] [--json PATH]
                                        [--dir DIR]

Three measurements in one run (docs/cache.md), the data being what
``benchmarks/stream.py`` appends (batches of 1 KiB compact JSON events from a seeded pool):

1. **Tailing latency.** A writer appends small batches (10 × 1 KiB) one at a time, each waited
   for (a local store: file WAL, local objects); a reader thread follows the stream and notes
   ``time.perf_counter()`` when it receives each batch. The writer notes the time just before
   calling ``append`` and right after it returns. Reported, p50 / p99 / max over every sample:
   *ack → reader* (reader has it minus append returned: negative when the reader wakes before
   the writer's ``append`` has returned, which is normal: the acknowledgement wakes the readers
   first, then completes the append's future) and *call → reader* (reader has it minus append
   called: the whole path, the WAL's ``fdatasync`` included). Four readers: ``Stream.read``,
   a loop of ``fetch(timeout=)`` long polls, and, in an asyncio loop of the reader's thread,
   ``Stream.read_async`` and a loop of ``fetch_async(timeout=)`` long polls. They take turns
   in chunks of 250 samples (a fresh reader a chunk, the first 3 appends of each chunk not
   counted). The physical reference: one Python thread waking another through a
   ``threading.Condition`` (and through ``call_soon_threadsafe`` for asyncio) on this
   machine, measured the same way. Then (**5.** in the report) one task follows 1 and 1,000
   streams with ``streamlib.Follower``: the memory and CPU an idle stream costs, and the same
   latencies for appends to streams drawn at random (:func:`fan_in`).
2. **Catch-up read of uploaded data on S3** (a moto server in a process of its own, as in
   ``benchmarks/stream.py``; streamlib's WAL stays a local file WAL). Batches of 100 × 1 KiB
   are appended with 64 in flight, ``store.flush()`` uploads the rest, the store is closed and
   reopened (cold: empty block cache and index cache), and the whole stream is read with
   ``fetch(max_bytes=4 MiB)``; GETs and their bytes come from ``store.stats()["cache"]``.
   Beside it, on the same server and the very same objects, one at a time with s3fs (the
   filesystem streamlib builds, ``cat_file`` called directly): whole-object GETs, and ranged
   GETs of 1 MiB in sequence (the shape of a reader's GETs), and, as the server's cost of one
   request, GETs of a separate 1 MiB object. Also SlateDB (Python package, a value a batch,
   bindings patched as in ``benchmarks/stream.py``, scan with 8 MiB read-ahead and 8 fetch
   tasks) on the same server, streamlib with local objects, and SQLite (local file, WAL mode,
   a row a batch). Each read is best of 5 (``--quick``: 3), the systems taking turns. The time
   streamlib's read spends inside GETs is taken by wrapping its ``ObjectStore.get``, split
   between the reading thread (where the reader waits) and others (background loads).
3. **Warm re-read**: the same data read again from the same (still open) streamlib store; its
   block cache (256 MiB) holds everything, so it should make no GET.

MB/s = 10^6 bytes a second of record values (the 1 KiB values) unless a line says "of object
bytes". Absolute figures drift by ±40% between runs on the reference machine: compare within
a run. ``--sweep`` adds cold reads on moto with fetches of 1, 4 and 64 MiB, each with readahead
off, as configured by default, and with a 32 MiB window (16 MiB at first), through
``streamlib.open(cache=MessageCache(…))``. ``--profile`` adds a cProfile of one cold catch-up read
on moto (the read loop's thread: time inside a GET shows as waiting on s3fs's event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import inspect
import io
import json
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from stream import (
    BIG,
    GIB,
    IN_FLIGHT,
    MB,
    MIB,
    RECORD_BYTES,
    SEED,
    SMALL,
    Data,
    SlateDB,
    SQLite,
    percentile,
    slatedb_module,
    verdict,
)

import streamlib
import streamlib.io

FETCH_BYTES = 4 * MIB  # a catch-up reader's max_bytes
NO_READAHEAD = {"readahead_bytes": 0}
SWEEP_FETCH = (1 * MIB, 4 * MIB, 64 * MIB)  # --sweep: max_bytes of the fetches
SWEEP_CACHE = (("readahead off", NO_READAHEAD), ("readahead default", {}),
               ("readahead 32 MiB, first 16", {"readahead_bytes": 32 * MIB,
                                                "first_window": 16 * MIB}))
RANGE_BYTES = 1 * MIB  # raw ranged GETs
SHAPE_BATCHES = 2000  # section 4: about 195 MiB of values in stream objects of ~8 MiB
BIG_OBJECT_BATCHES = 4400  # section 4: about 430 MiB of values in one object of ~200 MB
RAW_STEP = 8 * MIB  # section 4: the raw GETs' ranges
DEFAULT_FETCH = 1 * MIB  # what fetch() takes when max_bytes is not given
LOCAL_TARGET = 900  # section 4: MB/s of values from local objects
RAW_TARGET = 0.8  # section 4: of the raw ranged GETs' speed, on moto
SMALL_GETS = 10
CHUNK = 250  # tailing samples a reader takes before the next kind's turn
WARM_UP = 3  # appends at the start of each chunk, not counted
TAIL_TARGET_MS = 1.0
FAN_IN_TARGET_MS = 2.0
FAN_IN_STREAMS = (1, 1000)
COUNTERS = ("gets", "get_bytes", "block_hits", "block_misses", "shared_loads",
            "readahead_blocks", "readahead_hits")  # of store.stats()["cache"], where present
MODES = ("read", "fetch", "read_async", "fetch_async")
MODE_NAMES = {"read": "Stream.read", "fetch": "fetch(timeout=) loop",
              "read_async": "Stream.read_async", "fetch_async": "fetch_async(timeout=) loop"}


def stats_ms(samples: Sequence[float]) -> dict[str, float]:
    return {"p50": statistics.median(samples) * 1e3, "p99": percentile(samples, 0.99) * 1e3,
            "max": max(samples) * 1e3, "n": len(samples)}


# ---- 1. tailing latency ----


def follow(stream: streamlib.Stream, mode: str, start: int, count: int,
           seen: dict[int, float], ready: threading.Event) -> None:
    """Read ``count`` batches from ``start`` the ``mode`` way, noting when each arrives."""
    clock = time.perf_counter
    if mode == "read":
        batches = stream.read(start, idle_timeout=30)
        ready.set()
        for batch in batches:
            seen[batch.base_offset] = clock()
            if len(seen) >= count:
                break
        batches.close()
    elif mode == "fetch":
        ready.set()
        offset = start
        while len(seen) < count:
            result = stream.fetch(offset, timeout=30)
            now = clock()
            if not result.batches:
                raise RuntimeError("a tailing fetch timed out")
            for batch in result.batches:
                seen[batch.base_offset] = now
            offset = result.next_fetch_offset
    elif mode == "read_async":
        async def go() -> None:
            ready.set()
            async for batch in stream.read_async(start, idle_timeout=30):
                seen[batch.base_offset] = clock()
                if len(seen) >= count:
                    break

        asyncio.run(go())
    else:
        async def poll() -> None:
            ready.set()
            offset = start
            while len(seen) < count:
                result = await stream.fetch_async(offset, timeout=30)
                now = clock()
                if not result.batches:
                    raise RuntimeError("a tailing fetch_async timed out")
                for batch in result.batches:
                    seen[batch.base_offset] = now
                offset = result.next_fetch_offset

        asyncio.run(poll())


def tailing(directory: Path, data: Data, samples: int, **options: object) -> dict[str, Any]:
    """Each reader kind follows ``samples`` small appends, the kinds taking turns in chunks."""
    store = streamlib.open(directory / "tailing", **options)
    stream = store.create_stream("tail")
    clock = time.perf_counter
    ack: dict[str, list[float]] = {m: [] for m in MODES}
    call: dict[str, list[float]] = {m: [] for m in MODES}
    append: list[float] = []
    index = 0
    try:
        for i in range(20):  # warm-up: files, the codec, the first allocations
            stream.append(data.small(i))
        while any(len(ack[m]) < samples for m in MODES):
            for mode in MODES:
                count = min(CHUNK, samples - len(ack[mode]))
                if count <= 0:
                    continue
                seen: dict[int, float] = {}
                ready = threading.Event()
                start = stream.next_offset
                reader = threading.Thread(target=follow, args=(stream, mode, start,
                                                               count + WARM_UP, seen, ready))
                reader.start()
                ready.wait()
                time.sleep(0.005)  # the reader is waiting at the tail
                times: list[tuple[int, float, float]] = []
                for n in range(count + WARM_UP):
                    values = data.small(index)
                    index += 1
                    t0 = clock()
                    result = stream.append(values)
                    t1 = clock()
                    if n >= WARM_UP:
                        times.append((result.base_offset, t0, t1))
                reader.join(60)
                if reader.is_alive():
                    raise RuntimeError(f"the {mode} reader did not finish")
                for offset, t0, t1 in times:
                    got = seen[offset]
                    ack[mode].append(got - t1)
                    call[mode].append(got - t0)
                    append.append(t1 - t0)
    finally:
        store.close()
    return {"ack": {m: stats_ms(ack[m]) for m in MODES},
            "call": {m: stats_ms(call[m]) for m in MODES},
            "append": stats_ms(append),
            "negative": {m: sum(1 for x in ack[m] if x < 0) / len(ack[m]) for m in MODES}}


def wake_reference(samples: int) -> dict[str, dict[str, float]]:
    """One thread waking another: ``Condition.notify`` → the waiting thread runs; and a thread
    waking an event loop with ``call_soon_threadsafe`` → the awaiting coroutine runs. The
    waker waits on an Event for each round's end (untimed) before the next."""
    clock = time.perf_counter
    cond = threading.Condition()
    back = threading.Event()
    sent: list[float] = []
    woke: list[float] = []

    def waiter() -> None:
        with cond:
            for i in range(samples):
                while len(sent) <= i:
                    cond.wait()
                woke.append(clock())
                back.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    for _ in range(samples):
        time.sleep(0.0002)
        with cond:
            sent.append(clock())
            cond.notify_all()
        back.wait()
        back.clear()
    thread.join()
    threads = [w - s for w, s in zip(woke, sent, strict=True)]

    loop_times: list[float] = []
    box: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[float]]] = []
    ready = threading.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(samples):
            future: asyncio.Future[float] = loop.create_future()
            box.append((loop, future))
            ready.set()
            at = await future
            loop_times.append(clock() - at)

    runner = threading.Thread(target=lambda: asyncio.run(run()))
    runner.start()
    for _ in range(samples):
        ready.wait()
        ready.clear()
        loop, future = box.pop()
        time.sleep(0.0002)
        loop.call_soon_threadsafe(future.set_result, clock())
    runner.join()
    return {"thread": stats_ms(threads), "loop": stats_ms(loop_times)}


# ---- 1b. many streams followed by one task ----


def loop_cpu(thread: threading.Thread) -> float:
    """Seconds ``thread`` has run on a CPU (Linux: its schedstat; 0 where there is none)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError):
        return 0.0


def fan_in(directory: Path, data: Data, streams: int, samples: int,
           idle: float = 2.0) -> dict[str, Any]:
    """One task follows ``streams`` streams (``streamlib.Follower``) in an event loop of its
    own thread. While they are idle: the Python memory that following them takes
    (tracemalloc, from the follower's creation until every stream is waited on), and the CPU
    time of the loop's thread and of the whole process over ``idle`` seconds (beside as long
    without the follower). Then a writer appends small batches to streams drawn at random, one
    at a time, each waited for, and the follower notes when it gets each: ack -> follower and
    call -> follower, as the tailing readers'."""
    store = streamlib.open(directory / f"fan-in-{streams}")
    handles = [store.create_stream() for _ in range(streams)]
    clock = time.perf_counter
    seen: dict[tuple[int, int], float] = {}
    figures: dict[str, Any] = {"streams": streams}
    waiting = threading.Event()
    box: list[tuple[asyncio.AbstractEventLoop, streamlib.Follower]] = []

    async def follow() -> None:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        follower = streamlib.Follower({h: 0 for h in handles})
        box.append((asyncio.get_running_loop(), follower))

        async def consume() -> None:
            async for stream, batch in follower:
                seen[(stream.id, batch.base_offset)] = clock()
                if len(seen) >= samples:
                    return

        consumer = asyncio.create_task(consume())
        while sum(len(h._state.async_waiters) for h in handles) < streams:
            await asyncio.sleep(0.001)  # the benchmark's own look: each stream waited on
        figures["bytes_per_stream"] = (tracemalloc.get_traced_memory()[0] - base) / streams
        tracemalloc.stop()
        waiting.set()
        await consumer
        await follower.aclose()

    try:
        started, used = time.monotonic(), time.process_time()
        time.sleep(idle)  # the store alone, idle
        figures["baseline_cpu_s"] = (time.process_time() - used) * idle / (
            time.monotonic() - started)
        reader = threading.Thread(target=lambda: asyncio.run(follow()))
        reader.start()
        waiting.wait()
        loop_before, used = loop_cpu(reader), time.process_time()
        started = time.monotonic()
        time.sleep(idle)  # every stream followed, none appended to
        span = time.monotonic() - started
        figures["idle_loop_cpu_s"] = (loop_cpu(reader) - loop_before) * idle / span
        figures["idle_cpu_s"] = (time.process_time() - used) * idle / span
        rng = random.Random(SEED)
        times: list[tuple[tuple[int, int], float, float]] = []
        for i in range(samples):
            handle = handles[rng.randrange(streams)]
            t0 = clock()
            result = handle.append(data.small(i))
            times.append(((handle.id, result.base_offset), t0, clock()))
        reader.join(60)
        if reader.is_alive():
            raise RuntimeError("the follower did not finish")
    finally:
        store.close()
    ack = [seen[key] - t1 for key, _, t1 in times]
    call = [seen[key] - t0 for key, t0, _ in times]
    return {**figures, "idle_s": idle, "ack": stats_ms(ack[WARM_UP:]),
            "call": stats_ms(call[WARM_UP:])}


def report_fan_in(rows: list[dict[str, Any]]) -> None:
    print("\n5. One task follows many streams (streamlib.Follower), local store; small appends "
          "to streams at random, one at a time")
    print(f"{'streams':>7}  {'B/idle stream':>13}  {'idle CPU, loop':>14}  "
          f"{'idle CPU, process':>17}  {'ack->follower p50':>17}  {'p99':>7}  {'max':>7}  "
          f"{'call->follower p99':>18}")
    for r in rows:
        per = f"{r['idle_cpu_s'] - r['baseline_cpu_s']:+.3f} s"
        print(f"{r['streams']:>7,}  {r['bytes_per_stream']:>13,.0f}  "
              f"{r['idle_loop_cpu_s'] * 1e3:>11.2f} ms  {per:>17}  "
              f"{r['ack']['p50']:>15.3f}ms  {r['ack']['p99']:>5.3f}ms  {r['ack']['max']:>5.2f}ms  "
              f"{r['call']['p99']:>16.3f}ms")
    idle = rows[0]["idle_s"]
    print(f"  B/idle stream = Python memory following one more idle stream takes (tracemalloc); "
          f"idle CPU over {idle:g} s with every\n  stream followed and none appended to: the "
          f"loop's thread, and the process beside the store idle without the follower")
    print("\ntargets (fan-in)")
    for r in rows:
        p99 = r["ack"]["p99"]
        print(f"  {r['streams']:>5,} streams, ack->follower p99 {p99:>6.3f} ms  target <= "
              f"{FAN_IN_TARGET_MS:g} ms  {verdict(p99 <= FAN_IN_TARGET_MS)}")


# ---- 2 and 3. catch-up and warm re-read ----


def append_all(stream: streamlib.Stream, batches: Sequence[list[bytes]]) -> None:
    pending: deque[Future[Any]] = deque()
    for values in batches:
        if len(pending) >= IN_FLIGHT:
            pending.popleft().result()
        pending.append(stream.append_future(values))
    for future in pending:
        future.result()


def append_in_objects(store: streamlib.StreamStore, stream: streamlib.Stream,
                      batches: Sequence[list[bytes]], object_bytes: int) -> None:
    """Append ``batches`` cut into objects of about ``object_bytes`` each: a flush after as
    many batches as fill one (measured on the first object, of ``IN_FLIGHT`` batches)."""
    done = IN_FLIGHT
    append_all(stream, batches[:done])
    store.flush()
    per_batch = int(store.stats()["bytes_uploaded"]) / done  # type: ignore[call-overload]
    step = max(1, round(object_bytes / per_batch))
    while done < len(batches):
        append_all(stream, batches[done:done + step])
        store.flush()
        done += step


class Timed:
    """Wraps a store's ``ObjectStore.get`` to add up the time spent inside GETs: on the reading
    thread (the reader waits) and on others (background loads, if any). The benchmark's
    business only: a private attribute."""

    def __init__(self, store: Any) -> None:
        self.objects = store._read._stores[""]  # the read path's view of the objects
        self.get = self.objects.get
        self.thread = threading.get_ident()
        self.own = self.other = 0.0
        self.objects.get = self._get

    def _get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        t = time.perf_counter()
        try:
            return self.get(key, start, end)
        finally:
            if threading.get_ident() == self.thread:
                self.own += time.perf_counter() - t
            else:
                self.other += time.perf_counter() - t

    def restore(self) -> None:
        self.objects.get = self.get


class Catchup:
    """A streamlib store holding one stream of the benchmark's batches: objects on S3 or local."""

    def __init__(self, name: str, directory: Path, batches: Sequence[list[bytes]],
                 storage_options: dict[str, Any] | None = None,
                 build: dict[str, Any] | None = None, **options: object) -> None:
        """``build``: options of the store that appends and uploads only (how the objects are
        cut); ``options``: of that store and of the ones that read."""
        self.name = name
        self.directory = directory
        self.storage_options = storage_options
        self.options = options
        self.value_bytes = len(batches) * BIG * RECORD_BYTES
        build = dict(build or {})
        object_bytes = build.pop("object_bytes", None)
        store = streamlib.open(directory, storage_options=storage_options, **options, **build)
        try:
            stream = store.create_stream("catch-up")
            start = time.perf_counter()
            if object_bytes is None:
                append_all(stream, batches)
            else:
                append_in_objects(store, stream, batches, object_bytes)
            self.append_s = time.perf_counter() - start
            store.flush()
            self.uploaded_s = time.perf_counter() - start
            up = store.stats()
            self.objects = int(up["objects_uploaded"])  # type: ignore[call-overload]
            self.object_bytes = int(up["bytes_uploaded"])  # type: ignore[call-overload]
            self.end = stream.next_offset
        finally:
            store.close()
        self.store: Any = None
        self.best: dict[str, dict[str, Any]] = {}
        self.warm: dict[str, Any] | None = None

    def reopen(self, cache: dict[str, Any] | None = None) -> None:
        """Open the store again (cold); ``cache``: options of a ``MessageCache`` of the default
        size to open it with (``streamlib.open(cache=…)``), else the store's own."""
        if self.store is not None:
            self.store.close()
        extra: dict[str, Any] = {} if cache is None else {"cache": block_cache(**cache)}
        self.store = streamlib.open(self.directory, storage_options=self.storage_options,
                                    **self.options, **extra)
        self.store.objects.exists("warm-up")  # a new S3 client's first request: not timed

    def read(self, fetch_bytes: int | None = FETCH_BYTES) -> dict[str, Any]:
        """Read the whole stream from the open store, with ``fetch(max_bytes=fetch_bytes)``
        (None: the default fetch)."""
        store = self.store
        stream = store.open_stream("catch-up", read_only=True)
        timed = Timed(store)
        before = store.stats()["cache"]
        total = offset = fetches = 0
        start = time.perf_counter()
        while offset < self.end:
            result = (stream.fetch(offset) if fetch_bytes is None
                      else stream.fetch(offset, max_bytes=fetch_bytes))
            for batch in result.batches:
                total += batch.count
            offset = result.next_fetch_offset
            fetches += 1
        elapsed = time.perf_counter() - start
        after = store.stats()["cache"]
        timed.restore()
        stream.close()
        total *= RECORD_BYTES
        assert total == self.value_bytes, (self.name, total, self.value_bytes)
        delta = {k: after[k] - before[k] for k in COUNTERS if k in after}
        return {"seconds": elapsed, "mb_per_s": total / elapsed / MB, "fetches": fetches,
                "get_seconds": timed.own, "background_get_seconds": timed.other, **delta,
                "gets_per_mib": delta["gets"] * MIB / total}

    def cold(self, kind: str = "cold", cache: dict[str, Any] | None = None,
             fetch_bytes: int | None = FETCH_BYTES) -> dict[str, Any]:
        """A cold read (after a reopen); the best of each ``kind`` is kept."""
        self.reopen(cache)
        result = self.read(fetch_bytes)
        if kind not in self.best or result["seconds"] < self.best[kind]["seconds"]:
            self.best[kind] = result
        return result

    def cold_without_readahead(self) -> dict[str, Any]:
        return self.cold("cold, no readahead", NO_READAHEAD)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def block_cache(**options: Any) -> Any:
    """A block cache of the default size, with these options (readahead_bytes, first_window)."""
    from streamlib.cache import MessageCache

    return MessageCache(streamlib.Config().cache_bytes, **options)


def readahead_configurable() -> bool:
    """This streamlib has readahead and ``open(cache=)`` (added after the benchmark)."""
    try:
        block_cache(**NO_READAHEAD)
    except (ImportError, TypeError):
        return False
    return "cache" in inspect.signature(streamlib.open).parameters


def sweep(lib: Catchup, raw: RawGets, repeats: int) -> list[dict[str, Any]]:
    """Cold reads on moto with other fetch sizes and readahead windows, best of ``repeats``."""
    kinds = [(f"sweep {fetch // MIB} MiB {name}", cache, fetch)
             for fetch in SWEEP_FETCH for name, cache in SWEEP_CACHE]
    for _ in range(repeats):
        raw.whole()
        for kind, cache, fetch in kinds:
            lib.cold(kind, cache, fetch)
    rows = []
    for kind, cache, fetch in kinds:
        best = lib.best.pop(kind)
        rows.append({"fetch_bytes": fetch, "readahead": kind.split(" MiB ", 1)[1],
                     "cache_options": cache, **best, "vs_raw": raw.whole_s / best["seconds"]})
    return rows


class RawGets:
    """The objects of a streamlib store on S3, GET one at a time with s3fs directly."""

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        self.fs, root = streamlib.io.open_filesystem(url, storage_options)
        listing = streamlib.io.ObjectStore(self.fs, root).list("")
        self.objects = [(f"{root}/{info.key}", info.size) for info in listing]
        self.bytes = sum(size for _, size in self.objects)
        self.fs.cat_file(self.objects[0][0], start=0, end=1)  # the client's first request
        self.whole_s = self.ranged_s = self.small_s = float("inf")
        self.ranged_gets = sum(-(-size // RANGE_BYTES) for _, size in self.objects)
        # the server's cost of a GET of RANGE_BYTES when that is the whole object (moto reads
        # the whole object to answer a ranged GET: the stream's objects cost more a range)
        self.small_path = f"{root.split('/')[0]}/raw-reference/one"
        self.fs.pipe_file(self.small_path, os.urandom(RANGE_BYTES))

    def whole(self) -> None:
        start = time.perf_counter()
        got = sum(len(self.fs.cat_file(path, start=0, end=size)) for path, size in self.objects)
        self.whole_s = min(self.whole_s, time.perf_counter() - start)
        assert got == self.bytes

    def ranged(self) -> None:
        start = time.perf_counter()
        got = 0
        for path, size in self.objects:
            for at in range(0, size, RANGE_BYTES):
                got += len(self.fs.cat_file(path, start=at, end=min(size, at + RANGE_BYTES)))
        self.ranged_s = min(self.ranged_s, time.perf_counter() - start)
        assert got == self.bytes

    def small(self) -> None:
        """SMALL_GETS GETs of a whole object of RANGE_BYTES: seconds a GET."""
        start = time.perf_counter()
        for _ in range(SMALL_GETS):
            self.fs.cat_file(self.small_path, start=0, end=RANGE_BYTES)
        self.small_s = min(self.small_s, (time.perf_counter() - start) / SMALL_GETS)


def best_of(repeats: int, steps: Sequence[tuple[str, Callable[[], Any]]]) -> None:
    """Each step ``repeats`` times, the steps taking turns."""
    for _ in range(repeats):
        for _, step in steps:
            step()


def catch_up(directory: Path, data: Data, batches: int, repeats: int, s3: bool,
             profile: bool, sweeping: bool) -> dict[str, Any]:
    big = data.big[:batches]
    value_bytes = batches * data.big_bytes
    results: dict[str, Any] = {"batches": batches, "value_bytes": value_bytes}
    local = Catchup("streamlib, local objects", directory / "catchup-local", big)
    sqlite = SQLite(directory, per_record=False)
    sqlite.append_batches(big)
    sqlite_best = [float("inf")]

    def sqlite_read() -> None:
        seconds, total = sqlite.read_back()
        assert total == value_bytes, total
        sqlite_best[0] = min(sqlite_best[0], seconds)

    steps: list[tuple[str, Callable[[], Any]]] = [("local", local.cold), ("sqlite", sqlite_read)]
    server = None
    lib = raw = slate = None
    slate_best = [float("inf")]
    try:
        if s3:
            from streamlib.testing.s3 import REGION, MotoServer, fresh_bucket

            server = MotoServer(own_process=True)  # not competing for this process's GIL
            endpoint = server.start()
            bucket_cm = fresh_bucket(endpoint)
            bucket = bucket_cm.__enter__()
            url = f"s3://{bucket.name}/streamlib"
            options = endpoint.storage_options()
            lib = Catchup("streamlib on moto", directory / "catchup-s3", big,
                          storage_options=options, objects_url=url)
            raw = RawGets(url, options)
            steps = [("raw whole", raw.whole), ("raw ranged", raw.ranged),
                     ("raw small", raw.small), *steps]
            if readahead_configurable():
                steps.append(("s3, no readahead", lib.cold_without_readahead))
            steps.append(("s3", lib.cold))  # last: the warm read uses the store it leaves
            sdb, error = slatedb_module()
            if sdb is None:
                results["slatedb_error"] = error
            else:
                s3_config = {"bucket": bucket.name, "endpoint": endpoint.url,
                             "access_key_id": endpoint.key,
                             "secret_access_key": endpoint.secret, "region": REGION}
                try:
                    slate = SlateDB(sdb, per_record=False, patched=True, s3=s3_config,
                                    label="on moto")
                    start = time.perf_counter()
                    slate.append_batches(big)
                    results["slatedb_append_mb_per_s"] = (
                        value_bytes / (time.perf_counter() - start) / MB)

                    def slate_read() -> None:
                        seconds, total = slate.read_back()
                        assert total == value_bytes, total
                        slate_best[0] = min(slate_best[0], seconds)

                    steps.append(("slatedb", slate_read))
                except Exception as failure:
                    results["slatedb_error"] = f"SlateDB on moto failed: {failure!r}"
                    slate = None
        best_of(repeats, steps)
        # 3. warm: read again from the store the last cold read left open
        local.warm = local.read()
        if lib is not None:
            lib.warm = lib.read()
            if profile:
                results["profile"] = profile_read(lib)
            if sweeping and raw is not None and readahead_configurable():
                results["sweep"] = sweep(lib, raw, repeats)
        if slate is not None:
            results["slatedb"] = {"name": slate.name, "mb_per_s": value_bytes / slate_best[0] / MB,
                                  "seconds": slate_best[0]}
        for c in filter(None, (local, lib)):
            results[c.name] = {**c.best, "warm": c.warm, "objects": c.objects,
                               "object_bytes": c.object_bytes,
                               "append_mb_per_s": value_bytes / c.append_s / MB,
                               "uploaded_mb_per_s": value_bytes / c.uploaded_s / MB}
        results["sqlite"] = {"name": sqlite.name, "seconds": sqlite_best[0],
                             "mb_per_s": value_bytes / sqlite_best[0] / MB}
        if raw is not None:
            results["raw"] = {"objects": len(raw.objects), "bytes": raw.bytes,
                              "whole_s": raw.whole_s, "ranged_s": raw.ranged_s,
                              "ranged_gets": raw.ranged_gets, "small_get_s": raw.small_s}
        results["s3"] = lib is not None
    finally:
        for closer in (local.close, sqlite.close, *(c.close for c in (lib, slate) if c)):
            with contextlib.suppress(Exception):
                closer()
        if server is not None:
            with contextlib.suppress(Exception):
                bucket_cm.__exit__(None, None, None)
            server.stop()
    return results


# ---- 4. catch-up by object size, default fetches ----


def object_shapes() -> list[tuple[str, int, dict[str, Any]]]:
    """(name, batches, options of the store that writes them) of the objects section 4 reads:
    stream objects of about 8 MiB (the writer flushes each time it has appended that much, as
    measured on its first object), stream objects cut by the uploader's own trigger of 9 MiB of
    values (appends 64 in flight outrun it: about 20 MB each on the reference machine; the table
    gives their number), and one object of about 200 MB (every trigger out of reach: the close
    uploads it)."""
    return [("stream objects of 8 MiB", SHAPE_BATCHES,
             {"object_bytes": 8 * MIB, "upload_bytes": 2 * GIB, "wal_bytes": 2 * GIB,
              "cache_bytes": 2 * GIB, "upload_interval_ms": 3_600_000}),
            ("stream objects, 9 MiB trigger", SHAPE_BATCHES, {"upload_bytes": 9 * MIB}),
            ("one object of ~200 MB", BIG_OBJECT_BATCHES,
             {"upload_bytes": 2 * GIB, "wal_bytes": 2 * GIB, "cache_bytes": 2 * GIB,
              "upload_interval_ms": 3_600_000})]


def raw_ranged(fs: Any, objects: Sequence[tuple[str, int]], step: int) -> float:
    """Seconds to GET ``objects`` whole in ranges of ``step``, one at a time."""
    start = time.perf_counter()
    got = 0
    for path, size in objects:
        for at in range(0, size, step):
            got += len(fs.cat_file(path, start=at, end=min(size, at + step)))
    assert got == sum(size for _, size in objects)
    return time.perf_counter() - start


def by_object_size(directory: Path, repeats: int, s3: bool) -> list[dict[str, Any]]:
    """Section 4: each shape of objects read cold (a reopened store) with default fetches,
    from local files and from moto, beside one-at-a-time ranged GETs of RAW_STEP of the very
    same objects (s3fs's or the local filesystem's ``cat_file``), taking turns; best of
    ``repeats``."""
    server = bucket_cm = None
    places: list[tuple[str, dict[str, Any] | None, str]] = [("file://", None, "")]
    rows: list[dict[str, Any]] = []
    try:
        if s3:
            from streamlib.testing.s3 import MotoServer, fresh_bucket

            server = MotoServer(own_process=True)
            endpoint = server.start()
            bucket_cm = fresh_bucket(endpoint)
            bucket = bucket_cm.__enter__()
            places.append(("moto", endpoint.storage_options(), f"s3://{bucket.name}"))
        for shape, batches, build in object_shapes():
            data = Data(batches)
            for place, options, url in places:
                name = f"{shape}, {place}"
                where = directory / f"shape-{len(rows)}"
                extra = {"objects_url": f"{url}/shape-{len(rows)}"} if url else {}
                lib = Catchup(name, where, data.big, storage_options=options, build=build,
                              **extra)
                objects_url = extra.get("objects_url") or f"file://{where / 'objects'}"
                fs, root = streamlib.io.open_filesystem(objects_url, options or {})
                listing = streamlib.io.ObjectStore(fs, root).list("")
                objects = [(f"{root}/{info.key}", info.size) for info in listing]
                fs.cat_file(objects[0][0], start=0, end=1)  # the client's first request
                raw_s = float("inf")
                try:
                    for _ in range(repeats):
                        raw_s = min(raw_s, raw_ranged(fs, objects, RAW_STEP))
                        lib.cold("default fetch", fetch_bytes=None)
                finally:
                    lib.close()
                best = lib.best["default fetch"]
                rows.append({"shape": shape, "place": place, "objects": len(objects),
                             "object_bytes": sum(size for _, size in objects),
                             "raw_s": raw_s, **best})
                shutil.rmtree(where, ignore_errors=True)
    finally:
        if bucket_cm is not None:
            with contextlib.suppress(Exception):
                bucket_cm.__exit__(None, None, None)
        if server is not None:
            server.stop()
    return rows


def report_shapes(rows: list[dict[str, Any]]) -> None:
    print(f"\n4. Catch-up with default fetch() sizes (max_bytes {DEFAULT_FETCH // MIB} MiB), "
          f"cold, by object size; raw = one-at-a-time ranged GETs of {RAW_STEP // MIB} MiB of "
          f"the same objects; best of the repeats")
    print(f"{'objects':<36}  {'n':>3}  {'obj MB':>6}  {'MB/s':>5}  {'obj MB/s':>8}  "
          f"{'raw obj MB/s':>12}  {'vs raw':>6}  {'GETs':>4}  {'readahead':>9}")
    for r in rows:
        obj_mb = r["object_bytes"] / MB
        print(f"{r['shape'] + ', ' + r['place']:<36}  {r['objects']:>3}  {obj_mb:>6,.0f}  "
              f"{r['mb_per_s']:>5,.0f}  {obj_mb / r['seconds']:>8,.0f}  "
              f"{obj_mb / r['raw_s']:>12,.0f}  {r['raw_s'] / r['seconds']:>5.2f}x  "
              f"{r['gets']:>4}  {r.get('readahead_blocks', 0):>9}")
    print("  MB/s = 10^6 bytes of values a second; obj MB/s = object bytes over the same time; "
          "vs raw = raw time / read time")
    print("\ntargets (catch-up by object size, default fetches)")
    for r in rows:
        label = f"{r['shape']}, {r['place']}"
        if r["place"] == "file://":
            print(f"  {label:<40} {r['mb_per_s']:>6,.0f} MB/s  target >= {LOCAL_TARGET} MB/s  "
                  f"{verdict(r['mb_per_s'] >= LOCAL_TARGET)}")
        else:
            ratio = r["raw_s"] / r["seconds"]
            print(f"  {label:<40} {ratio:>6.2f}x raw  target >= {RAW_TARGET}x       "
                  f"{verdict(ratio >= RAW_TARGET)}")


def profile_read(lib: Catchup) -> str:
    """cProfile of one cold read (the read loop's thread), top functions."""
    lib.reopen()
    profiler = cProfile.Profile()
    profiler.enable()
    lib.read()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(14)
    stats.sort_stats("cumulative").print_stats(22)
    return out.getvalue()


# ---- the report ----


def report(tail: dict[str, Any] | None, wake: dict[str, Any] | None,
           cu: dict[str, Any]) -> None:
    if tail is not None and wake is not None:
        n = tail["ack"]["read"]["n"]
        print(f"1. Tailing: {SMALL} x 1 KiB appends one at a time (file WAL), a reader thread "
              f"following; {n} samples a reader")
        print(f"{'reader':<26}  {'ack->reader p50':>15}  {'p99':>8}  {'max':>8}  "
              f"{'call->reader p50':>16}  {'p99':>8}  {'before ack':>10}")
        for mode in MODES:
            a, c = tail["ack"][mode], tail["call"][mode]
            print(f"{MODE_NAMES[mode]:<26}  {a['p50']:>13.3f}ms  {a['p99']:>6.3f}ms  "
                  f"{a['max']:>6.2f}ms  {c['p50']:>14.3f}ms  {c['p99']:>6.3f}ms  "
                  f"{tail['negative'][mode]:>10.0%}")
        ap = tail["append"]
        print(f"append call (all samples): p50 {ap['p50']:.3f} ms, p99 {ap['p99']:.3f} ms")
        print(f"reference, one thread waking another: Condition.notify -> waiter "
              f"p50 {wake['thread']['p50']:.3f} ms, p99 {wake['thread']['p99']:.3f} ms; "
              f"call_soon_threadsafe -> coroutine p50 {wake['loop']['p50']:.3f} ms, "
              f"p99 {wake['loop']['p99']:.3f} ms")
        print("  ack->reader = reader has it - append returned (negative: the reader had it "
              "first);\n  call->reader = reader has it - append called; before ack = share of "
              "samples the reader had before append returned\n")

    value_bytes = cu["value_bytes"]
    mib = value_bytes / MIB
    print(f"2-3. Catch-up: {cu['batches']} batches of {BIG} x 1 KiB ({mib:,.1f} MiB of values), "
          f"fetch max_bytes = {FETCH_BYTES // MIB} MiB, cold = after a reopen; best of the "
          f"repeats")
    rows: list[tuple[str, str, str, str, str, str]] = []
    header = ("read", "MB/s", "obj MB/s", "GETs", "GETs/MiB", "GET MiB")
    if cu["s3"]:
        raw = cu["raw"]
        obj_mb = raw["bytes"] / MB
        rows.append(("raw GET, whole objects (s3fs)", f"{value_bytes / raw['whole_s'] / MB:,.0f}",
                     f"{obj_mb / raw['whole_s']:,.0f}", f"{raw['objects']}",
                     f"{raw['objects'] * MIB / value_bytes:.3f}", f"{raw['bytes'] / MIB:,.1f}"))
        rows.append((f"raw GET, {RANGE_BYTES // MIB} MiB ranges in sequence",
                     f"{value_bytes / raw['ranged_s'] / MB:,.0f}",
                     f"{obj_mb / raw['ranged_s']:,.0f}", f"{raw['ranged_gets']}",
                     f"{raw['ranged_gets'] * MIB / value_bytes:.3f}",
                     f"{raw['bytes'] / MIB:,.1f}"))
    for name in ("streamlib on moto", "streamlib, local objects"):
        if name not in cu:
            continue
        lib = cu[name]
        for kind in ("cold", "cold, no readahead", "warm"):
            if kind not in lib:
                continue
            r = lib[kind]
            rows.append((f"{name}, {kind}", f"{r['mb_per_s']:,.0f}",
                         f"{lib['object_bytes'] / MB / r['seconds']:,.0f}", f"{r['gets']}",
                         f"{r['gets_per_mib']:.3f}", f"{r['get_bytes'] / MIB:,.1f}"))
    if "slatedb" in cu:
        rows.append((f"{cu['slatedb']['name']}", f"{cu['slatedb']['mb_per_s']:,.0f}",
                     "-", "-", "-", "-"))
    rows.append((f"{cu['sqlite']['name']} (local file)", f"{cu['sqlite']['mb_per_s']:,.0f}",
                 "-", "-", "-", "-"))
    width = max(len(r[0]) for r in [*rows, header])
    print(f"{header[0]:<{width}}  {header[1]:>6}  {header[2]:>8}  {header[3]:>5}  "
          f"{header[4]:>8}  {header[5]:>7}")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>6}  {r[2]:>8}  {r[3]:>5}  {r[4]:>8}  {r[5]:>7}")
    print("  MB/s = 10^6 bytes of values a second; obj MB/s = the same time over the bytes of "
          "the objects;\n  GET MiB = bytes the GETs returned")
    if cu["s3"]:
        lib = cu["streamlib on moto"]
        cold = lib["cold"]
        print(f"  streamlib on moto: {lib['objects']} objects, {lib['object_bytes'] / MIB:,.1f} "
              f"MiB (lz4); append {lib['append_mb_per_s']:,.0f} MB/s, "
              f"{lib['uploaded_mb_per_s']:,.0f} MB/s until all uploaded")
        own, other = cold["get_seconds"], cold["background_get_seconds"]
        ahead = (f", readahead {cold['readahead_blocks']} blocks, {cold['readahead_hits']} hits, "
                 f"{cold['shared_loads']} waits for another thread's load"
                 if "readahead_blocks" in cold else "")
        print(f"    cold read: {cold['fetches']} fetches in {cold['seconds']:.3f} s: "
              f"{own:.3f} s ({own / cold['seconds']:.0%}) inside GETs on the reading thread, "
              f"{cold['seconds'] - own:.3f} s the rest\n    (decoding, waiting for loads of "
              f"other threads); GETs on other threads {other:.3f} s; "
              f"{cold['block_misses']} block misses{ahead}")
        per_range = raw["ranged_s"] / raw["ranged_gets"] * 1e3
        print(f"  one {RANGE_BYTES // MIB} MiB GET on moto: {per_range:.1f} ms as a range of "
              f"the stream's objects (avg {raw['bytes'] / raw['objects'] / MIB:.1f} MiB), "
              f"{raw['small_get_s'] * 1e3:.1f} ms as a whole object")
        if "slatedb" in cu:
            print(f"  SlateDB: append {cu['slatedb_append_mb_per_s']:,.0f} MB/s; read = scan with "
                  f"8 MiB read-ahead and 8 fetch tasks, after a reopen")
    if "slatedb_error" in cu:
        print(f"  SlateDB on moto: NOT MEASURED: {cu['slatedb_error']}")

    print("\ntargets")
    if tail is not None:
        for mode in MODES:
            p99 = tail["ack"][mode]["p99"]
            print(f"  tailing, {MODE_NAMES[mode]:<26} ack->reader p99 {p99:>6.3f} ms  "
                  f"target < {TAIL_TARGET_MS:g} ms  {verdict(p99 < TAIL_TARGET_MS)}")
    if cu["s3"]:
        lib, raw = cu["streamlib on moto"], cu["raw"]
        cold, warm = lib["cold"], lib["warm"]
        whole = raw["whole_s"] / cold["seconds"]
        ranged = raw["ranged_s"] / cold["seconds"]
        print(f"  catch-up vs raw whole-object GETs (time)        {whole:>6.2f}x  "
              f"target >= 0.8x  {verdict(whole >= 0.8)}")
        print(f"  catch-up vs raw {RANGE_BYTES // MIB} MiB ranged GETs (time)        "
              f"{ranged:>6.2f}x  (the same target, GETs of a reader's shape)")
        print(f"  catch-up GETs a MiB of values                   {cold['gets_per_mib']:>6.3f}   "
              f"target <= 1     {verdict(cold['gets_per_mib'] <= 1)}")
        if "slatedb" in cu:
            ratio = cold["mb_per_s"] / cu["slatedb"]["mb_per_s"]
            print(f"  catch-up vs SlateDB on the same S3              {ratio:>6.2f}x  "
                  f"target >= 5x    {verdict(ratio >= 5)}")
        if "cold, no readahead" in lib:
            off = lib["cold, no readahead"]["seconds"] / cold["seconds"]
            print(f"  catch-up with readahead vs without (time)       {off:>6.2f}x  "
                  f"(for reference)")
        print(f"  warm re-read GETs                               {warm['gets']:>6}   "
              f"expected 0       {verdict(warm['gets'] == 0)}")
        print(f"  warm re-read vs cold                            "
              f"{warm['mb_per_s'] / cold['mb_per_s']:>6.2f}x  (for reference)")
    local = cu["streamlib, local objects"]
    print(f"  local objects, cold vs SQLite read              "
          f"{local['cold']['mb_per_s'] / cu['sqlite']['mb_per_s']:>6.2f}x  (for reference)")
    if "sweep" in cu:
        print("\n--sweep: cold catch-up reads on moto (best of the repeats) by fetch max_bytes "
              "and readahead;\n  raw = whole-object GETs")
        print(f"{'max_bytes':>9}  {'readahead':<26}  {'MB/s':>5}  {'vs raw':>6}  {'GETs':>4}  "
              f"{'own GET s':>9}  {'bg GET s':>8}  {'ahead':>5}  {'hits':>4}")
        for row in cu["sweep"]:
            print(f"{row['fetch_bytes'] // MIB:>5} MiB  {row['readahead']:<26}  "
                  f"{row['mb_per_s']:>5,.0f}  {row['vs_raw']:>5.2f}x  {row['gets']:>4}  "
                  f"{row['get_seconds']:>9.3f}  {row['background_get_seconds']:>8.3f}  "
                  f"{row.get('readahead_blocks', 0):>5}  {row.get('readahead_hits', 0):>4}")
    if "profile" in cu:
        print("\ncProfile of one cold catch-up read on moto (the read loop's thread)")
        print(cu["profile"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--no-s3", action="store_true", help="no moto server: local reads only")
    parser.add_argument("--sweep", action="store_true",
                        help="also cold reads on moto by fetch size and readahead window")
    parser.add_argument("--profile", action="store_true",
                        help="also a cProfile of one cold catch-up read on moto")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--dir", metavar="DIR", help="where the stores and files go")
    args = parser.parse_args()
    samples, batches, repeats = (1000, 200, 3) if args.quick else (3000, 1000, 5)
    base = Path(args.dir) if args.dir else Path("build")
    base.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="readbench-", dir=base))
    started = time.monotonic()
    data = Data(batches)
    print(f"streamlib read benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}, dir {directory}")
    print(f"streamlib imported from {Path(streamlib.__file__).parent}\n")
    try:
        wake = wake_reference(samples)
        tail = tailing(directory, data, samples)
        fans = [fan_in(directory, data, streams, samples) for streams in FAN_IN_STREAMS]
        cu = catch_up(directory, data, batches, repeats, not args.no_s3, args.profile,
                      args.sweep)
        shapes = by_object_size(directory, repeats, not args.no_s3)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report(tail, wake, cu)
    report_fan_in(fans)
    report_shapes(shapes)
    print(f"\nDone in {time.monotonic() - started:.0f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps({"tailing": tail, "wake": wake, "catch_up": cu,
                                               "fan_in": fans, "by_object_size": shapes},
                                              indent=2, default=str))


if __name__ == "__main__":
    main()
