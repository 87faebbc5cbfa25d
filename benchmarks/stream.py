"""Streams end to end (``streamlib.open``) beside SQLite, SlateDB and the raw disk, in one run.

    .venv/bin/python benchmarks/stream.py [--quick] [--s3] [--json PATH] [--dir DIR]
                                          [--prometheus-port PORT]

Every system gets the same data: batches of 100 records of 1 KiB (compact JSON events drawn
from a seeded pool of 4,096 distinct values, so they compress like logs), stream 1, and
measures, in the same directory and the same run:

- **append throughput**: the batches appended and waited for durably. streamlib keeps 64
  appends in flight (``Stream.append_future``), SlateDB 64 writes (``await_durable``); SQLite
  has one writer and commits one transaction a batch; the raw loop does one ``write`` +
  ``fdatasync`` of a batch's encoded size a batch (what a program with no group commit pays).
  Each system's batches are sent in 4 rounds taking turns with the others, so that drift in
  the machine's speed touches all alike.
- **append throughput from asyncio**: the same batches appended by ``await
  stream.append_async(...)`` from one event loop, 64 tasks in flight (awaited oldest first), on
  a store of its own, beside ``append_future``'s row (throughput only).
- **small-append latency**: batches of 10 × 1 KiB, one at a time, each waited for; p50 and p99.
  The systems take turns in chunks of 50 (the slow SlateDB variants with fewer samples).
  The raw figure is one ``write`` + ``fdatasync`` of a small batch's bytes.
- **tiny appends of many streams**: 1,000 streams × 20 rounds of one 100-byte append; streamlib
  keeps 1,000 appends in flight (``append_future``) on a store of its own at the defaults,
  SQLite commits one transaction an append (a row each); in 4 turns, and the process's CPU
  time per append for both (streamlib's background threads included).
- **read-back throughput**: everything the throughput phase wrote, read back in order after
  closing and reopening. For streamlib, ``store.flush()`` first, so that every byte comes from
  the uploaded objects (none from the WAL or the log cache), and ``fetch`` with
  ``max_bytes`` = 64 MiB; batches are returned whole, not split into Record objects.
- **PUTs and GETs per GiB** for streamlib: objects uploaded (``store.stats()``) for the
  throughput data, and calls of the reopened store's ``ObjectStore.get`` during read-back.

MB/s counts record values (10^6 bytes a second of the 1 KiB values, 102,400 bytes a batch) for
every system, whatever each adds around them.

The baselines:

- **SQLite**, ``journal_mode=WAL``, ``synchronous=FULL``, a table ``(stream, offset, payload)``
  with its primary key on ``(stream, offset)``, one transaction a batch. Two layouts: *a row a
  batch* (the payload is the batch's records, each prefixed by a 4-byte length, built in the
  timed loop) and *a row a record*.
- **SlateDB** (PyPI ``slatedb``, UniFFI bindings), objects in a local directory: its local
  object store never calls ``fsync``, so its "durable" is the page cache's, not the disk's.
  Its bindings copy ``bytes`` into Rust one byte at a time in a Python loop (≈ 6 MB/s), so two
  variants: *a key a record, as shipped* (on fewer batches: it is slow) and *a value a batch,
  bindings patched*: the byte loop replaced by one ``ctypes.memmove`` in this process, which
  shows what the engine itself does. Durable small appends call ``flush_with_options(WAL)``
  (otherwise each waits for the 100 ms flush interval; a few are timed to show it). Reads scan
  with 8 MiB of read-ahead and 8 fetch tasks (its default scan reads one block at a time).

With ``--s3`` it starts a local moto S3 server (in a process of its own, as
``benchmarks/wal.py`` does) and measures, with the objects there (the WAL stays a local file
WAL): streamlib's append throughput, the same until everything is uploaded
(``store.flush()``), read-back throughput after reopening, GETs per MiB, and whole-object GETs
of the very same objects one at a time (the server's raw GET speed for the same bytes);
SlateDB (a value a batch, patched) with its objects on the same server.

With ``--prometheus-port PORT`` the stores the run opens are served to Prometheus while it runs
(``curl localhost:PORT/metrics``; docs/metrics.md), each labelled ``store`` with the name the
report gives it; it needs ``streamlib[prometheus]``.

Absolute figures drift by ±40% between runs on the reference machine: compare within a run.
The directory defaults to a temporary one under ``build/`` (the project's disk, not tmpfs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import shutil
import sqlite3
import statistics
import struct
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import streamlib
import streamlib.io
from streamlib import Record, RecordBatch

RECORD_BYTES = 1024
BIG = 100  # records in a throughput batch
SMALL = 10  # records in a latency batch
IN_FLIGHT = 64
ROUNDS = 4  # throughput rounds, the systems taking turns
CHUNK = 50  # latency samples a system takes before the next one's turn
POOL = 4096
SEED = 20261122
FETCH_BYTES = 64 << 20
S3_REPEATS = 3  # reads from moto: best of this many
DEFAULT_SCAN_BATCHES = 50  # SlateDB's default scan is read on this many batches only
STREAM, SMALL_STREAM = 1, 2
TINY = b"t" * 100
TINY_ROUNDS, TINY_IN_FLIGHT = 20, 1000
LENGTH = struct.Struct(">I")
KEY = struct.Struct(">QQ")  # SlateDB keys: stream, offset (big-endian: they sort by offset)
MB = 1e6
GIB = 1 << 30
SERVED: dict[str, streamlib.StreamStore] = {}
"""The stores open now, by name: what ``--prometheus-port`` serves (read at each scrape)."""
MIB = 1 << 20
WORDS = ("alpha", "bravo", "cart", "delta", "echo", "search", "view", "page", "product",
         "checkout", "session", "mobile", "desktop", "region", "eu-west", "us-east", "promo",
         "banner", "click", "scroll", "filter", "price", "sort", "query", "result", "error")
EVENTS = ("view", "click", "search", "add_to_cart", "purchase", "login", "logout")


# ---- data ----


def make_pool(count: int = POOL, size: int = RECORD_BYTES) -> list[bytes]:
    """``count`` distinct compact JSON events of exactly ``size`` bytes (seeded)."""
    rng = random.Random(SEED)
    pool = []
    for seq in range(count):
        doc = {"seq": seq, "user": f"u{rng.randrange(100_000):05d}", "event": rng.choice(EVENTS),
               "amount": round(rng.uniform(1, 500), 2), "note": ""}
        room = size - len(json.dumps(doc, separators=(",", ":")))
        doc["note"] = " ".join(rng.choices(WORDS, k=room // 4 + 1))[:room]
        value = json.dumps(doc, separators=(",", ":")).encode()
        assert len(value) == size
        pool.append(value)
    return pool


class Data:
    """The batches every system appends: ``big[i]`` for throughput, ``small(i)`` for latency."""

    def __init__(self, batches: int) -> None:
        self.pool = make_pool()
        self.big = [[self.pool[(i * BIG + j) % POOL] for j in range(BIG)]
                    for i in range(batches)]
        self.big_bytes = BIG * RECORD_BYTES  # record value bytes a batch (what MB/s counts)
        self._encoded: list[RecordBatch] | None = None

    @property
    def encoded(self) -> list[RecordBatch]:
        """``big`` as RecordBatch objects, built once (outside any timing)."""
        if self._encoded is None:
            self._encoded = [RecordBatch.from_records([Record(v) for v in values])
                             for values in self.big]
        return self._encoded

    def small(self, i: int) -> list[bytes]:
        return [self.pool[(i * SMALL + j) % POOL] for j in range(SMALL)]


def framed(values: Sequence[bytes]) -> bytes:
    """The baselines' payload of a batch: each value prefixed by its length."""
    return b"".join([part for v in values for part in (LENGTH.pack(len(v)), v)])


