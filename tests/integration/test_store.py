"""The store's public API (docs/store.md): streamlib.open, StreamStore and Stream, on the local
filesystem with every WAL backend and on S3 (moto's server). Every test asserts what a user sees:
what fetch returns, which errors are raised, which objects end up in the object store."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from waits import wait_for

import streamlib
from streamlib import (
    AppendResult,
    Config,
    ConfigError,
    FencedError,
    OffsetMismatchError,
    OffsetOutOfRange,
    ReadOnlyError,
    Record,
    RecordBatch,
    SequenceError,
    Stream,
    StreamClosed,
    StreamExists,
    StreamNotFound,
    StreamStore,
)
from streamlib.testing.s3 import S3Bucket

NEVER = 3_600_000
"""upload_interval_ms for tests that decide themselves when data is uploaded (flush, close)."""

T0 = 1_700_000_000_000


def open_store(path: Path, **overrides: Any) -> StreamStore:
    """A local store in ``path`` whose uploads happen only on flush() and close()."""
    overrides.setdefault("upload_interval_ms", NEVER)
    return streamlib.open(path, **overrides)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(path: Path) -> Iterator[StreamStore]:
    with open_store(path) as s:
        yield s


@pytest.fixture(params=["log", "objects"])
def where(request: pytest.FixtureRequest) -> str:
    """Whether a test reads its data from the log cache or, after a flush, from objects."""
    return request.param


def settle(store: StreamStore, where: str) -> None:
    if where == "objects":
        before = store.stats()["objects_uploaded"]
        store.flush()
        assert store.stats()["objects_uploaded"] > before  # type: ignore[operator]
        assert store.stats()["pending_upload_bytes"] == 0


def opaque(size: int, count: int = 1, ts: int = T0, fill: bytes = b"o") -> RecordBatch:
    return RecordBatch(fill * size, count, base_timestamp=ts)


def placed(batches: list[RecordBatch], start: int = 0) -> list[RecordBatch]:
    """``batches`` as a stream starting at ``start`` holds them."""
    result = []
    for batch in batches:
        result.append(batch.with_offset(start))
        start += batch.count
    return result


def fetch_all(stream: Stream, start: int | None = None) -> list[RecordBatch]:
    """Every batch from ``start`` (default: the stream's start) to the end, in small fetches."""
    offset = stream.start_offset if start is None else start
    batches: list[RecordBatch] = []
    while offset < stream.next_offset:
        result = stream.fetch(offset, max_bytes=1)
        assert result.batches, offset
        batches.extend(result.batches)
        offset = result.next_fetch_offset
    return batches


def data_objects(path: Path) -> list[Path]:
    """The committed-data objects of a local store (not the object WAL's)."""
    root = path / "objects" / "data"
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_still_works(store: StreamStore) -> None:
    stream = store.create_stream()
    assert stream.append([b"still", b"working"]) == AppendResult(0, 2)
    assert [r.value for _, r in stream.fetch(0).records()] == [b"still", b"working"]


# ---- open, create, append, fetch ----

def test_open_a_directory_with_nothing_else(path: Path) -> None:
    with streamlib.open(path) as store:
        assert (path / "meta.sqlite").is_file() and (path / "wal").is_dir()
        named = store.create_stream("orders")
        unnamed = store.create_stream()
        assert named.name == "orders" and unnamed.name is None and named.id != unnamed.id
        assert (named.start_offset, named.next_offset) == (0, 0)
        records = [Record(b"v1", key=b"k1", headers=[("h", b"1"), ("h", b"2")], timestamp=T0),
                   Record(b"", key=b"", timestamp=T0 + 5), Record(b"v3", headers={"x": b""},
                                                                  timestamp=T0 - 1)]
        batch = RecordBatch.from_records([Record(b"a", timestamp=T0), Record(b"b")],
                                         timestamp=T0 + 9)
        box = opaque(40, count=7, ts=T0 + 100)
        assert named.append(records) == AppendResult(0, 3)
        assert named.append(batch) == AppendResult(3, 2)
        assert named.append([b"x", bytearray(b"y"), memoryview(b"z")]) == AppendResult(5, 3)
        assert named.append(box) == AppendResult(8, 7)
        assert unnamed.append([b"only"]) == AppendResult(0, 1)
        assert (named.start_offset, named.next_offset) == (0, 15)
        assert (unnamed.start_offset, unnamed.next_offset) == (0, 1)

        result = named.fetch(0)
        assert [b.base_offset for b in result] == [0, 3, 5, 8]
        assert [b.count for b in result] == [3, 2, 3, 7]
        assert (result.next_fetch_offset, result.start_offset, result.end_offset) == (15, 0, 15)
        assert result.batches[1] == batch.with_offset(3)
        assert result.batches[3] == box.with_offset(8)
        assert result.batches[3].payload == b"o" * 40
        assert result.batches[3].base_timestamp == T0 + 100
        got = result.batches[0].records()
        assert got == [Record(b"v1", key=b"k1", headers=[("h", b"1"), ("h", b"2")], timestamp=T0),
                       Record(b"", key=b"", timestamp=T0 + 5),
                       Record(b"v3", headers=[("x", b"")], timestamp=T0 - 1)]
        assert got[1].key == b"" and got[2].key is None
        assert [(o, r.value, r.timestamp) for o, r in named.fetch(3, 5).records()] == [
            (3, b"a", T0), (4, b"b", T0 + 9)]
        assert [r.value for r in result.batches[2].records()] == [b"x", b"y", b"z"]
        with pytest.raises(TypeError, match="opaque"):
            list(result.records())
        assert [r.value for _, r in unnamed.fetch(0).records()] == [b"only"]

        assert store.get("orders").next_offset == 15 and store.get(unnamed.id).next_offset == 1
        assert [s.id for s in store.streams()] == sorted([named.id, unnamed.id])
    assert data_objects(path)  # close uploaded


def test_fetched_batches_can_be_appended_to_another_stream(store: StreamStore) -> None:
    source, mirror = store.create_stream(), store.create_stream()
    mirror.append([Record(b"first", key=b"k", timestamp=T0), b"plain"])  # Records and bytes mixed
    source.append(RecordBatch.from_records([Record(b"r", headers=[("h", b"v")])] * 3))
    source.append(opaque(20, count=4))
    store.flush()
    for batch in source.fetch(0):
        mirror.append(batch)  # its base_offset in the source does not matter
    got = mirror.fetch(0).batches
    assert [(b.base_offset, b.count) for b in got] == [(0, 2), (2, 3), (5, 4)]
    assert [b.with_offset(0) for b in got[1:]] == [b.with_offset(0) for b in source.fetch(0)]
    assert [(r.value, r.key) for r in got[0].records()] == [(b"first", b"k"), (b"plain", None)]


def test_offsets_are_dense_across_many_appends_and_threads(store: StreamStore) -> None:
    stream = store.create_stream()
    results: list[AppendResult] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(30):
            result = stream.append([b"%d-%d" % (n, i)] * (1 + i % 3))
            with lock:
                results.append(result)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.sort(key=lambda r: r.base_offset)
    assert results[0].base_offset == 0
    for a, b in itertools.pairwise(results):
        assert a.next_offset == b.base_offset
    assert stream.next_offset == results[-1].next_offset
    fetched = fetch_all(stream)
    assert [(b.base_offset, b.count) for b in fetched] == [(r.base_offset, r.count)
                                                           for r in results]


# ---- read-your-writes ----

def test_every_acknowledged_append_is_readable_before_and_after_upload(path: Path) -> None:
    store = open_store(path, compression="zstd")
    a, b = store.create_stream("a"), store.create_stream("b")
    written: dict[int, list[RecordBatch]] = {a.id: [], b.id: []}
    for i in range(40):
        stream = a if i % 3 else b
        batch = (opaque(10 + i, count=1 + i % 4, ts=T0 + i) if i % 2 else
                 RecordBatch.from_records([Record(b"r%d" % i, key=b"k")] * (1 + i % 5),
                                          timestamp=T0 + i))
        start = stream.next_offset
        assert stream.append(batch).base_offset == start
        written[stream.id].append(batch.with_offset(start))
        assert stream.fetch(start).batches[0] == batch.with_offset(start)  # at once
        if i == 20:
            assert store.stats()["objects_uploaded"] == 0
            store.flush()
            assert store.stats()["objects_uploaded"] == 1
            assert store.stats()["pending_upload_bytes"] == 0
    for stream in (a, b):
        assert fetch_all(stream) == written[stream.id]
        assert list(stream.fetch(0).batches) == written[stream.id]
    store.flush()
    assert store.stats()["objects_uploaded"] == 2
    for stream in (a, b):
        assert list(stream.fetch(0).batches) == written[stream.id]
    store.close()

    with open_store(path) as store:
        for name, sid in (("a", a.id), ("b", b.id)):
            again = store.open_stream(name)
            assert again.id == sid
            assert list(again.fetch(0).batches) == written[sid]
            assert fetch_all(again) == written[sid]
        last = store.open_stream("a")
        next_offset = last.next_offset
        assert last.append([b"after reopen"]).base_offset == next_offset


def test_close_uploads_what_is_left_and_reopen_reads_it(path: Path) -> None:
    store = open_store(path)
    stream = store.create_stream()
    batches = [opaque(100, count=3, fill=bytes([i])) for i in range(10)]
    for batch in batches:
        stream.append(batch)
    assert not data_objects(path)
    store.close()
    assert data_objects(path)
    with open_store(path) as store:
        again = store.open_stream(stream.id, read_only=True)
        assert list(again.fetch(0).batches) == placed(batches)
        assert store.stats()["pending_upload_bytes"] == 0


def test_a_single_append_is_uploaded_by_flush(path: Path) -> None:
    """The first record after a final round sits at the WAL's trim position: it is uploaded
    too (in a fresh store, and after a reopen), and trimming up to it works."""
    for round_ in range(2):
        with open_store(path) as store:
            stream = store.create_stream()
            stream.append([b"lonely"])
            store.flush()
            assert store.stats()["objects_uploaded"] == 1
            assert store.stats()["pending_upload_bytes"] == 0
            assert [r.value for _, r in stream.fetch(0).records()] == [b"lonely"]
            stream.trim(1)
            assert stream.start_offset == 1
            stream.append([b"second"])
            store.flush()
            assert store.stats()["objects_uploaded"] == 2
        assert len(data_objects(path)) == 2 * (round_ + 1)


# ---- fetch ----

def test_fetch_returns_whole_batches(store: StreamStore, where: str) -> None:
    stream = store.create_stream()
    batches = [opaque(50, count=5, fill=bytes([65 + i])) for i in range(6)]  # [0,5) [5,10) …
    for batch in batches:
        stream.append(batch)
    settle(store, where)
    assert stream.fetch(7).batches == tuple(placed(batches)[1:])  # begins before 7
    assert stream.fetch(7).next_fetch_offset == 30
    assert stream.fetch(7, 8).batches == (placed(batches)[1],)
    assert stream.fetch(7, 10).batches == (placed(batches)[1],)  # end_offset respected
    assert stream.fetch(7, 11).batches == tuple(placed(batches)[1:3])
    assert stream.fetch(0, 5).batches == (placed(batches)[0],)
    assert stream.fetch(0, 10**9).batches == tuple(placed(batches))  # end past next_offset
    assert stream.fetch(29).batches == (placed(batches)[5],)
    for start, end in ((7, 7), (5, 5), (0, 0), (30, 30)):
        empty = stream.fetch(start, end)
        assert empty.batches == () and empty.next_fetch_offset == start


def test_fetch_max_bytes(store: StreamStore, where: str) -> None:
    stream = store.create_stream()
    sizes = [100, 100, 100, 5000, 10, 10]
    batches = [opaque(n, fill=bytes([97 + i])) for i, n in enumerate(sizes)]
    for batch in batches:
        stream.append(batch)
    settle(store, where)
    every = placed(batches)
    assert stream.fetch(0, max_bytes=250).batches == tuple(every[:2])  # stops before the third
    assert stream.fetch(0, max_bytes=300).batches == tuple(every[:3])  # exactly max_bytes
    assert stream.fetch(0, max_bytes=299).batches == tuple(every[:2])
    assert stream.fetch(0, max_bytes=0).batches == (every[0],)  # at least one batch
    assert stream.fetch(3, max_bytes=10).batches == (every[3],)  # even one larger than max_bytes
    assert stream.fetch(2, max_bytes=5000).batches == (every[2],)  # never a gap after a stop
    assert stream.fetch(3, max_bytes=5020).batches == tuple(every[3:])
    assert stream.fetch(3, max_bytes=5019).batches == tuple(every[3:5])
    result = stream.fetch(0, max_bytes=250)
    assert result.next_fetch_offset == 2


def test_one_fetch_spans_objects_and_the_log_cache(path: Path) -> None:
    with open_store(path, block_bytes="4KiB") as store:
        stream = store.create_stream()
        rounds = [[opaque(900, fill=bytes([i * 10 + j])) for j in range(8)] for i in range(3)]
        for i, batches in enumerate(rounds):
            for batch in batches:
                stream.append(batch)
            if i < 2:
                store.flush()
        every = placed([b for batches in rounds for b in batches])
        assert len(data_objects(path)) == 2
        assert stream.fetch(0).batches == tuple(every)
        assert stream.fetch(5, 20).batches == tuple(every[5:20])
        assert stream.fetch(7, max_bytes=900 * 10).batches == tuple(every[7:17])
        assert fetch_all(stream) == every
        # A large batch stopping a fetch inside an object never lets a later small one through.
        big = opaque(5000, fill=b"B")
        stream.append(big)
        store.flush()
        stream.append(opaque(1, fill=b"s"))
        assert [b.size for b in stream.fetch(23, max_bytes=4000)] == [900]
        assert [b.size for b in stream.fetch(24, max_bytes=4000)] == [5000]
        assert [b.size for b in stream.fetch(24, max_bytes=5001)] == [5000, 1]


def test_fetch_out_of_range_names_the_valid_range(store: StreamStore, where: str) -> None:
    stream = store.create_stream()
    for _ in range(4):
        stream.append(opaque(10, count=5))
    settle(store, where)
    stream.trim(5)
    at_end = stream.fetch(20)
    assert at_end.batches == () and at_end.next_fetch_offset == 20 and at_end.end_offset == 20
    for offset in (0, 4, 21, 1000):
        with pytest.raises(OffsetOutOfRange, match=r"valid=`\[5, 20\)`") as raised:
            stream.fetch(offset)
        assert (raised.value.offset, raised.value.valid_start, raised.value.valid_end) == (
            offset, 5, 20)
        assert raised.value.stream_id == stream.id
    with pytest.raises(IndexError):  # OffsetOutOfRange is an IndexError too
        stream.fetch(21, 30)


# ---- trim ----

def test_trim(path: Path, where: str) -> None:
    store = open_store(path)
    stream = store.create_stream()
    for i in range(10):
        stream.append(opaque(20, count=2, fill=bytes([i])))  # [0,2) [2,4) …
    settle(store, where)
    stream.trim(5)
    assert stream.start_offset == 5 and store.get(stream.id).start_offset == 5
    with pytest.raises(OffsetOutOfRange):
        stream.fetch(4)
    first = stream.fetch(5).batches[0]
    assert (first.base_offset, first.payload) == (4, bytes([2]) * 20)  # batch granularity
    stream.trim(3)  # backwards: nothing changes
    assert stream.start_offset == 5
    stream.trim(5)
    assert stream.start_offset == 5
    with pytest.raises(OffsetOutOfRange, match=r"valid=`\[5, 20\)`"):
        stream.trim(21)
    assert stream.start_offset == 5
    stream.trim(8)
    with pytest.raises(OffsetOutOfRange):
        stream.fetch(7)
    store.close()
    with open_store(path) as store:
        again = store.open_stream(stream.id)
        assert again.start_offset == 8 and again.next_offset == 20
        with pytest.raises(OffsetOutOfRange):
            again.fetch(7)
        assert again.fetch(8).batches[0].base_offset == 8
        again.trim(20)  # everything
        assert again.fetch(20).batches == ()
        with pytest.raises(OffsetOutOfRange):
            again.fetch(19)
        assert again.append([b"x"]).base_offset == 20
        assert again.fetch(20).batches[0].base_offset == 20


def test_trim_beyond_what_is_uploaded(path: Path) -> None:
    with open_store(path) as store:
        stream = store.create_stream()
        other = store.create_stream()
        for _ in range(5):
            stream.append(opaque(10, count=3))
            other.append(opaque(10))
        assert store.stats()["objects_uploaded"] == 0
        stream.trim(13)  # inside the last batch, which is only in the WAL and the log cache
        assert stream.start_offset == 13
        with pytest.raises(OffsetOutOfRange):
            stream.fetch(11)
        assert stream.fetch(13).batches[0].base_offset == 12
        assert len(fetch_all(other)) == 5
        stream.append([b"more"])
        stream.trim(stream.next_offset)
        assert stream.start_offset == 16
    with open_store(path) as store:
        assert store.get(stream.id).start_offset == 16
        assert store.get(other.id).next_offset == 5


# ---- epochs and fencing ----

def test_a_second_writer_fences_the_first(path: Path) -> None:
    store = open_store(path)
    first = store.create_stream("s")
    first.append([b"a", b"b"])
    second = store.open_stream("s")
    assert second.epoch is not None and first.epoch is not None
    assert second.epoch > first.epoch and store.get("s").epoch == second.epoch
    with pytest.raises(FencedError, match="fenced"):
        first.append([b"late"])
    with pytest.raises(FencedError):
        first.trim(1)
    with pytest.raises(FencedError):
        first.append_future([b"late"])
    assert second.next_offset == 2  # the acknowledged records stay, nothing after the fence
    assert second.append([b"c"]) == AppendResult(2, 1)
    assert [r.value for _, r in first.fetch(0).records()] == [b"a", b"b", b"c"]  # still reads
    reader = store.open_stream(first.id, read_only=True)
    assert reader.epoch is None and not reader.writable
    assert store.get("s").epoch == second.epoch  # a reader does not fence
    with pytest.raises(ReadOnlyError):
        reader.append([b"no"])
    with pytest.raises(ReadOnlyError):
        reader.trim(1)
    assert second.append([b"d"]).base_offset == 3
    assert [r.value for _, r in reader.fetch(0).records()] == [b"a", b"b", b"c", b"d"]
    store.flush()
    third = store.open_stream(first.id)
    with pytest.raises(FencedError):
        second.append([b"late"])
    assert third.epoch == second.epoch + 1
    store.close()
    with open_store(path) as store:
        fourth = store.open_stream("s")
        assert fourth.epoch == third.epoch + 1
        assert [r.value for _, r in fourth.fetch(0).records()] == [b"a", b"b", b"c", b"d"]


def test_appends_in_flight_at_a_fence_land_before_the_new_writer(store: StreamStore) -> None:
    first = store.create_stream()
    futures = [first.append_future([b"%d" % i]) for i in range(50)]
    second = store.open_stream(first.id)
    after = second.append([b"new"])
    landed = [f.result() for f in futures if f.exception() is None]
    assert [r.base_offset for r in landed] == list(range(len(landed)))
    assert after.base_offset == len(landed)
    values = [r.value for _, r in second.fetch(0).records()]
    assert values == [b"%d" % i for i in range(len(landed))] + [b"new"]


# ---- conditional and idempotent appends ----

def test_expected_offset(store: StreamStore) -> None:
    stream = store.create_stream()
    with pytest.raises(OffsetMismatchError, match="expected=`5` actual=`0`") as raised:
        stream.append([b"x"], expected_offset=5)
    assert (raised.value.expected, raised.value.actual) == (5, 0)
    assert stream.next_offset == 0 and stream.fetch(0).batches == ()
    assert stream.append([b"a", b"b"], expected_offset=0) == AppendResult(0, 2)
    with pytest.raises(OffsetMismatchError):
        stream.append([b"x"], expected_offset=0)
    assert stream.append([b"c"], expected_offset=2) == AppendResult(2, 1)
    assert [r.value for _, r in stream.fetch(0).records()] == [b"a", b"b", b"c"]


def test_idempotent_producer(store: StreamStore) -> None:
    stream = store.create_stream()
    other = store.create_stream()
    first = stream.append([b"a", b"b"], producer_id="p", sequence=7)
    assert first == AppendResult(0, 2)
    assert stream.append([b"a", b"b"], producer_id="p", sequence=7) == first  # a retry
    assert stream.next_offset == 2
    second = stream.append([b"c"], producer_id="p", sequence=8)
    assert stream.append([b"a", b"b"], producer_id="p", sequence=7) == first
    assert stream.append([b"c"], producer_id="p", sequence=8) == second
    with pytest.raises(SequenceError, match="gap"):
        stream.append([b"d"], producer_id="p", sequence=10)
    with pytest.raises(SequenceError, match="another size"):
        stream.append([b"x", b"y", b"z"], producer_id="p", sequence=8)
    assert stream.next_offset == 3
    assert stream.append([b"q"], producer_id=42, sequence=0) == AppendResult(3, 1)  # another one
    assert stream.append([b"d"], producer_id="p", sequence=9) == AppendResult(4, 1)
    assert other.append([b"o"], producer_id="p", sequence=0) == AppendResult(0, 1)  # per stream
    store.flush()
    assert stream.append([b"d"], producer_id="p", sequence=9) == AppendResult(4, 1)
    assert [r.value for _, r in stream.fetch(0).records()] == [b"a", b"b", b"c", b"q", b"d"]


# ---- asyncio ----

def test_append_async_completes_in_offset_order(store: StreamStore) -> None:
    stream = store.create_stream()
    completed: list[int] = []

    async def one(i: int) -> AppendResult:
        result = await stream.append_async([b"%d" % i] * (1 + i % 3))
        completed.append(result.base_offset)
        return result

    async def main() -> list[AppendResult]:
        return await asyncio.gather(*(one(i) for i in range(300)))

    results = asyncio.run(main())
    assert completed == sorted(completed)
    assert results[0].base_offset == 0
    for a, b in itertools.pairwise(results):
        assert a.next_offset == b.base_offset  # in call order, dense
    assert [r.value for r in stream.fetch(results[17].base_offset).batches[0].records()] == [
        b"17"] * 3
    futures = [stream.append_future([b"f"]) for _ in range(100)]
    order: list[int] = []
    for f in futures:
        f.add_done_callback(lambda f: order.append(f.result().base_offset))
    for f in futures:
        f.result()
    assert order == sorted(order) and len(order) == 100


# ---- time lookup ----

def test_offset_for_timestamp(path: Path, where: str) -> None:
    store = open_store(path, block_bytes="4KiB")
    stream = store.create_stream()
    stream.append(RecordBatch.from_records([  # 0..2
        Record(b"a", timestamp=100), Record(b"b", timestamp=300), Record(b"c", timestamp=200)]))
    stream.append(opaque(10, count=4, ts=400))  # 3..6, one timestamp
    stream.append(RecordBatch(b"x" * 10, 3, base_timestamp=500, max_timestamp=700))  # 7..9
    stream.append(RecordBatch.from_records([Record(b"d", timestamp=800)] * 2))  # 10, 11
    settle(store, where)
    expected = {-(1 << 63): 0, 0: 0, 100: 0, 101: 1, 250: 1, 300: 1, 301: 3, 400: 3, 401: 7,
                700: 7, 701: 10, 800: 10, 801: None, (1 << 63) - 1: None}
    for ts, offset in expected.items():
        assert stream.offset_for_timestamp(ts) == offset, ts
    stream.trim(2)
    assert stream.offset_for_timestamp(0) == 2
    assert stream.offset_for_timestamp(250) == 3  # offset 1 (300) is trimmed
    stream.trim(5)
    assert stream.offset_for_timestamp(0) == 5  # inside the opaque batch: its first readable
    stream.trim(12)
    assert stream.offset_for_timestamp(0) is None
    store.close()


# ---- destroy, list, look up ----

def test_destroy_stream(path: Path) -> None:
    store = open_store(path)
    a = store.create_stream("a")
    keep = store.create_stream("keep")
    a.append([b"1"])
    keep.append([b"k"])
    reader = store.open_stream("a", read_only=True)
    store.flush()
    a.append([b"2"])  # in the log cache only
    store.destroy_stream("a")
    for call in (lambda: a.append([b"x"]), lambda: a.fetch(0), lambda: a.next_offset,
                 lambda: reader.fetch(0), lambda: a.trim(0), lambda: a.offset_for_timestamp(0),
                 lambda: store.open_stream("a"), lambda: store.open_stream(a.id),
                 lambda: store.get(a.id), lambda: store.get("a"),
                 lambda: store.destroy_stream(a.id)):
        with pytest.raises(StreamNotFound):
            call()
    assert [s.name for s in store.streams()] == ["keep"]
    assert store.stats()["streams"] == 1
    again = store.create_stream("a")  # the name is free
    assert again.id > keep.id > a.id and again.next_offset == 0
    assert again.append([b"new"]).base_offset == 0
    with pytest.raises(StreamExists):
        store.create_stream("a")
    store.flush()
    assert store.stats()["pending_upload_bytes"] == 0
    store.close()
    with open_store(path) as store:
        assert [(s.name, s.next_offset) for s in store.streams()] == [("keep", 1), ("a", 1)]
        with pytest.raises(StreamNotFound):
            store.open_stream(a.id)
        store.destroy_stream(again.id)
        newest = store.create_stream()
        assert newest.id > again.id  # ids are never reused, across reopens too
        assert [r.value for _, r in store.open_stream("keep").fetch(0).records()] == [b"k"]


def test_destroy_with_appends_in_flight(store: StreamStore) -> None:
    """Appends still in flight when their stream is destroyed complete, and leave nothing
    waiting for an upload that cannot happen."""
    keep = store.create_stream()
    for _ in range(5):
        doomed = store.create_stream()
        futures = [doomed.append_future([b"x" * 100]) for _ in range(50)]
        store.destroy_stream(doomed.id)
        for future in futures:
            assert future.result().count == 1
    keep.append([b"k"])
    store.flush()
    assert store.stats()["pending_upload_bytes"] == 0 and store.stats()["streams"] == 1
    assert [r.value for _, r in keep.fetch(0).records()] == [b"k"]


def test_streams_and_get(store: StreamStore) -> None:
    assert store.streams() == []
    a = store.create_stream("a")
    b = store.create_stream()
    a.append([b"1", b"2"])
    infos = store.streams()
    assert [(s.id, s.name, s.start_offset, s.next_offset) for s in infos] == [
        (a.id, "a", 0, 2), (b.id, None, 0, 0)]
    assert store.get("a") == store.get(a.id) == a.info() == infos[0]
    assert store.get(b.id).epoch == b.epoch == 1
    assert store.open_stream("a", read_only=True).id == a.id
    with pytest.raises(StreamNotFound):
        store.get("nope")
    with pytest.raises(StreamNotFound):
        store.get(10**6)


# ---- stream objects and multi-stream objects ----

def test_a_big_stream_gets_its_own_object_small_ones_share_one(path: Path) -> None:
    with open_store(path, stream_object_bytes="1KiB", block_bytes="4KiB",
                    compression="none") as store:
        big, small1, small2 = (store.create_stream() for _ in range(3))
        for _ in range(10):
            big.append(opaque(300, fill=b"B"))
        small1.append(opaque(50, fill=b"1"))
        small2.append(opaque(60, fill=b"2"))
        store.flush()
        stats = store.stats()
        assert (stats["objects_uploaded"], stats["stream_objects_uploaded"]) == (2, 1)
        objects = data_objects(path)
        assert sorted(p.suffix for p in objects) == [".mobj", ".sobj"]
        alone = next(p for p in objects if p.suffix == ".sobj").read_bytes()
        shared = next(p for p in objects if p.suffix == ".mobj").read_bytes()
        assert b"B" * 300 in alone and b"1" * 50 not in alone
        assert b"1" * 50 in shared and b"2" * 60 in shared and b"B" * 300 not in shared
        assert [b.size for b in big.fetch(0)] == [300] * 10
        assert small1.fetch(0).batches[0].payload == b"1" * 50


def test_many_streams_flushed_together_make_one_object(path: Path) -> None:
    with open_store(path) as store:
        streams = [store.create_stream() for _ in range(25)]
        for i, stream in enumerate(streams):
            stream.append([b"%d" % i] * (1 + i))
        store.flush()
        assert store.stats()["objects_uploaded"] == 1
        assert len(data_objects(path)) == 1
        for i, stream in enumerate(streams):
            assert [r.value for _, r in stream.fetch(0).records()] == [b"%d" % i] * (1 + i)
    assert len(data_objects(path)) == 1  # close had nothing more to upload


# ---- WAL backends ----

@pytest.mark.parametrize("wal", ["file", "block", "object"])
def test_every_wal_backend(path: Path, wal: str) -> None:
    options = {"wal": wal, "wal_bytes": "1MiB"}
    store = open_store(path, **options)
    stream = store.create_stream("s")
    batches = [opaque(1000, count=2, fill=bytes([i])) for i in range(20)]
    for batch in batches[:10]:
        stream.append(batch)
    assert list(stream.fetch(0).batches) == placed(batches[:10])
    store.flush()
    for batch in batches[10:]:
        stream.append(batch)
    assert list(stream.fetch(0).batches) == placed(batches)
    store.close()
    if wal == "file":
        assert any((path / "wal").iterdir())
    elif wal == "block":
        assert (path / "wal.ring").is_file()
    with open_store(path, **options) as store:
        again = store.open_stream("s")
        assert list(again.fetch(0).batches) == placed(batches)
        again.append(opaque(10, fill=b"z"))
        assert again.next_offset == 41
    with open_store(path, **options) as store:
        assert store.get("s").next_offset == 41
        assert store.open_stream("s", read_only=True).fetch(40).batches[0].payload == b"z" * 10


# ---- the uploader's triggers ----

def test_upload_bytes_triggers_an_upload_without_flush(path: Path) -> None:
    with open_store(path, upload_bytes="1KiB") as store:
        stream = store.create_stream()
        for _ in range(4):
            stream.append(opaque(500))
        wait_for(lambda: store.stats()["objects_uploaded"] >= 1)
        wait_for(lambda: store.stats()["pending_upload_bytes"] < 1024)
        assert data_objects(path)
        assert [b.size for b in stream.fetch(0)] == [500] * 4


def test_upload_interval_triggers_an_upload_without_flush(path: Path) -> None:
    with streamlib.open(path, upload_interval_ms=50) as store:
        stream = store.create_stream()
        stream.append([b"quiet"])
        # The round counts its objects after its commit empties the backlog: wait for both.
        wait_for(lambda: store.stats()["pending_upload_bytes"] == 0
                 and store.stats()["objects_uploaded"] >= 1)  # type: ignore[operator]
        assert store.stats()["objects_uploaded"] == 1 and len(data_objects(path)) == 1
        stream.append([b"again"])
        wait_for(lambda: store.stats()["objects_uploaded"] == 2)
        assert [r.value for _, r in stream.fetch(0).records()] == [b"quiet", b"again"]


# ---- bad input ----

BAD_APPENDS: list[tuple[str, Callable[[Stream], object], type[Exception], str]] = [
    ("None batch", lambda s: s.append(None), TypeError, "RecordBatch"),  # type: ignore[arg-type]
    ("str batch", lambda s: s.append("abc"), TypeError, "RecordBatch"),  # type: ignore[arg-type]
    ("bytes batch", lambda s: s.append(b"abc"), TypeError, "RecordBatch"),  # type: ignore[arg-type]
    ("dict batch", lambda s: s.append({"a": b"b"}), TypeError, "RecordBatch"),  # type: ignore[arg-type]
    ("empty list", lambda s: s.append([]), ValueError, "empty"),
    ("empty tuple", lambda s: s.append(()), ValueError, "empty"),
    ("list of str", lambda s: s.append(["abc"]), TypeError, "bytes"),  # type: ignore[list-item]
    ("list of int", lambda s: s.append([1]), TypeError, "bytes"),  # type: ignore[list-item]
    ("list with None", lambda s: s.append([b"a", None]), TypeError, "bytes"),  # type: ignore[list-item]
    ("oversize", lambda s: s.append([b"x" * 2000]), ValueError, "too large"),
    ("oversize opaque", lambda s: s.append(opaque(1025)), ValueError, "too large"),
    ("str expected_offset", lambda s: s.append([b"a"], expected_offset="0"), TypeError,
     "expected_offset"),  # type: ignore[arg-type]
    ("float expected_offset", lambda s: s.append([b"a"], expected_offset=0.0), TypeError,
     "expected_offset"),  # type: ignore[arg-type]
    ("bool expected_offset", lambda s: s.append([b"a"], expected_offset=False), TypeError,
     "expected_offset"),
    ("negative expected_offset", lambda s: s.append([b"a"], expected_offset=-1), ValueError,
     "expected_offset"),
    ("sequence alone", lambda s: s.append([b"a"], sequence=1), ValueError, "producer_id"),
    ("producer alone", lambda s: s.append([b"a"], producer_id="p"), ValueError, "sequence"),
    ("float producer", lambda s: s.append([b"a"], producer_id=1.5, sequence=0), TypeError,
     "producer_id"),  # type: ignore[arg-type]
    ("negative sequence", lambda s: s.append([b"a"], producer_id="p", sequence=-1), ValueError,
     "sequence"),
    ("str sequence", lambda s: s.append([b"a"], producer_id="p", sequence="1"), TypeError,
     "sequence"),  # type: ignore[arg-type]
    ("negative timeout", lambda s: s.append([b"a"], timeout=-1), ValueError, "timeout"),
    ("str timeout", lambda s: s.append([b"a"], timeout="1"), TypeError, "timeout"),  # type: ignore[arg-type]
]

BAD_READS: list[tuple[str, Callable[[Stream], object], type[Exception], str]] = [
    ("str start", lambda s: s.fetch("0"), TypeError, "start_offset"),  # type: ignore[arg-type]
    ("float start", lambda s: s.fetch(1.0), TypeError, "start_offset"),  # type: ignore[arg-type]
    ("bool start", lambda s: s.fetch(True), TypeError, "start_offset"),
    ("None start", lambda s: s.fetch(None), TypeError, "start_offset"),  # type: ignore[arg-type]
    ("negative start", lambda s: s.fetch(-1), ValueError, "start_offset"),
    ("str end", lambda s: s.fetch(0, "5"), TypeError, "end_offset"),  # type: ignore[arg-type]
    ("negative end", lambda s: s.fetch(0, -5), ValueError, "end_offset"),
    ("end below start", lambda s: s.fetch(2, 1), ValueError, "end_offset is below"),
    ("str max_bytes", lambda s: s.fetch(0, max_bytes="1MiB"), TypeError, "max_bytes"),  # type: ignore[arg-type]
    ("negative max_bytes", lambda s: s.fetch(0, max_bytes=-1), ValueError, "max_bytes"),
    ("above next_offset", lambda s: s.fetch(4), OffsetOutOfRange, "valid"),
    ("str trim", lambda s: s.trim("1"), TypeError, "offset"),  # type: ignore[arg-type]
    ("float trim", lambda s: s.trim(1.0), TypeError, "offset"),  # type: ignore[arg-type]
    ("negative trim", lambda s: s.trim(-1), ValueError, "offset"),
    ("trim past the end", lambda s: s.trim(4), OffsetOutOfRange, "valid"),
    ("str timestamp", lambda s: s.offset_for_timestamp("1"), TypeError, "timestamp"),  # type: ignore[arg-type]
    ("float timestamp", lambda s: s.offset_for_timestamp(1.5), TypeError, "timestamp"),  # type: ignore[arg-type]
    ("huge timestamp", lambda s: s.offset_for_timestamp(1 << 63), ValueError, "timestamp"),
]


@pytest.mark.parametrize(("call", "kind", "match"),
                         [pytest.param(c, k, m, id=n) for n, c, k, m in BAD_APPENDS + BAD_READS])
def test_bad_stream_input(path: Path, call: Callable[[Stream], object], kind: type[Exception],
                          match: str) -> None:
    with open_store(path, max_batch_bytes="1KiB") as store:
        stream = store.create_stream()
        stream.append([b"a", b"b", b"c"])
        with pytest.raises(kind, match=match):
            call(stream)
        assert stream.next_offset == 3 and stream.start_offset == 0
        assert [r.value for _, r in stream.fetch(0).records()] == [b"a", b"b", b"c"]
        assert stream.append([b"d"]).base_offset == 3
        store.flush()
        assert stream.fetch(3).batches[0].base_offset == 3
        assert_still_works(store)


BAD_STORE_CALLS: list[tuple[str, Callable[[StreamStore], object], type[Exception], str]] = [
    ("unknown id", lambda s: s.open_stream(999), StreamNotFound, "999"),
    ("unknown name", lambda s: s.open_stream("nope"), StreamNotFound, "nope"),
    ("unknown id read-only", lambda s: s.open_stream(999, read_only=True), StreamNotFound,
     "no such stream"),
    ("get unknown", lambda s: s.get(999), StreamNotFound, "no such stream"),
    ("destroy unknown", lambda s: s.destroy_stream(999), StreamNotFound, "no such stream"),
    ("destroy unknown name", lambda s: s.destroy_stream("nope"), StreamNotFound, "nope"),
    ("negative id", lambda s: s.open_stream(-1), ValueError, "stream"),
    ("float id", lambda s: s.open_stream(1.0), TypeError, "stream"),  # type: ignore[arg-type]
    ("bool id", lambda s: s.open_stream(True), TypeError, "stream"),
    ("None id", lambda s: s.open_stream(None), TypeError, "stream"),  # type: ignore[arg-type]
    ("bytes name", lambda s: s.open_stream(b"x"), TypeError, "stream"),  # type: ignore[arg-type]
    ("empty name", lambda s: s.create_stream(""), ValueError, "name"),
    ("int name", lambda s: s.create_stream(5), TypeError, "name"),  # type: ignore[arg-type]
    ("NUL in name", lambda s: s.create_stream("a\x00b"), ValueError, "name"),
    ("taken name", lambda s: s.create_stream("taken"), StreamExists, "taken"),
]


@pytest.mark.parametrize(("call", "kind", "match"),
                         [pytest.param(c, k, m, id=n) for n, c, k, m in BAD_STORE_CALLS])
def test_bad_store_input(store: StreamStore, call: Callable[[StreamStore], object],
                         kind: type[Exception], match: str) -> None:
    store.create_stream("taken").append([b"t"])
    with pytest.raises(kind, match=match):
        call(store)
    assert [s.name for s in store.streams()] == ["taken"]
    assert store.open_stream("taken").fetch(0).batches[0].count == 1
    assert_still_works(store)


def test_closed_handles_and_a_closed_store(path: Path) -> None:
    store = open_store(path)
    stream = store.create_stream("s")
    stream.append([b"kept"])
    other = store.open_stream("s", read_only=True)
    with store.open_stream("s") as handle:
        handle.append([b"too"])
    for call in (lambda: handle.append([b"x"]), lambda: handle.fetch(0), lambda: handle.trim(0),
                 lambda: handle.next_offset, lambda: handle.offset_for_timestamp(0)):
        with pytest.raises(StreamClosed):
            call()
    handle.close()  # twice is fine
    assert [r.value for _, r in other.fetch(0).records()] == [b"kept", b"too"]
    store.close()
    for call in (lambda: store.create_stream(), lambda: store.open_stream("s"),
                 lambda: store.open_stream(stream.id, read_only=True), lambda: store.get("s"),
                 lambda: store.streams(), lambda: store.flush(),
                 lambda: store.destroy_stream("s"), lambda: other.fetch(0),
                 lambda: other.start_offset, lambda: stream.append([b"x"])):
        with pytest.raises(StreamClosed, match="closed"):
            call()
    store.close()  # twice is fine
    with open_store(path) as store:
        assert [r.value for _, r in store.open_stream("s").fetch(0).records()] == [b"kept",
                                                                                  b"too"]


@pytest.mark.parametrize(("overrides", "field"), [
    ({"upload_bytes": "lots"}, "upload_bytes"),
    ({"upload_bytes": 10}, "upload_bytes"),
    ({"wal": "tape"}, "wal"),
    ({"compression": "rar"}, "compression"),
    ({"block_bytes": -1}, "block_bytes"),
    ({"upload_interval_ms": 0}, "upload_interval_ms"),
    ({"part_bytes": "1MiB"}, "part_bytes"),
    ({"max_batch_bytes": 1.5}, "max_batch_bytes"),
    ({"uplaod_bytes": 1}, "uplaod_bytes"),
    ({"node_id": "a/b"}, "node_id"),
    ({"node_id": ""}, "node_id"),
    ({"node_id": "-x"}, "node_id"),
    ({"node_id": 7}, "node_id"),
])
def test_invalid_config(path: Path, overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"field=`{field}`") as raised:
        streamlib.open(path, **overrides)
    assert raised.value.field == field
    with open_store(path) as store:  # nothing was left locked or half made
        assert_still_works(store)


def test_open_takes_a_config_or_a_mapping(path: Path) -> None:
    with pytest.raises(TypeError, match="path, a Config or a mapping"):
        streamlib.open(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="path"):
        streamlib.open({"upload_interval_ms": NEVER})  # no path and no places for the parts
    with streamlib.open(Config(path=str(path), upload_interval_ms=NEVER)) as store:
        store.create_stream("one").append([b"1"])
    with streamlib.open({"path": str(path)}, upload_interval_ms=NEVER) as store:
        assert store.get("one").next_offset == 1
    with streamlib.open(str(path), upload_interval_ms=NEVER) as store:
        assert store.get("one").next_offset == 1


def test_a_store_opened_twice(path: Path) -> None:
    with open_store(path) as store:
        store.create_stream("s").append([b"1"])
        with pytest.raises(streamlib.NodeLockedError):
            open_store(path)
        assert_still_works(store)
        assert store.get("s").next_offset == 1


# ---- S3 ----

@pytest.mark.parametrize("wal", ["file", "object"])
def test_s3_basic_flow(tmp_path: Path, moto_bucket: S3Bucket, wal: str) -> None:
    options = moto_bucket.endpoint.storage_options()
    url = f"{moto_bucket.url}/streams"

    def s3_store() -> StreamStore:
        return streamlib.open(tmp_path / "node", objects_url=url, storage_options=options,
                              upload_interval_ms=NEVER, wal=wal)

    store = s3_store()
    stream = store.create_stream("s")
    batches = [opaque(200, count=3, fill=bytes([i])) for i in range(5)]
    batches.append(RecordBatch.from_records([Record(b"v", key=b"k", headers=[("h", b"x")],
                                                    timestamp=T0)]))
    for batch in batches:
        stream.append(batch)
    assert list(stream.fetch(0).batches) == placed(batches)
    store.flush()
    assert store.stats()["objects_uploaded"] == 1
    keys = moto_bucket.fs.find(f"{moto_bucket.name}/streams/data")
    assert len(keys) == 1 and keys[0].endswith(".mobj")
    assert list(stream.fetch(0).batches) == placed(batches)
    stream.append([b"after flush"])
    store.close()
    assert not (tmp_path / "node" / "objects").exists()
    with s3_store() as store:
        again = store.open_stream("s")
        assert list(again.fetch(0, 16).batches) == placed(batches)
        assert [r.value for _, r in again.fetch(16).records()] == [b"after flush"]
        assert again.fetch(9, max_bytes=1).batches == (placed(batches)[3],)


def test_s3_multipart_upload(tmp_path: Path, moto_bucket: S3Bucket) -> None:
    options = moto_bucket.endpoint.storage_options()
    config = {"objects_url": moto_bucket.url, "part_bytes": "5MiB", "compression": "none",
              "upload_bytes": "64MiB", "upload_interval_ms": NEVER}
    payloads = [os.urandom(1 << 20) for _ in range(11)]
    with streamlib.open(tmp_path / "node", storage_options=options, **config) as store:
        stream = store.create_stream("big")
        for payload in payloads:
            stream.append(RecordBatch(payload, 1))
        store.flush()
        assert store.stats()["objects_uploaded"] == 1
    (key,) = moto_bucket.fs.find(f"{moto_bucket.name}/data")
    info = moto_bucket.fs.info(key)
    assert info["size"] > 11 << 20
    assert info["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    with streamlib.open(tmp_path / "node", storage_options=options, **config) as store:
        again = store.open_stream("big", read_only=True)
        got = fetch_all(again)
        assert [b.payload for b in got] == payloads
        assert [b.base_offset for b in again.fetch(5, max_bytes=3 << 20)] == [5, 6, 7]


# ---- the WAL keeps what is not committed, under concurrent appends and uploads ----


@pytest.mark.once  # the WAL's trim, not the codec: the C pass runs it
@pytest.mark.parametrize("wal", ["file", "block", "object"])
def test_the_wal_is_never_trimmed_past_an_uncommitted_append(tmp_path: Path, wal: str) -> None:
    """Appends from threads, upload rounds back to back, and a watcher that checks, over and
    over, that every acknowledged batch not committed yet lies at or after the WAL's trim
    position (trim read first: it only grows, so a later read of the log cannot race it)."""
    store = open_store(tmp_path, wal=wal, wal_bytes="4MiB", upload_bytes="16KiB",
                       upload_interval_ms=5)
    streams = [store.create_stream() for _ in range(4)]
    stop = threading.Event()
    problems: list[str] = []
    looks = 0

    def append(stream: Stream) -> None:
        while not stop.is_set():
            futures = [stream.append_future(opaque(300)) for _ in range(8)]
            for future in futures:
                future.result(timeout=30)

    def flush() -> None:
        while not stop.is_set():
            store.flush()

    def watch() -> None:
        nonlocal looks
        while not stop.is_set():
            trim = store._wal.trim_position  # type: ignore[union-attr]
            for stream in streams:
                state = stream._state
                with state.lock:
                    if state.log_positions and state.log_positions[0] < trim:
                        problems.append(f"stream {stream.id}: batch at WAL position "
                                        f"{state.log_positions[0]} below the trim {trim}")
            looks += 1
            # A pause between two looks, not a wait for anything: the others get the GIL.
            time.sleep(0.0005)

    threads = [threading.Thread(target=append, args=(s,)) for s in streams]
    threads += [threading.Thread(target=flush), threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    # Until as many rounds and looks as an unloaded machine makes in about 2 s: a loaded one
    # runs longer rather than checking less.
    wait_for(lambda: store.stats()["upload_rounds"] >= 150 and looks >= 1500,  # type: ignore[operator]
             timeout=120, what="150 upload rounds and 1500 looks at them")
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert problems == []
    assert store.stats()["upload_rounds"] >= 5  # type: ignore[operator]
    ends = {s.id: s.next_offset for s in streams}
    store.close()
    with open_store(tmp_path, wal=wal, wal_bytes="4MiB") as again:
        for stream_id, end in ends.items():
            assert again.get(stream_id).next_offset == end
