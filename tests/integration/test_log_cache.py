"""The log cache inside the message cache's one budget: uploaded batches stay for readers a
little behind the tail (no GET), are freed in upload order once no reader needs them, and
everything the cache holds — blocks, uploaded batches, batches waiting for upload — stays within
``cache_bytes``, measured while appends, uploads and reads run; appends wait for room when
uploads fall behind; several stores share one cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

import streamlib
from streamlib import RecordBatch, StreamStore
from streamlib.cache import BATCH_OVERHEAD, MessageCache
from streamlib.errors import WalFullError
from streamlib.testing.faults import FaultyFileSystem, internal_error
from streamlib.testing.s3 import S3Endpoint

KiB = 1024
MiB = 1024 * KiB
BATCH = 16 * KiB
HELD_OFF = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB"}  # uploads on flush only


@pytest.fixture(params=["local", "moto"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    options: dict[str, Any] = {"compression": "none", "block_bytes": "64KiB"}
    if request.param == "moto":
        moto: S3Endpoint = request.getfixturevalue("moto_s3")
        bucket = moto.create_bucket()
        # The endpoint's one filesystem, as the store would build it (a store's own costs a
        # new botocore client, 0.1-0.4 s, at every open).
        options.update(objects_url=f"s3://{bucket}/store", filesystem=moto.store_fs)
        request.addfinalizer(lambda: moto.delete_bucket(bucket))

    def opener(**overrides: Any) -> StreamStore:
        settings = {**options, **overrides}
        storage_options = settings.pop("storage_options", None)
        return streamlib.open(tmp_path / "data", storage_options=storage_options, **settings)

    return opener


def batch(n: int, size: int = BATCH) -> RecordBatch:
    return RecordBatch(n.to_bytes(4, "big") * (size // 4), count=1)


def cache_stats(store: StreamStore) -> dict[str, int]:
    return store.stats()["cache"]  # type: ignore[return-value]


class Watcher:
    """Samples a cache's bytes in a thread, to show the budget holds while work runs."""

    def __init__(self, cache: MessageCache) -> None:
        self.cache = cache
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.cache.nbytes)
            self.samples += 1
            time.sleep(0.0005)  # the sampling period, not a wait: the work runs meanwhile

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_reader_behind_the_tail_reads_uploaded_batches_from_memory(open_store: Any) -> None:
    """Uploads run between a reader's fetches: what they took stays in the log cache for it."""
    with open_store(**HELD_OFF) as store:
        stream = store.create_stream()
        offset = 0
        for round_ in range(5):
            for n in range(8):
                stream.append(batch(round_ * 8 + n))
            store.flush()  # uploaded and committed before the reader gets there
            result = stream.fetch(offset, max_bytes=MiB)
            assert [b.payload[:4] for b in result] == [
                (round_ * 8 + n).to_bytes(4, "big") for n in range(8)]
            offset = result.next_fetch_offset
        stats = cache_stats(store)
        assert stats["gets"] == 0 and stats["uploaded_log_reads"] == 5, stats
        assert store.stats()["upload_rounds"] == 5
        assert stats["log_chunks"] == 5 and stats["log_pinned_bytes"] == 0, stats
        assert stats["log_chunk_bytes"] == 40 * (BATCH + BATCH_OVERHEAD), stats


def test_uploaded_batches_are_freed_in_upload_order_when_nobody_reads_them(
        open_store: Any) -> None:
    """No reader: the oldest uploaded batches leave first; reads of them then go to the
    objects and still return the right bytes."""
    budget = 40 * (BATCH + BATCH_OVERHEAD)
    with open_store(cache=MessageCache(budget), **HELD_OFF) as store:
        stream = store.create_stream()
        for round_ in range(6):
            for n in range(10):
                stream.append(batch(round_ * 10 + n))
            store.flush()
        stats = cache_stats(store)
        assert stats["evicted_log_chunks"] >= 2 and stats["bytes"] <= budget, stats
        # The newest rounds are in memory, the oldest are not: a read of the last round makes
        # no GET, a read of the first does.
        tail = stream.fetch(50, max_bytes=MiB)
        assert [b.payload[:4] for b in tail] == [n.to_bytes(4, "big") for n in range(50, 60)]
        assert cache_stats(store)["gets"] == 0
        head = stream.fetch(0, max_bytes=MiB)
        assert [b.payload[:4] for b in head][:10] == [n.to_bytes(4, "big") for n in range(10)]
        assert cache_stats(store)["gets"] > 0
        assert cache_stats(store)["bytes"] <= budget


