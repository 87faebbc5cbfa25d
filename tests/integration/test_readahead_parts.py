"""A readahead fetches its window in parts: runs of blocks of one object, each with a ranged GET
of its own, several at once on the read path's pool, so that one large object is read as fast as
several. The parts are block-aligned and no larger than ``readahead_get_bytes``; what they bring
is what a plain read of the object gives; a part whose GET fails fails the reads waiting for its
blocks with the store's error, and leaves nothing of itself in the cache."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pytest
from waits import blocked_in, wait_for

import streamlib
from streamlib import RecordBatch, StorageUnavailable
from streamlib.cache import MessageCache
from streamlib.io import ObjectStore, RetryPolicy
from streamlib.objects import ObjectReader, encode_object
from streamlib.testing.faults import FaultyFileSystem, internal_error

KiB = 1024
MiB = 1024 * KiB
BLOCK = 64 * KiB
PAYLOAD = 16 * KiB
OPTIONS: dict[str, Any] = {"compression": "none", "block_bytes": BLOCK,
                           "upload_interval_ms": 3_600_000}


def batch(n: int) -> RecordBatch:
    return RecordBatch(n.to_bytes(4, "big") * (PAYLOAD // 4), count=1)


@pytest.fixture
def one_object(tmp_path: Path) -> tuple[Path, FaultyFileSystem, str, int]:
    """A stream of 6 MiB uploaded as one object of about 96 blocks, its objects in memory
    behind a fault injector: (store path, the injector, objects URL, batches)."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    url = f"memory://parts-{uuid.uuid4().hex}"
    count = 6 * MiB // PAYLOAD
    with streamlib.open(tmp_path / "data", filesystem=faulty, objects_url=url,
                        **OPTIONS) as store:
        stream = store.create_stream("s")
        for future in [stream.append_future(batch(n)) for n in range(count)]:
            future.result()
        store.flush()
        assert store.stats()["objects_uploaded"] == 1
    return tmp_path / "data", faulty, url, count


def test_one_large_objects_readahead_runs_block_aligned_ranged_gets_at_once(
        one_object: tuple[Path, FaultyFileSystem, str, int]) -> None:
    """A sequential reader of one object, a block a fetch: once its readahead starts, the
    window goes to the store as several ranged GETs in flight together (held at a gate here
    until at least three run at once), each starting and ending at block boundaries and
    spanning at most readahead_get_bytes, and the reader gets every batch, in order, as the
    object holds them."""
    path, faulty, url, count = one_object
    cache = MessageCache(64 * MiB, first_window=16 * BLOCK, readahead_bytes=64 * BLOCK,
                         readahead_gets=4, readahead_get_bytes=4 * BLOCK)
    store = streamlib.open(path, filesystem=faulty, objects_url=url, cache=cache, **OPTIONS)
    gate = threading.Event()
    try:
        stream = store.open_stream("s", read_only=True)
        [info] = store.objects.list("")
        got: list[bytes] = []
        offset = 0
        for _ in range(2):  # two sequential fetches: the reader's readahead starts after them
            result = stream.fetch(offset, max_bytes=BLOCK)
            got += [b.payload for b in result]
            offset = result.next_fetch_offset
        faulty.get_ranges.clear()
        faulty.inject("get", gate=gate, times=None, match=lambda p: p.endswith(info.key))

        def rest() -> None:
            nonlocal offset
            while offset < stream.next_offset:
                result = stream.fetch(offset, max_bytes=BLOCK)
                got.extend(b.payload for b in result)
                offset = result.next_fetch_offset

        reader = threading.Thread(target=rest)
        reader.start()
        try:
            wait_for(lambda: faulty.running_gets >= 3, what="three GETs of the object at once")
        finally:
            gate.set()
            reader.join(60)
        assert not reader.is_alive()
        assert got == [batch(n).payload for n in range(count)]
        ranges = [(start, end) for p, start, end in faulty.get_ranges if p.endswith(info.key)]
        plain = ObjectReader(store.objects, info.key, info.size)
        entries = plain.index().entries
        starts = {e.position for e in entries}
        ends = {e.end: e for e in entries}
        assert len(ranges) >= 3, ranges
        for start, end in ranges:
            assert start in starts and end in ends, (start, end)
            assert end - start <= 4 * BLOCK or ends[end].position == start, (start, end)
        cached = [b.payload for block in plain.read_blocks(entries) for b in block]
        assert cached == got
    finally:
        gate.set()
        store.close()
    assert cache.usage()["loading_bytes"] == 0


def test_a_part_whose_get_fails_fails_the_read_waiting_for_it_and_leaves_no_trace() -> None:
    """A readahead's part is claimed (its blocks loading), a read of one of its blocks waits
    for it, and its GET fails (a 500 until the store's retries give up): the read raises the
    store's StorageUnavailable, the part's reservation and loading marks are gone, its reader
    has nothing in flight, and a read once the store answers again loads the block as a plain
    read gives it."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    objects = ObjectStore(faulty, f"/parts-{uuid.uuid4().hex}", retry=RetryPolicy(timeout=0.05))
    batches = [batch(n).with_offset(n) for n in range(16 * BLOCK // PAYLOAD)]
    data, _ = encode_object({1: batches}, block_bytes=BLOCK, compression="none")
    objects.put("object", data)
    source = ObjectReader(objects, "object", len(data))
    entries = source.index().blocks(1, 0, len(batches))
    cache = MessageCache(32 * MiB, readahead_get_bytes=4 * BLOCK)
    reader = cache.reader_at((objects.url, 1), 0)
    parts, complete = cache.claim_ahead(source, entries[2:10], reader)
    assert complete and len(parts) == 2 and reader.loading > 0
    assert [e for part in parts for e in part.entries] == entries[2:10]
    assert all(part.entries[-1].end - part.entries[0].position <= 4 * BLOCK for part in parts)

    faulty.inject("get", internal_error, times=None)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            cache.load(source, [entries[3]])
        except BaseException as error:
            outcome.append(error)

    waiting = threading.Thread(target=read)
    waiting.start()
    wait_for(lambda: blocked_in(waiting, MessageCache.load), what="the read waiting")
    with pytest.raises(StorageUnavailable):
        parts[0].run()
    waiting.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], StorageUnavailable), outcome
    parts[1].drop(StorageUnavailable("the test drops it"))

    assert reader.loading == 0
    assert cache.usage()["loading_bytes"] == 0 and cache.nbytes == 0
    assert not any(cache.holds(source, entry) for entry in entries)
    faulty.clear()
    [loaded] = cache.load(source, [entries[3]])
    assert [b.payload for b in loaded] == [b.payload for b in source.read_blocks([entries[3]])[0]]
