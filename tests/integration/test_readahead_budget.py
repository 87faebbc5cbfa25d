"""Readahead never costs more than it saves: a reader's window is bounded by the room the cache
can give it, what a readahead loads is kept (it reserves the most its blocks may weigh), and a
block loaded ahead of a reader and not kept counts as wasted and shrinks the window.

Small batches make the case: a 256-byte batch takes 312 bytes in a block and 456 in the cache
(the batch object), so a block weighs half again what it decodes to. The policy is the same at
every scale; the blocks here are 64 KiB, and the window is 8 then up to 32 of them, as the
defaults are for 1 MiB blocks."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import fsspec
import pytest
from waits import wait_for

import streamlib
from streamlib import RecordBatch
from streamlib.cache import MessageCache, weight
from streamlib.io import ObjectStore
from streamlib.objects import ObjectReader, encode_object
from streamlib.testing.faults import FaultyFileSystem

KiB = 1024
BLOCK = 64 * KiB
PAYLOAD = 256
FRAMED = PAYLOAD + 56  # a batch in a block: its header and payload
WEIGHT = BLOCK * (PAYLOAD + 200) // FRAMED  # a block in the cache (BATCH_OVERHEAD a batch)
BLOCKS = 48
OPTIONS = {"compression": "none", "block_bytes": BLOCK, "upload_interval_ms": 3_600_000}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """A stream of 48 blocks of 256-byte batches, uploaded: (store path, batches, bytes
    stored in objects)."""
    path = tmp_path_factory.mktemp("readahead") / "data"
    payload = os.urandom(PAYLOAD)
    count = BLOCKS * BLOCK // FRAMED
    with streamlib.open(path, **OPTIONS) as store:
        stream = store.create_stream("s")
        for future in [stream.append_future(RecordBatch(payload, count=1))
                       for _ in range(count)]:
            future.result()
        store.flush()
        stored = store.stats()["cost"]["upload"]["bytes_sent"]  # type: ignore[index]
    return path, count, stored


@pytest.mark.parametrize(("cache_blocks", "fetch_blocks"),
                         [(4, 1), (6, 1), (8, 1), (16, 1), (40, 1), (4, 16), (16, 16), (40, 16)])
def test_one_sequential_reader_fetches_each_block_about_once(
        written: tuple[Path, int, int], cache_blocks: int, fetch_blocks: int) -> None:
    """A cold cache of 4 blocks up to more than the largest window (32), fetches of a block
    (the default fetch is a default block) and of 16 (the default fetch with these blocks):
    the bytes fetched from the object store stay within 1.1 times the stream's bytes as stored
    (every block read once; its object's index besides). Before readahead reserved what its
    blocks weigh, it loaded blocks that did not fit, dropped them, and the reader fetched them
    again: 1.25 to 1.37 times with fetches of a block."""
    path, count, stored = written
    cache = MessageCache(cache_blocks * WEIGHT, first_window=8 * BLOCK,
                         readahead_bytes=32 * BLOCK)
    with streamlib.open(path, cache=cache, **OPTIONS) as store:
        stream = store.open_stream("s", read_only=True)
        offset = read = 0
        while offset < stream.next_offset:
            result = stream.fetch(offset, max_bytes=fetch_blocks * BLOCK)
            read += len(result)
            offset = result.next_fetch_offset
        stats = store.stats()
    fetched = stats["cost"]["read"]["bytes_received"]  # type: ignore[index]
    assert read == count
    assert fetched <= 1.1 * stored, (fetched / stored, stats["cache"])
    assert cache.nbytes <= cache.max_bytes


def test_a_block_loaded_ahead_and_not_kept_is_wasted_and_shrinks_the_window() -> None:
    """While a readahead's GET is out, a store opening on the same cache pins the data it
    recovered (whatever the budget): the blocks the GET brings back no longer fit. They count
    in readahead_wasted_bytes, the reader's window halves from the room it had (no less than
    a block), they are not in its window (its next readahead starts at them again), and the
    readahead's answer says they were not kept."""
    batches = [RecordBatch(bytes([n % 256]) * PAYLOAD, count=1).with_offset(n)
               for n in range(16 * BLOCK // FRAMED)]
    data, _ = encode_object({1: batches}, block_bytes=BLOCK, compression="none")
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    objects_store = ObjectStore(faulty, f"/readahead-{uuid.uuid4().hex}")
    objects_store.put("object", data)
    objects = ObjectReader(objects_store, "object", len(data))
    entries = objects.index().blocks(1, 0, len(batches))
    cache = MessageCache(8 * WEIGHT, first_window=8 * BLOCK, readahead_bytes=32 * BLOCK)

    reader = cache.reader_at((objects_store.url, 1), 0)
    for entry in entries[:2]:  # two sequential fetches: readahead starts after them
        cache.load(objects, [entry])
        cache.advance(reader, entry.end_offset)
        reader = cache.reader_at((objects_store.url, 1), entry.end_offset, reader)
    todo = cache.start_readahead(reader)
    assert todo is not None and todo[0] == entries[1].end_offset
    before, room = reader.window, reader.room
    chosen = entries[2:4]

    gate = threading.Event()
    held = faulty.inject("get", gate=gate)
    answer: list[object] = []
    loading = threading.Thread(
        target=lambda: answer.extend(cache.load(objects, chosen, ahead_of=reader)))
    loading.start()
    try:
        wait_for(lambda: held.hits == 1, what="the readahead's GET")
        cache.pin("recovered", cache.max_bytes)
    finally:
        gate.set()
        loading.join()
    cache.readahead_done(reader)

    assert answer == [None, None]
    wasted = sum(weight(block) for block in objects.read_blocks(chosen))
    assert cache.stats.readahead_wasted_bytes == wasted
    assert cache.stats.readahead_hits == 0
    assert WEIGHT <= reader.window < min(before, room), (reader.window, before, room)
    assert reader.ahead == []
    cache.unpin("recovered", cache.max_bytes)
    todo = cache.start_readahead(reader)
    assert todo is not None and todo[0] == chosen[0].start_offset