def test_uploaded_batches_ahead_of_a_slow_reader_stay_while_those_behind_go(
        tmp_path: Path) -> None:
    """A reader lags 3 rounds behind the tail; the budget holds about 4 rounds. Rounds it has
    passed are evicted; the rounds between it and the tail are not, so it never makes a GET."""
    per_round = 10
    budget = 4 * per_round * (BATCH + BATCH_OVERHEAD) + 1024
    cache = MessageCache(budget, reader_timeout=60)
    with streamlib.open(tmp_path / "data", cache=cache, compression="none",
                        **HELD_OFF) as store, Watcher(cache) as watcher:
        stream = store.create_stream()
        offset = 0
        for round_ in range(12):
            for n in range(per_round):
                stream.append(batch(round_ * per_round + n))
            store.flush()
            if round_ >= 3:  # the reader reads the round three behind the one just uploaded
                result = stream.fetch(offset, max_bytes=per_round * BATCH)
                assert result.batches[0].base_offset == (round_ - 3) * per_round
                offset = result.next_fetch_offset
        stats = cache.stats.snapshot()
        assert stats["gets"] == 0, stats
        assert stats["evicted_log_chunks"] > 0 and stats["evicted_ahead_of_readers"] == 0, stats
        assert stats["evicted_behind_readers"] > 0, stats
    assert watcher.samples > 0 and watcher.peak <= budget


def test_one_budget_for_blocks_and_the_log_cache_under_load(open_store: Any) -> None:
    """Appends from two threads with uploads in the background and a catch-up reader loading
    blocks: the cache's bytes (blocks + uploaded batches + batches waiting for upload) never
    pass the budget (appends wait for an upload when they would); everything reads back."""
    budget = 512 * KiB
    with open_store() as store:  # some uploaded data for the catch-up reader
        old = store.create_stream("old")
        for n in range(96):
            old.append(batch(n))
    cache = MessageCache(budget)
    with open_store(cache=cache, upload_interval_ms=50) as store, Watcher(cache) as watcher:
        writers = [store.create_stream(f"w{i}") for i in range(2)]
        errors: list[BaseException] = []

        def write(stream: streamlib.Stream) -> None:
            try:
                for n in range(160):  # 2.5 MiB each: five times the budget
                    stream.append(batch(n))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=write, args=(s,)) for s in writers]
        for t in threads:
            t.start()
        reader = store.open_stream("old", read_only=True)
        offset, seen = 0, []
        while offset < reader.next_offset:
            result = reader.fetch(offset, max_bytes=64 * KiB)
            seen += [b.payload[:4] for b in result]
            offset = result.next_fetch_offset
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert seen == [n.to_bytes(4, "big") for n in range(96)]
        for stream in writers:
            got, offset = [], 0
            while offset < stream.next_offset:
                result = stream.fetch(offset, max_bytes=256 * KiB)
                got += [b.payload[:4] for b in result]
                offset = result.next_fetch_offset
            assert got == [n.to_bytes(4, "big") for n in range(160)]
        stats = cache.stats.snapshot()
        # Five times the budget went through it: uploaded batches made room for newer ones.
        assert stats["evicted_log_chunks"] > 0, stats
    assert watcher.samples > 100 and watcher.peak <= budget, (watcher.peak, budget)


def test_an_append_that_finds_no_room_fails_clearly_and_loses_nothing(tmp_path: Path) -> None:
    """The object store is down: the budget fills with data waiting for upload, an append
    waits for room and then fails with WalFullError naming the message cache; when the store
    is back the uploads free the room; nothing acknowledged is lost."""
    budget = 4 * (BATCH + BATCH_OVERHEAD)
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    url = f"memory://log-cache-{abs(hash(str(tmp_path)))}"
    with streamlib.open(tmp_path / "data", cache=MessageCache(budget), compression="none",
                        filesystem=faulty, objects_url=url, retry_timeout_ms=50,
                        upload_interval_ms=20) as store:
        stream = store.create_stream("s")
        faulty.inject("put", internal_error, times=None)
        for n in range(4):
            stream.append(batch(n))
        with pytest.raises(WalFullError, match="message cache"):
            stream.append(batch(4), timeout=0.3)
        assert store.stats()["cache"]["log_pinned_bytes"] == budget  # type: ignore[index]
        assert store.stats()["cache"]["log_waits"] >= 1  # type: ignore[index]
        assert stream.next_offset == 4
        faulty.clear()
        stream.append(batch(4), timeout=10)  # an upload makes room
        got = stream.fetch(0)
        assert [b.payload[:4] for b in got] == [n.to_bytes(4, "big") for n in range(5)]
    with streamlib.open(tmp_path / "data", objects_url=url) as store:
        result = store.open_stream("s").fetch(0)
        assert [b.payload[:4] for b in result] == [n.to_bytes(4, "big") for n in range(5)]


