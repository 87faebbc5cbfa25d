"""The read path counted in object-store requests, on the local store and on S3 (moto): a
tailing reader makes no GET, a catch-up reader about one a block, two readers of one range one
set; cache-only reads never wait; the block cache stays within its budget."""

from __future__ import annotations

import functools
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waits import wait_for

import streamlib
from streamlib import CacheMiss, RecordBatch, StreamStore
from streamlib.cache import MessageCache
from streamlib.testing.s3 import S3Endpoint

MiB = 1024 * 1024
BATCH = 64 * 1024  # 16 batches a block


@pytest.fixture(params=["local", "moto"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Opens a store (again) on one place: a local directory, or a moto bucket."""
    options: dict[str, Any] = {"compression": "none", "block_bytes": "1MiB",
                               "upload_interval_ms": 3_600_000}
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


def fill(store: StreamStore, mib: int) -> int:
    stream = store.create_stream("s")
    for n in range(mib * MiB // BATCH):
        stream.append(RecordBatch(n.to_bytes(4, "big") * (BATCH // 4), count=4))
    return stream.id


def read_all(stream: streamlib.Stream, max_bytes: int = MiB) -> list[bytes]:
    return read_all_from(stream, stream.start_offset, max_bytes)

def read_all_from(stream: streamlib.Stream, offset: int, max_bytes: int) -> list[bytes]:
    payloads = []
    while offset < stream.next_offset:
        result = stream.fetch(offset, max_bytes=max_bytes)
        payloads += [b.payload[:4] for b in result]
        offset = result.next_fetch_offset
    return payloads


def gets(store: StreamStore) -> int:
    return store.stats()["cache"]["gets"]  # type: ignore[index]


def test_a_tailing_reader_makes_no_get(open_store: Any) -> None:
    with open_store(upload_bytes="1MiB") as store:
        stream = store.create_stream()
        offset = 0
        for n in range(64):  # 4 MiB: uploads happen as the reader follows
            stream.append(RecordBatch(n.to_bytes(4, "big") * (BATCH // 4), count=1))
            result = stream.fetch(offset, timeout=5)
            assert [b.payload[:4] for b in result] == [n.to_bytes(4, "big")]
            offset = result.next_fetch_offset
        wait_for(lambda: store.stats()["upload_rounds"] >= 2,
                 timeout=30, what="uploads in the background")
        assert gets(store) == 0


def test_a_catch_up_reader_makes_about_one_get_a_block(open_store: Any) -> None:
    with open_store() as store:
        fill(store, 8)
    with open_store() as store:
        stream = store.open_stream("s", read_only=True)
        assert len(read_all(stream)) == 8 * MiB // BATCH
        cache = store.stats()["cache"]
        # 8 MiB of payload and their batch headers: 9 blocks of at most 1 MiB, in one object;
        # its index tail and about one GET a block.
        loaded = cache["block_misses"] + cache["readahead_blocks"]  # type: ignore[index]
        assert loaded == 9, cache
        assert cache["gets"] <= 9 + 1 + 2, cache  # type: ignore[index]
        assert cache["readahead_blocks"] > 0 and cache["readahead_hits"] > 0, cache  # type: ignore[index]


def test_two_readers_of_one_range_make_one_set_of_gets(open_store: Any) -> None:
    with open_store() as store:
        fill(store, 4)
    with open_store() as store:
        first = store.open_stream("s", read_only=True)
        one = read_all(first)
        after_one = gets(store)
        second = store.open_stream("s", read_only=True)
        assert read_all(second) == one
        assert gets(store) == after_one  # all from the block cache
    with open_store() as store:  # at the same time: the second waits for the first's GETs
        readers = [store.open_stream("s", read_only=True) for _ in range(2)]
        results: list[list[bytes]] = [[], []]
        barrier = threading.Barrier(2)

        def run(i: int) -> None:
            barrier.wait()
            results[i] = read_all(readers[i], max_bytes=4 * MiB)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert results[0] == results[1] == one
        assert gets(store) <= after_one + 1  # one set (+1: the index, if both missed it)


def test_cache_only_reads_answer_from_memory_or_fail_at_once(open_store: Any) -> None:
    with open_store() as store:
        stream_id = fill(store, 2)
    with open_store() as store:
        stream = store.open_stream(stream_id)
        with pytest.raises(CacheMiss, match="not in memory") as missed:
            stream.fetch(0, cache_only=True)
        assert missed.value.offset == 0 and gets(store) == 0
        warm = stream.fetch(0, max_bytes=MiB)
        assert stream.fetch(0, max_bytes=MiB, cache_only=True) == warm
        end = stream.next_offset
        stream.append(RecordBatch(b"tail", count=1))  # the log cache: always in memory
        assert stream.fetch(end, cache_only=True).batches[0].payload == b"tail"
        with pytest.raises(TypeError):
            stream.fetch(0, cache_only="yes")  # type: ignore[arg-type]


def test_the_block_cache_stays_within_its_budget(open_store: Any) -> None:
    with open_store() as store:
        fill(store, 6)
    with open_store(cache_bytes="2MiB") as store:
        stream = store.open_stream("s", read_only=True)
        offset, peak = 0, 0
        while offset < stream.next_offset:
            offset = stream.fetch(offset, max_bytes=256 * 1024).next_fetch_offset
            peak = max(peak, store.stats()["cache"]["block_bytes"])  # type: ignore[index]
        cache = store.stats()["cache"]
        evicted = sum(cache[k] for k in ("evicted_behind_readers", "evicted_idle",  # type: ignore[index]
                                         "evicted_ahead_of_readers"))
        assert peak <= 2 * MiB and evicted >= 3, cache


# ---- readahead and consumer-focused eviction (local: the policy, not the server) ----


def test_consumer_focused_eviction_keeps_what_live_readers_will_read(tmp_path: Path) -> None:
    """Three readers at different places of one stream and a cache that holds 4 blocks: the
    blocks every reader has passed go first, the blocks ahead of a reader last; the budget is
    never exceeded; a reader that vanishes stops pinning its blocks."""
    options = {"compression": "none", "block_bytes": "1MiB", "upload_interval_ms": 3_600_000}
    with streamlib.open(tmp_path / "data", **options) as store:
        fill(store, 12)
    now = [0.0]  # the cache's clock: it moves only when the test says
    cache = MessageCache(4 * MiB + 64 * 1024, reader_timeout=0.5, readahead_bytes=0,
                         clock=lambda: now[0])
    with streamlib.open(tmp_path / "data", cache=cache, **options) as store:
        stream = store.open_stream("s", read_only=True)
        per_block = 16  # batches of 4 records: 64 records a block
        offsets = {}
        peak = 0

        def step(name: str, offset: int) -> None:
            nonlocal peak
            offsets[name] = stream.fetch(offset, max_bytes=BATCH).next_fetch_offset
            peak = max(peak, cache.nbytes)

        # Reader A reads the first two blocks, B the next two, C two further on.
        for _ in range(2 * per_block):
            step("a", offsets.get("a", 0))
        for _ in range(2 * per_block):
            step("b", offsets.get("b", 2 * per_block * 4))
        held_before = {k[2] for k in cache._blocks}
        for _ in range(2 * per_block):
            step("c", offsets.get("c", 6 * per_block * 4))
        stats = cache.stats.snapshot()
        assert peak <= cache.max_bytes
        # C's two blocks needed room: the victims were behind every reader, not ahead of one.
        assert stats["evicted_behind_readers"] >= 1 and stats["evicted_ahead_of_readers"] == 0
        assert len(held_before) >= 3
        now[0] += 0.6  # every reader is gone: their blocks are plain LRU blocks now
        stream.fetch(11 * per_block * 4, max_bytes=BATCH)
        assert cache.stats.readers == 1  # only the newest


def test_readahead_grows_while_the_reader_keeps_up(open_store: Any) -> None:
    with open_store() as store:
        fill(store, 8)
    with open_store() as store:
        stream = store.open_stream("s", read_only=True)
        offset, waits = 0, 0
        while offset < stream.next_offset:
            try:
                result = stream.fetch(offset, max_bytes=256 * 1024, cache_only=True)
            except CacheMiss:  # not loaded yet: the slow path, as a broker's worker would
                waits += 1
                result = stream.fetch(offset, max_bytes=256 * 1024)
            offset = result.next_fetch_offset
        cache = store.stats()["cache"]
        assert cache["readahead_hits"] >= 3, cache  # type: ignore[index]
        assert waits < 32, (waits, cache)  # most fetches found their blocks loaded ahead


def test_a_finished_read_iterator_stops_pinning(tmp_path: Path) -> None:
    with streamlib.open(tmp_path / "data", compression="none",
                        upload_interval_ms=3_600_000) as store:
        fill(store, 2)
        store.flush()
        stream = store.open_stream("s", read_only=True)
        assert len(list(stream.read(0, max_bytes=256 * 1024, idle_timeout=0.05))) == 32
        assert store.stats()["cache"]["readers"] == 0  # type: ignore[index]
        reading = stream.read(0, max_bytes=256 * 1024)
        next(reading)
        assert store.stats()["cache"]["readers"] == 1  # type: ignore[index]
        reading.close()  # given up early by its user
        assert store.stats()["cache"]["readers"] == 0  # type: ignore[index]


def test_readahead_stays_within_the_budget_while_it_loads(tmp_path: Path) -> None:
    """A readahead window (8 MiB at first) larger than the whole cache (4 MiB): what the
    readahead loads, counted from before its GET, fits in the room the cache has — the memory
    the process allocates while a reader catches up stays near the budget, not the window."""
    options = {"compression": "none", "block_bytes": "1MiB", "upload_interval_ms": 3_600_000}
    with streamlib.open(tmp_path / "data", **options) as store:
        fill(store, 24)
    budget = 4 * MiB
    with streamlib.open(tmp_path / "data", cache_bytes=budget, **options) as store:
        stream = store.open_stream("s", read_only=True)
        stream.fetch(0, max_bytes=1)  # the object index: not what this test measures
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            offset = 0
            while offset < stream.next_offset:
                result = stream.fetch(offset, max_bytes=256 * 1024)
                offset = result.next_fetch_offset
                del result
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        cache = store.stats()["cache"]
    assert cache["readahead_blocks"] >= 3, cache  # type: ignore[index]
    # The budget, a fetch's answer, and the GET buffers of two loads at once (a fetch's and a
    # readahead's, a block each) beside their decoded copies. Uncounted, the window made 25 MiB.
    assert peak <= budget + 4 * MiB, (peak / MiB, cache)



def test_a_fetch_that_goes_to_the_store_starts_its_readers_readahead_beside_its_get(
        open_store: Any) -> None:
    """A sequential reader's fetch that misses claims the blocks its readahead would load next
    and has them fetched beside its own GET (a synchronous readahead): reading an object of
    nine blocks a block at a time costs the index's GET, two for the first fetch (its block,
    and one more beside it: a first fetch may be the only one) and two for the third (its
    block, and the rest of the window in one part, less than readahead_get_bytes), whoever
    wins the race with the background readahead — not a GET a fetch."""
    with open_store() as store:
        fill(store, 8)
    with open_store(cache_bytes="64MiB") as store:
        stream = store.open_stream("s", read_only=True)
        first = stream.fetch(0, max_bytes=MiB)
        assert store.stats()["cache"]["readahead_blocks"] == 1  # type: ignore[index]
        wait_for(lambda: gets(store) == 3, what="the GET beside the first fetch's")
        rest = read_all_from(stream, first.next_fetch_offset, MiB)
        assert [b.payload[:4] for b in first] + rest == [n.to_bytes(4, "big")
                                                         for n in range(8 * MiB // BATCH)]
        assert gets(store) == 5, store.stats()["cache"]


def test_objects_of_format_version_1_are_read_a_block_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written by a release before format version 2 (its objects' indexes give no
    decoded sizes) reads back whole; each block counts as max_block_bytes until its header is
    read, so a fetch loads one block at a time and a readahead only what that bound allows."""
    import streamlib.uploader

    options = {"compression": "zstd", "block_bytes": "1MiB", "upload_interval_ms": 3_600_000}
    monkeypatch.setattr(streamlib.uploader, "ObjectWriter",
                        functools.partial(streamlib.uploader.ObjectWriter, version=1))
    with streamlib.open(tmp_path / "data", **options) as store:
        fill(store, 8)
    monkeypatch.undo()
    with streamlib.open(tmp_path / "data", cache_bytes="32MiB", **options) as store:
        stream = store.open_stream("s", read_only=True)
        assert read_all(stream, max_bytes=4 * MiB) == [n.to_bytes(4, "big")
                                                       for n in range(8 * MiB // BATCH)]
        cache = store.stats()["cache"]
    # Nine blocks (15 batches each), a GET for each alone, and one for the index; a 4 MiB
    # fetch of version-2 objects takes its blocks four at a time in one GET.
    loads = cache["block_misses"] + cache["readahead_blocks"]  # type: ignore[index]
    assert loads == 9 and cache["gets"] == loads + 1, cache  # type: ignore[index]