def encoded_size(values: Sequence[bytes]) -> int:
    """Bytes of a streamlib batch of these values (what its WAL writes, less the WAL framing)."""
    return RecordBatch.from_records([Record(v) for v in values]).size


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def split(items: Sequence[Any], parts: int) -> list[Sequence[Any]]:
    """``items`` in ``parts`` consecutive chunks (the throughput rounds)."""
    step = -(-len(items) // parts)
    return [items[i:i + step] for i in range(0, len(items), step)]


# ---- the systems ----


class System:
    """One contender. ``append_batches`` returns seconds for appending ``batches`` to stream 1
    and waiting for all to be durable; ``small_append`` appends one
    small batch to stream 2 and waits; ``read_back`` returns (seconds, value bytes read) for
    everything the throughput phase wrote to stream 1, after a close and reopen."""

    name = ""
    encoded = False  # append_batches takes RecordBatch objects (Data.encoded), not values

    def append_batches(self, batches: Sequence[list[bytes]]) -> float:
        raise NotImplementedError

    def small_append(self, values: list[bytes]) -> None:
        raise NotImplementedError

    def read_back(self) -> tuple[float, int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Raw(System):
    """One ``write`` + ``fdatasync`` a batch of a streamlib batch's encoded size, appended to
    a file: the physical reference (no WAL framing, no index, no group commit)."""

    name = "raw write+fdatasync"

    def __init__(self, directory: Path, big_size: int, small_size: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        self.fd = os.open(directory / "raw.bin", flags)
        self.big = os.urandom(big_size)
        self.small = os.urandom(small_size)

    def append_batches(self, batches: Sequence[list[bytes]]) -> float:
        start = time.perf_counter()
        for _ in batches:
            os.write(self.fd, self.big)
            os.fdatasync(self.fd)
        return time.perf_counter() - start

    def small_append(self, values: list[bytes]) -> None:
        os.write(self.fd, self.small)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class StreamlibSystem(System):
    """``streamlib.open(directory, **options)``: a file WAL; objects where ``options`` say."""

    def __init__(self, name: str, directory: Path, storage_options: dict[str, Any] | None = None,
                 *, encoded: bool = False, **options: object) -> None:
        self.name = name
        self.encoded = encoded
        self.directory = directory
        self.storage_options = storage_options
        self.options = options
        self.store = SERVED[name] = streamlib.open(directory, storage_options=storage_options,
                                                   **options)
        self.stream = self.store.create_stream("bench")
        self.small = self.store.create_stream("small")
        assert (self.stream.id, self.small.id) == (STREAM, SMALL_STREAM)
        self.appended = 0  # record value bytes appended to stream 1
        self.flush_seconds = 0.0
        self.puts = 0
        self.uploaded_bytes = 0
        self.gets = 0
        self.got_bytes = 0
        self.reopen_seconds = 0.0

    def append_batches(self, batches: Sequence[Any]) -> float:
        pending: deque[Future[Any]] = deque()
        start = time.perf_counter()
        for values in batches:
            if len(pending) >= IN_FLIGHT:
                pending.popleft().result()
            pending.append(self.stream.append_future(values))
        for future in pending:
            future.result()
        elapsed = time.perf_counter() - start
        self.appended += len(batches) * BIG * RECORD_BYTES
        self.upload_rest()
        return elapsed

    def upload_rest(self) -> None:
        """Upload what the uploader has not yet (untimed in the append figures): its background
        work must not run into the next system's turn."""
        start = time.perf_counter()
        self.store.flush()
        self.flush_seconds += time.perf_counter() - start

    def mark(self) -> None:
        """Before the throughput phase: count uploads from here."""
        self.before = self.store.stats()

    def upload_all(self) -> None:
        """Upload what is left of the throughput data, and count the objects uploaded since
        :meth:`mark` (the uploader starts while the appends go on)."""
        before = self.before
        self.upload_rest()
        after = self.store.stats()
        self.puts = after["objects_uploaded"] - before["objects_uploaded"]  # type: ignore[operator]
        self.uploaded_bytes = (after["bytes_uploaded"]  # type: ignore[operator]
                               - before["bytes_uploaded"])

    def small_append(self, values: list[bytes]) -> None:
        self.small.append(values)

    def read_back(self) -> tuple[float, int]:
        self.store.flush()
        self.store.close()
        start = time.perf_counter()
        self.store = SERVED[self.name] = streamlib.open(
            self.directory, storage_options=self.storage_options, **self.options)
        self.reopen_seconds = time.perf_counter() - start
        self.store.objects.exists("warm-up")  # a new S3 client's first request: not here
        before: Any = self.store.stats()["cost"]
        before = before["read"]  # the GETs of the read path (indexes and blocks)
        stream = self.store.open_stream("bench", read_only=True)
        total = 0
        offset = 0
        start = time.perf_counter()
        while True:
            result = stream.fetch(offset, max_bytes=FETCH_BYTES)
            if not result.batches:
                break
            for batch in result.batches:
                total += batch.count * RECORD_BYTES
            offset = result.next_fetch_offset
        elapsed = time.perf_counter() - start
        after: Any = self.store.stats()["cost"]
        after = after["read"]
        self.gets = after["gets"] - before["gets"]
        self.got_bytes = after["bytes_received"] - before["bytes_received"]
        assert total == self.appended, (total, self.appended)
        return elapsed, total

    def object_keys(self) -> list[tuple[str, int]]:
        return [(info.key, info.size) for info in self.store.objects.list("")]

    def close(self) -> None:
        self.store.close()


class StreamlibAsync(StreamlibSystem):
    """The same store appended to from an event loop: ``await stream.append_async(...)``,
    ``IN_FLIGHT`` at a time (a task each, awaited oldest first), one loop for the whole run."""

    def __init__(self, name: str, directory: Path, **options: object) -> None:
        super().__init__(name, directory, **options)
        self.loop = asyncio.new_event_loop()

    def append_batches(self, batches: Sequence[Any]) -> float:
        async def go() -> float:
            pending: deque[asyncio.Task[Any]] = deque()
            start = time.perf_counter()
            for values in batches:
                if len(pending) >= IN_FLIGHT:
                    await pending.popleft()
                pending.append(asyncio.ensure_future(self.stream.append_async(values)))
            for task in pending:
                await task
            return time.perf_counter() - start

        elapsed = self.loop.run_until_complete(go())
        self.appended += len(batches) * BIG * RECORD_BYTES
        self.upload_rest()
        return elapsed

    def small_append(self, values: list[bytes]) -> None:
        self.loop.run_until_complete(self.small.append_async(values))

    def close(self) -> None:
        super().close()
        self.loop.close()


class SQLite(System):
    """SQLite in WAL mode with ``synchronous=FULL``, one transaction a batch; a row a batch
    (``per_record=False``) or a row a record."""

    def __init__(self, directory: Path, per_record: bool) -> None:
        self.per_record = per_record
        self.name = f"SQLite, a row a {'record' if per_record else 'batch'}"
        self.path = directory / f"sqlite-{'record' if per_record else 'batch'}.db"
        self.db = self._connect()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE log (stream INTEGER, offset INTEGER, payload BLOB, "
                        "PRIMARY KEY (stream, offset))")
        self.next = {STREAM: 0, SMALL_STREAM: 0}

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _append(self, stream: int, values: list[bytes]) -> None:
        offset = self.next[stream]
        self.db.execute("BEGIN")
        if self.per_record:
            self.db.executemany("INSERT INTO log VALUES (?, ?, ?)",
                                [(stream, offset + i, v) for i, v in enumerate(values)])
        else:
            self.db.execute("INSERT INTO log VALUES (?, ?, ?)", (stream, offset, framed(values)))
        self.db.execute("COMMIT")
        self.next[stream] = offset + len(values)

    def append_batches(self, batches: Sequence[list[bytes]]) -> float:
        start = time.perf_counter()
        for values in batches:
            self._append(STREAM, values)
        return time.perf_counter() - start

    def small_append(self, values: list[bytes]) -> None:
        self._append(SMALL_STREAM, values)

    def read_back(self) -> tuple[float, int]:
        self.db.close()
        self.db = self._connect()
        total = 0
        start = time.perf_counter()
        cursor = self.db.execute("SELECT offset, payload FROM log WHERE stream = ? "
                                 "ORDER BY offset", (STREAM,))
        while rows := cursor.fetchmany(1000):
            for _, payload in rows:
                total += len(payload)
        elapsed = time.perf_counter() - start
        if not self.per_record:  # count the values only, as for the others
            total -= self.next[STREAM] * LENGTH.size
        return elapsed, total

    def close(self) -> None:
        self.db.close()


# ---- SlateDB ----


def slatedb_module() -> tuple[Any, str]:
    """(``slatedb.uniffi``, "") or (None, why not)."""
    try:
        import slatedb.uniffi as sdb
    except ImportError as error:
        return None, f"slatedb is not installed ({error}): pip install -e '.[bench]'"
    return sdb, ""


def bindings_builder() -> Any:
    """The bindings' buffer builder whose ``write`` copies ``bytes`` a byte at a time (as in
    slatedb 0.17), or None if this version has none such."""
    try:
        from slatedb.uniffi._slatedb_uniffi import slatedb as generated
    except ImportError:
        return None
    builder = getattr(generated, "_UniffiRustBufferBuilder", None)
    if builder is None or not all(hasattr(builder, a) for a in ("write", "_reserve")):
        return None
    return builder


@contextlib.contextmanager
def memmove_bindings(enabled: bool) -> Iterator[None]:
    """Replace the bindings' byte-at-a-time copy of ``bytes`` into a Rust buffer by one
    ``ctypes.memmove`` (in this process only, while inside)."""
    if not enabled:
        yield
        return
    builder = bindings_builder()
    original = builder.write

    def write(self: Any, value: bytes) -> None:
        size = len(value)
        with self._reserve(size):
            ctypes.memmove(ctypes.addressof(self.rbuf.data.contents) + self.rbuf.len,
                           bytes(value), size)

    builder.write = write
    try:
        yield
    finally:
        builder.write = original


class SlateDB(System):
    """SlateDB with its objects in a local directory (``local_path``) or on S3 (``s3``: the
    endpoint, bucket and credentials). ``per_record``: a key a record in one ``WriteBatch`` a
    batch, else a value a batch (``put``). ``patched``: see :func:`memmove_bindings`."""

    def __init__(self, sdb: Any, *, per_record: bool, patched: bool,
                 local_path: Path | None = None, s3: dict[str, str] | None = None,
                 label: str = "local") -> None:
        self.sdb = sdb
        self.per_record = per_record
        self.patched = patched and bindings_builder() is not None  # else: as shipped
        self.local_path = local_path
        self.s3 = s3
        layout = "a key a record" if per_record else "a value a batch"
        self.name = f"SlateDB {label}, {layout}{', patched' if self.patched else ''}"
        self.loop = asyncio.new_event_loop()
        self.next = {STREAM: 0, SMALL_STREAM: 0}
        self.unflushed_ms: list[float] = []
        self.first: bytes | None = None  # the first value written to stream 1, to check reads
        if local_path is not None:
            local_path.mkdir(parents=True, exist_ok=True)
        self.db = self.run(self._open())

    def run(self, coroutine: Any) -> Any:
        with memmove_bindings(self.patched):
            return self.loop.run_until_complete(coroutine)

    def _store(self) -> Any:
        sdb = self.sdb
        if self.s3 is not None:
            builder = sdb.ObjectStoreBuilder.from_url(f"s3://{self.s3['bucket']}")
            for key in ("endpoint", "access_key_id", "secret_access_key", "region"):
                builder.with_config(key, self.s3[key])
            builder.with_config("allow_http", "true")
        else:
            builder = sdb.ObjectStoreBuilder.from_env(sdb.ObjectStoreType.LOCAL)
            builder.with_config("local_path", str(self.local_path))
        return builder.build()

    async def _open(self) -> Any:
        return await self.sdb.DbBuilder("bench", self._store()).build()

    def _write(self, stream: int, values: list[bytes]) -> Any:
        """The write's coroutine (its handle's), and the offsets taken at call time."""
        offset = self.next[stream]
        self.next[stream] = offset + len(values)
        if stream == STREAM and offset == 0:
            self.first = values[0] if self.per_record else framed(values)
        if self.per_record:
            batch = self.sdb.WriteBatch()
            for i, v in enumerate(values):
                batch.put(KEY.pack(stream, offset + i), v)
            return self.db.write(batch)
        return self.db.put(KEY.pack(stream, offset), framed(values))

    def append_batches(self, batches: Sequence[list[bytes]]) -> float:
        async def go() -> None:
            window = asyncio.Semaphore(IN_FLIGHT)

            async def one(values: list[bytes]) -> None:
                async with window:
                    handle = await self._write(STREAM, values)
                    await handle.await_durable()

            await asyncio.gather(*(one(v) for v in batches))

        start = time.perf_counter()
        self.run(go())
        elapsed = time.perf_counter() - start
        # its memtable to L0 (untimed): background work must not run into the next turn
        self.run(self.db.flush_with_options(
            self.sdb.FlushOptions(flush_type=self.sdb.FlushType.MEM_TABLE)))
        return elapsed

    def small_append(self, values: list[bytes]) -> None:
        async def go() -> None:
            handle = await self._write(SMALL_STREAM, values)
            await self.db.flush_with_options(
                self.sdb.FlushOptions(flush_type=self.sdb.FlushType.WAL))
            await handle.await_durable()

        self.run(go())

    def time_unflushed(self, data: Data, count: int) -> None:
        """Milliseconds of small appends waited for durably without a flush call."""
        async def go(values: list[bytes]) -> None:
            handle = await self._write(SMALL_STREAM, values)
            await handle.await_durable()

        for i in range(count):
            start = time.perf_counter()
            self.run(go(data.small(i)))
            self.unflushed_ms.append((time.perf_counter() - start) * 1e3)

    def read_back(self) -> tuple[float, int]:
        sdb = self.sdb
        self.run(self.db.shutdown())
        self.db = self.run(self._open())
        scan = sdb.ScanOptions(durability_filter=sdb.DurabilityLevel.REMOTE, dirty=False,
                               read_ahead_bytes=8 * MIB, cache_blocks=False, max_fetch_tasks=8)
        keys = sdb.KeyRange(start=KEY.pack(STREAM, 0), start_inclusive=True,
                            end=KEY.pack(STREAM + 1, 0), end_inclusive=False)
        per_call = 4096 if self.per_record else 64

        async def go() -> int:
            total = 0
            rows = await self.db.scan_with_options(keys, scan)
            while batch := await rows.next_batch(per_call):
                if not total and batch[0].value != self.first:
                    raise AssertionError(f"{self.name}: the first value read back differs")
                for row in batch:
                    total += len(row.value)
            return total

        start = time.perf_counter()
        total = self.run(go())
        elapsed = time.perf_counter() - start
        if not self.per_record:
            total -= self.next[STREAM] * LENGTH.size
        return elapsed, total

    def default_scan(self, batches: int) -> dict[str, float]:
        """MB/s of values of the first ``batches`` batches read with ``Db.scan`` and its default
        options (after :meth:`read_back`: from the same reopened database)."""
        records = batches * BIG
        keys = self.sdb.KeyRange(start=KEY.pack(STREAM, 0), start_inclusive=True,
                                 end=KEY.pack(STREAM, records), end_inclusive=False)

        async def go() -> int:
            total = 0
            rows = await self.db.scan(keys)
            while batch := await rows.next_batch(4096 if self.per_record else 64):
                for row in batch:
                    total += len(row.value)
            return total

        start = time.perf_counter()
        total = self.run(go())
        elapsed = time.perf_counter() - start
        if not self.per_record:
            total -= records * LENGTH.size
        return {"batches": batches, "mb_per_s": total / elapsed / MB}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.db.shutdown())
        self.loop.close()


# ---- the phases ----


def throughput(systems: dict[System, int], data: Data) -> dict[str, dict[str, float]]:
    """Each system appends its first ``count`` batches in ROUNDS rounds, taking turns."""
    seconds = {s: 0.0 for s in systems}
    parts = {s: split((data.encoded if s.encoded else data.big)[:count], ROUNDS)
             for s, count in systems.items()}
    for r in range(ROUNDS):
        for system in systems:
            if r < len(parts[system]):
                seconds[system] += system.append_batches(parts[system][r])
    return {s.name: {"batches": n, "seconds": seconds[s],
                     "mb_per_s": n * data.big_bytes / seconds[s] / MB}
            for s, n in systems.items()}


def latency(systems: dict[System, int], data: Data) -> dict[str, dict[str, float]]:
    """``count`` small appends of each, one at a time, in alternating chunks (a system with
    fewer samples takes proportionally smaller chunks, so that all span the same rounds)."""
    most = max(systems.values())
    chunk = {s: max(1, round(CHUNK * n / most)) for s, n in systems.items()}
    samples: dict[System, list[float]] = {s: [] for s in systems}
    index = 0
    while any(len(samples[s]) < n for s, n in systems.items()):
        for system, count in systems.items():
            for _ in range(min(chunk[system], count - len(samples[system]))):
                values = data.small(index)
                index += 1
                start = time.perf_counter()
                system.small_append(values)
                samples[system].append(time.perf_counter() - start)
    return {s.name: {"samples": len(samples[s]),
                     "p50_ms": statistics.median(samples[s]) * 1e3,
                     "p99_ms": percentile(samples[s], 0.99) * 1e3} for s in systems}


def tiny_appends(directory: Path, streams: int) -> dict[str, dict[str, float]]:
    """``TINY_ROUNDS`` rounds of one ``TINY`` append to each of ``streams`` streams: streamlib
    with ``TINY_IN_FLIGHT`` in flight, SQLite one transaction an append; in ROUNDS turns."""
    store = SERVED["streamlib, tiny appends"] = streamlib.open(directory / "streamlib-tiny")
    db = sqlite3.connect(directory / "sqlite-tiny.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE log (stream INTEGER, offset INTEGER, payload BLOB, "
               "PRIMARY KEY (stream, offset))")
    seconds = {"streamlib": 0.0, "sqlite": 0.0}
    cpu = dict(seconds)
    try:
        handles = [store.create_stream() for _ in range(streams)]
        offset = 0
        for _ in range(ROUNDS):
            rounds = TINY_ROUNDS // ROUNDS
            started, used = time.perf_counter(), time.process_time()
            waiting: deque[Future[Any]] = deque()
            for _ in range(rounds):
                for handle in handles:
                    waiting.append(handle.append_future([TINY]))
                    if len(waiting) >= TINY_IN_FLIGHT:
                        waiting.popleft().result()
            for future in waiting:
                future.result()
            seconds["streamlib"] += time.perf_counter() - started
            cpu["streamlib"] += time.process_time() - used
            started, used = time.perf_counter(), time.process_time()
            for _ in range(rounds):
                for stream in range(streams):
                    db.execute("BEGIN")
                    db.execute("INSERT INTO log VALUES (?, ?, ?)", (stream, offset, TINY))
                    db.execute("COMMIT")
                offset += 1
            seconds["sqlite"] += time.perf_counter() - started
            cpu["sqlite"] += time.process_time() - used
    finally:
        store.close()
        db.close()
    appends = streams * TINY_ROUNDS
    return {name: {"appends": appends, "seconds": seconds[name],
                   "appends_per_s": appends / seconds[name],
                   "cpu_us_per_append": cpu[name] / appends * 1e6} for name in seconds}


def local_run(directory: Path, data: Data, batches: int, small: int) -> dict[str, Any]:
    sdb, slatedb_error = slatedb_module()
    big_size = encoded_size(data.big[0])
    small_size = encoded_size(data.small(0))
    raw = Raw(directory, big_size, small_size)
    lib = StreamlibSystem("streamlib, file WAL", directory / "streamlib")
    lib_encoded = StreamlibSystem("streamlib, RecordBatch in", directory / "streamlib-encoded",
                                  encoded=True)
    lib_async = StreamlibAsync("streamlib, append_async", directory / "streamlib-async")
    data.encoded  # noqa: B018 (built before any timing)
    sqlite_batch = SQLite(directory, per_record=False)
    sqlite_record = SQLite(directory, per_record=True)
    systems: list[System] = [lib, raw, sqlite_batch, sqlite_record]
    counts = {lib: batches, raw: batches, sqlite_batch: batches, sqlite_record: batches}
    small_counts = dict.fromkeys(counts, small)
    counts[lib_encoded] = batches  # throughput only
    # throughput only, right after append_future's turn in each round: the same disk behind it
    counts = {lib: batches, lib_async: batches, **{k: v for k, v in counts.items() if k != lib}}
    slate: list[SlateDB] = []
    if sdb is not None:
        try:
            fast = SlateDB(sdb, per_record=False, patched=True,
                           local_path=directory / "slatedb-batch")
            shipped = SlateDB(sdb, per_record=True, patched=False,
                              local_path=directory / "slatedb-record")
        except Exception as error:
            slatedb_error = f"SlateDB did not open: {error!r}"
        else:
            slate = [fast, shipped]
            systems += slate
            counts[fast] = batches
            counts[shipped] = max(20, batches // 10)
            small_counts[fast] = max(50, small // 5)
            small_counts[shipped] = max(50, small // 10)
    try:
        for system in [*systems, lib_async]:  # warm-up: files, first allocations, the codec
            for i in range(5):
                system.small_append(data.small(i))
        lib.store.flush()
        lib.mark()
        results: dict[str, Any] = {"throughput": throughput(counts, data)}
        lib_encoded.close()
        lib_async.close()
        lib.upload_all()
        results["latency"] = latency(small_counts, data)
        results["tiny"] = tiny_appends(directory, 200 if batches < 1000 else 1000)
        if slate:
            slate[0].time_unflushed(data, 5 if batches < 1000 else 10)
            results["slatedb_default_scan"] = {
                s.name: s.default_scan(min(counts[s], DEFAULT_SCAN_BATCHES)) for s in slate}
        reads = {}
        for system in systems:
            if system is raw:
                continue
            seconds, total = system.read_back()
            assert total == counts[system] * data.big_bytes, (system.name, total)
            reads[system.name] = {"seconds": seconds, "mb_per_s": total / seconds / MB,
                                  "bytes": total}
        results["read"] = reads
        appended = lib.appended
        results["streamlib"] = {
            "value_bytes": appended, "upload_seconds": lib.flush_seconds,
            "objects_uploaded": lib.puts, "bytes_uploaded": lib.uploaded_bytes,
            "puts_per_gib": lib.puts * GIB / appended, "gets": lib.gets,
            "got_bytes": lib.got_bytes, "gets_per_gib": lib.gets * GIB / appended,
            "gets_per_mib": lib.gets * MIB / appended, "reopen_seconds": lib.reopen_seconds,
            "encoded_batch_bytes": big_size, "encoded_small_bytes": small_size}
        results["slatedb_error"] = slatedb_error
        results["slatedb_unflushed_ms"] = slate[0].unflushed_ms if slate else []
        results["names"] = {"streamlib": lib.name, "encoded": lib_encoded.name,
                            "async": lib_async.name, "raw": raw.name,
                            "sqlite": sqlite_batch.name, "sqlite_record": sqlite_record.name,
                            "slatedb": [s.name for s in slate]}
        return results
    finally:
        for system in [*systems, lib_encoded, lib_async]:
            with contextlib.suppress(Exception):
                system.close()


def s3_run(directory: Path, data: Data, batches: int) -> dict[str, Any]:
    """streamlib and SlateDB with their objects on a local moto server."""
    from streamlib.testing.s3 import REGION, MotoServer, fresh_bucket

    results: dict[str, Any] = {}
    server = MotoServer(own_process=True)  # its work must not compete for this process's GIL
    endpoint = server.start()
    try:
        with fresh_bucket(endpoint) as bucket:
            lib = StreamlibSystem("streamlib on moto", directory / "s3-streamlib",
                                  storage_options=endpoint.storage_options(),
                                  objects_url=f"s3://{bucket.name}/streamlib")
            try:
                lib.small_append(data.small(0))
                lib.store.flush()
                lib.mark()
                warm_up = set(lib.object_keys())
                append_s = sum(lib.append_batches(part)
                               for part in split(data.big[:batches], ROUNDS))
                lib.upload_all()
                keys = [(k, n) for k, n in lib.object_keys() if (k, n) not in warm_up]
                raw_store = streamlib.io.ObjectStore.from_url(f"s3://{bucket.name}/streamlib",
                                                              endpoint.storage_options())
                raw_store.exists("warm-up")
                # best of S3_REPEATS, the raw GETs and streamlib's read (reopened each time,
                # so that it loads every object's index again) taking turns
                raw_s = read_s = float("inf")
                for _ in range(S3_REPEATS):
                    start = time.perf_counter()
                    raw_bytes = sum(len(raw_store.get(key, 0)) for key, _ in keys)
                    raw_s = min(raw_s, time.perf_counter() - start)
                    seconds, total = lib.read_back()
                    read_s = min(read_s, seconds)
            finally:
                lib.close()
            value_bytes = batches * data.big_bytes
            results["streamlib"] = {
                "batches": batches, "append_mb_per_s": value_bytes / append_s / MB,
                "uploaded_mb_per_s": value_bytes / (append_s + lib.flush_seconds) / MB,
                "read_mb_per_s": total / read_s / MB, "read_seconds": read_s,
                "objects": len(keys), "object_bytes": raw_bytes, "puts": lib.puts,
                "gets": lib.gets, "gets_per_mib": lib.gets * MIB / value_bytes,
                "raw_get_mb_per_s": raw_bytes / raw_s / MB, "raw_get_seconds": raw_s,
                "fetch_vs_raw_get": raw_s / read_s}
            sdb, error = slatedb_module()
            if sdb is None:
                results["slatedb_error"] = error
                return results
            s3 = {"bucket": bucket.name, "endpoint": endpoint.url,
                  "access_key_id": endpoint.key, "secret_access_key": endpoint.secret,
                  "region": REGION}
            try:
                slate = SlateDB(sdb, per_record=False, patched=True, s3=s3, label="on moto")
            except Exception as error:
                results["slatedb_error"] = f"SlateDB did not open on moto: {error!r}"
                return results
            try:
                append_s = sum(slate.append_batches(part)
                               for part in split(data.big[:batches], ROUNDS))
                read_s, total = slate.read_back()
                assert total == value_bytes, total
                default = slate.default_scan(min(batches, DEFAULT_SCAN_BATCHES))
            finally:
                slate.close()
            results["slatedb"] = {"name": slate.name, "batches": batches,
                                  "append_mb_per_s": value_bytes / append_s / MB,
                                  "read_mb_per_s": total / read_s / MB, "default_scan": default}
    finally:
        server.stop()
    return results


# ---- the report ----


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(local: dict[str, Any], s3: dict[str, Any] | None) -> None:
    names = local["names"]
    tp, lat, rd = local["throughput"], local["latency"], local["read"]
    order = [names["streamlib"], names["raw"], names["sqlite"], names["sqlite_record"],
             *names["slatedb"]]
    width = max(len(n) for n in order)
    print(f"{'system':<{width}}  {'batches':>7}  {'append MB/s':>11}  {'small p50':>9}  "
          f"{'small p99':>9}  {'n':>4}  {'read MB/s':>9}")
    for name in order:
        read = f"{rd[name]['mb_per_s']:>9,.0f}" if name in rd else f"{'-':>9}"
        print(f"{name:<{width}}  {tp[name]['batches']:>7}  {tp[name]['mb_per_s']:>11,.1f}  "
              f"{lat[name]['p50_ms']:>7.3f}ms  {lat[name]['p99_ms']:>7.3f}ms  "
              f"{lat[name]['samples']:>4}  {read}")
    encoded = names["encoded"]
    print(f"{encoded:<{width}}  {tp[encoded]['batches']:>7}  {tp[encoded]['mb_per_s']:>11,.1f}  "
          f"(throughput only: batches built before timing)")
    via = names["async"]
    print(f"{via:<{width}}  {tp[via]['batches']:>7}  {tp[via]['mb_per_s']:>11,.1f}  "
          f"(throughput only: {IN_FLIGHT} append_async tasks in flight on one event loop)")
    lib = local["streamlib"]
    print(f"append = {BIG} x 1 KiB batches ({IN_FLIGHT} in flight for streamlib and SlateDB, one "
          f"transaction at a time for SQLite);\n  small = {SMALL} x 1 KiB, one at a time; "
          f"n = small samples; read = everything appended, after a reopen.\n  raw = one write "
          f"+ fdatasync of {lib['encoded_batch_bytes']:,} bytes a batch (small: "
          f"{lib['encoded_small_bytes']:,} bytes), a streamlib batch's encoded size.")
    if names["slatedb"]:
        unflushed = local["slatedb_unflushed_ms"]
        print("  SlateDB: local object store, never fsyncs; small appends call "
              "flush_with_options(WAL)\n  (without it a durable small append took "
              f"{statistics.median(unflushed):.0f} ms, p50 of {len(unflushed)}); 'patched' = "
              "bytes copied into Rust by memmove instead\n  of the bindings' Python byte loop; "
              "read = scan with 8 MiB read-ahead and 8 fetch tasks; with the\n  default scan "
              "options: " + "; ".join(f"{name.split(', ', 1)[1]} {f['mb_per_s']:,.1f} MB/s "
                                      f"({f['batches']} batches)"
                                      for name, f in local["slatedb_default_scan"].items()))
    else:
        print(f"  SlateDB: NOT MEASURED: {local['slatedb_error']}")
    tiny = local["tiny"]
    print(f"\ntiny appends: {tiny['streamlib']['appends']:,} of 100 bytes over "
          f"{tiny['streamlib']['appends'] // TINY_ROUNDS:,} streams ({TINY_IN_FLIGHT:,} in flight "
          f"for streamlib; SQLite one transaction each):\n  " + "; ".join(
              f"{name} {f['appends_per_s']:,.0f} appends/s, {f['cpu_us_per_append']:.0f} us CPU "
              f"an append" for name, f in tiny.items()))
    print(f"\nstreamlib objects (local): {lib['objects_uploaded']} PUTs for "
          f"{lib['value_bytes'] / MIB:,.0f} MiB of values = {lib['puts_per_gib']:.0f} PUTs/GiB "
          f"(uploading what was left after each round took {lib['upload_seconds']:.2f} s, untimed; "
          f"{lib['bytes_uploaded'] / MIB:,.1f} MiB of objects);\n  read-back: {lib['gets']} GETs "
          f"of {lib['got_bytes'] / MIB:,.1f} MiB = {lib['gets_per_gib']:.0f} GETs/GiB "
          f"({lib['gets_per_mib']:.3f} a MiB); reopen took {lib['reopen_seconds']:.2f} s")

    s, raw = names["streamlib"], names["raw"]
    sq, sq_rec = names["sqlite"], names["sqlite_record"]
    ratio_sq = tp[s]["mb_per_s"] / tp[sq]["mb_per_s"]
    ratio_sq_rec = tp[s]["mb_per_s"] / tp[sq_rec]["mb_per_s"]
    ratio_raw = tp[s]["mb_per_s"] / tp[raw]["mb_per_s"]
    ratio_p99 = lat[s]["p99_ms"] / lat[raw]["p99_ms"]
    print("\ntargets")
    print(f"  append vs SQLite (a row a batch)  {ratio_sq:>6.2f}x  target >= 2x    "
          f"{verdict(ratio_sq >= 2)}")
    print(f"  append vs SQLite (a row a record) {ratio_sq_rec:>6.2f}x  (for reference)")
    ratio_async = tp[names["async"]]["mb_per_s"] / tp[s]["mb_per_s"]
    print(f"  append_async vs append_future     {ratio_async:>6.2f}x  target >= 0.9x  "
          f"{verdict(ratio_async >= 0.9)}")
    print(f"  append vs raw write+fdatasync     {ratio_raw:>6.2f}x  target >= 0.8x  "
          f"{verdict(ratio_raw >= 0.8)}")
    print(f"  small p99 vs raw fdatasync p99    {ratio_p99:>6.2f}x  target <= 2x    "
          f"{verdict(ratio_p99 <= 2)}")
    print(f"  small p50 vs SQLite p50           {lat[s]['p50_ms'] / lat[sq]['p50_ms']:>6.2f}x  "
          f"target <= 1x    {verdict(lat[s]['p50_ms'] <= lat[sq]['p50_ms'])}")
    print(f"  small p99 vs SQLite p99           {lat[s]['p99_ms'] / lat[sq]['p99_ms']:>6.2f}x  "
          f"(for reference)")
    tiny = local["tiny"]
    ratio_tiny = tiny["streamlib"]["appends_per_s"] / tiny["sqlite"]["appends_per_s"]
    print(f"  tiny appends vs SQLite            {ratio_tiny:>6.2f}x  target >= 2x    "
          f"{verdict(ratio_tiny >= 2)}")
    print(f"  read-back vs SQLite (a row a batch) "
          f"{rd[s]['mb_per_s'] / rd[sq]['mb_per_s']:>4.2f}x  (for reference)")
    for name in names["slatedb"]:
        print(f"  append vs {name}: {tp[s]['mb_per_s'] / tp[name]['mb_per_s']:.1f}x; "
              f"read-back: {rd[s]['mb_per_s'] / rd[name]['mb_per_s']:.1f}x")
    if s3 is None:
        return
    lib3 = s3["streamlib"]
    print(f"\nobjects on moto (own process), {lib3['batches']} batches of {BIG} x 1 KiB, "
          f"{IN_FLIGHT} in flight; the WAL is a local file WAL")
    print(f"  streamlib: append {lib3['append_mb_per_s']:,.1f} MB/s; append until all uploaded "
          f"{lib3['uploaded_mb_per_s']:,.1f} MB/s ({lib3['puts']} PUTs);\n    read-back "
          f"(best of {S3_REPEATS}) {lib3['read_mb_per_s']:,.1f} MB/s with {lib3['gets']} GETs = "
          f"{lib3['gets_per_mib']:.3f} GETs a MiB of values")
    print(f"  raw GET of the same {lib3['objects']} objects "
          f"({lib3['object_bytes'] / MIB:,.1f} MiB), whole, one at a time (best of "
          f"{S3_REPEATS}): "
          f"{lib3['raw_get_mb_per_s']:,.1f} MB/s of object bytes")
    if "slatedb" in s3:
        slate = s3["slatedb"]
        print(f"  {slate['name']}: append {slate['append_mb_per_s']:,.1f} MB/s, read-back "
              f"{slate['read_mb_per_s']:,.1f} MB/s (tuned scan); default scan "
              f"{slate['default_scan']['mb_per_s']:,.1f} MB/s "
              f"({slate['default_scan']['batches']} batches)")
    else:
        print(f"  SlateDB on moto: NOT MEASURED: {s3.get('slatedb_error')}")
    ratio_get = lib3["fetch_vs_raw_get"]
    print(f"  catch-up read vs raw GET of the same bytes (time) {ratio_get:>5.2f}x  "
          f"target >= 0.8x  {verdict(ratio_get >= 0.8)}")
    print(f"  GETs a MiB                                        {lib3['gets_per_mib']:>5.3f}   "
          f"target <= 1     {verdict(lib3['gets_per_mib'] <= 1)}")
    if "slatedb" in s3:
        ratio = lib3["read_mb_per_s"] / s3["slatedb"]["read_mb_per_s"]
        default = lib3["read_mb_per_s"] / s3["slatedb"]["default_scan"]["mb_per_s"]
        print(f"  catch-up read vs SlateDB on the same S3           {ratio:>5.2f}x  "
              f"target >= 5x    {verdict(ratio >= 5)} (its default scan: {default:.1f}x)")


def serve_metrics(port: int) -> None:
    """Serve the metrics of the stores in :data:`SERVED` on ``127.0.0.1:port`` (a daemon
    thread of prometheus_client's: it ends with the run)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from streamlib.exporters.prometheus import StreamlibCollector

    registry = CollectorRegistry()
    registry.register(StreamlibCollector(SERVED, per_stream=True))
    start_http_server(port, addr="127.0.0.1", registry=registry)
    print(f"metrics: curl http://127.0.0.1:{port}/metrics")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--s3", action="store_true",
                        help="also objects on a local moto server (streamlib and SlateDB)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--dir", metavar="DIR", help="where the stores and files go")
    parser.add_argument("--prometheus-port", metavar="PORT", type=int,
                        help="serve the stores' metrics on 127.0.0.1:PORT/metrics during the run")
    args = parser.parse_args()
    if args.prometheus_port is not None:
        serve_metrics(args.prometheus_port)
    batches, small = (300, 500) if args.quick else (3000, 3000)
    s3_batches = 200 if args.quick else 1000
    base = Path(args.dir) if args.dir else Path("build")
    base.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="streambench-", dir=base))
    started = time.monotonic()
    data = Data(batches)
    print(f"streamlib stream benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} "
          f"CPUs, dir {directory}")
    print(f"{batches} batches of {BIG} x 1 KiB ({batches * data.big_bytes / MIB:,.0f} MiB of "
          f"values, JSON events from a pool of {POOL:,}); MB/s = 10^6 bytes of record values a "
          f"second\n")
    try:
        local = local_run(directory, data, batches, small)
        s3 = s3_run(directory, data, s3_batches) if args.s3 else None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report(local, s3)
    print(f"\nDone in {time.monotonic() - started:.0f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps({"local": local, "s3": s3}, indent=2, default=str))


if __name__ == "__main__":
    main()