def test_a_batch_larger_than_the_budget_goes_through_alone(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "data", cache=MessageCache(64 * KiB),
                        compression="none") as store:
        stream = store.create_stream()
        stream.append(batch(1, 256 * KiB))
        stream.append(batch(2, 16))
        assert [b.count for b in stream.fetch(0)] == [1, 1]


def test_trim_and_destroy_give_back_the_log_cache(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "data", compression="none", **HELD_OFF) as store:
        stream = store.create_stream()
        for n in range(10):
            stream.append(batch(n))
        store.flush()
        kept = cache_stats(store)["log_chunk_bytes"]
        assert kept == 10 * (BATCH + BATCH_OVERHEAD)
        stream.trim(10)  # every uploaded batch is below the start now
        assert cache_stats(store)["log_chunk_bytes"] == 0
        other = store.create_stream()
        for n in range(5):
            other.append(batch(n))
        assert cache_stats(store)["log_pinned_bytes"] == 5 * (BATCH + BATCH_OVERHEAD)
        store.destroy_stream(other.id)
        stats = cache_stats(store)
        assert stats["log_pinned_bytes"] == 0 and stats["bytes"] == 0, stats


def test_stores_sharing_one_cache_share_its_budget_and_keep_their_streams_apart(
        tmp_path: Path) -> None:
    """Two stores, one cache: both have a stream 1; each reads its own bytes, the sum stays in
    the budget, and closing one gives back all it held."""
    budget = 1 * MiB
    cache = MessageCache(budget)
    a = streamlib.open(tmp_path / "a", cache=cache, compression="none", **HELD_OFF)
    b = streamlib.open(tmp_path / "b", cache=cache, compression="none", **HELD_OFF)
    try:
        with Watcher(cache) as watcher:
            sa, sb = a.create_stream(), b.create_stream()
            assert sa.id == sb.id
            for n in range(40):
                sa.append(RecordBatch(b"A" * BATCH, count=1))
                sb.append(RecordBatch(b"B" * BATCH, count=1))
                if n % 10 == 9:
                    a.flush()
                    b.flush()
            assert {bytes(x.payload[:1]) for x in sa.fetch(0, max_bytes=4 * MiB)} == {b"A"}
            assert {bytes(x.payload[:1]) for x in sb.fetch(0, max_bytes=4 * MiB)} == {b"B"}
        assert watcher.peak <= budget
        assert {scope for scope, _ in cache._chunks} == {a._node.scope, b._node.scope}  # type: ignore[union-attr]
        a.close()
        assert {scope for scope, _ in cache._chunks} == {b._node.scope}  # type: ignore[union-attr]  # a's chunks went with it
        b.close()
        assert cache.usage()["log_chunks"] == 0 and cache.pinned_bytes == 0
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(("args", "error", "names"), [
    ((0,), ValueError, "max_bytes"),
    (("1MiB",), TypeError, "max_bytes"),
    ((True,), TypeError, "max_bytes"),
    ((1 << 20,), ValueError, "readahead_bytes"),  # with readahead_bytes=-1 below
    ((1 << 20,), ValueError, "reader_timeout"),  # with reader_timeout=0 below
])
def test_a_bad_cache_is_refused_by_name(args: tuple, error: type, names: str) -> None:
    options: dict[str, Any] = {"readahead_bytes": {"readahead_bytes": -1},
                               "reader_timeout": {"reader_timeout": 0}}.get(names, {})
    with pytest.raises(error, match=names):
        MessageCache(*args, **options)


def test_open_refuses_a_cache_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="MessageCache"):
        streamlib.open(tmp_path / "data", cache={"max_bytes": 1})  # type: ignore[arg-type]
    with streamlib.open(tmp_path / "data", cache=streamlib.MessageCache(MiB)) as store:
        store.create_stream().append([b"fine"])
