"""ObjectReader through real stores (memory://, file://, moto's S3): the same answers
everywhere, and the GETs it promises — one for the footer and the index, one per run of blocks.
On S3 the GETs are also counted on the wire (botocore's request events), not only by the
reader's own counter."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamlib import CorruptDataError, Record, RecordBatch
from streamlib.io import ObjectStore
from streamlib.objects import (
    FOOTER_SIZE,
    IndexCache,
    ObjectIndex,
    ObjectReader,
    encode_footer,
    encode_index,
    encode_object,
)
from streamlib.testing.s3 import object_store

MiB = 1 << 20
Wire = list[tuple[str, str]]  # (method, Range header) of each request sent


@pytest.fixture(params=["memory", "file", "moto"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    with object_store(request.param, request, tmp_path) as opened:
        yield opened


@contextlib.contextmanager
def wire_requests(store: ObjectStore) -> Iterator[Wire | None]:
    """The requests the store's S3 client sends meanwhile; None for a store that is not S3."""
    client = getattr(store.fs, "s3", None) if store.url.startswith("s3://") else None
    if client is None:
        yield None
        return
    sent: Wire = []

    def record(request: object, **_: object) -> None:
        headers = request.headers  # type: ignore[attr-defined]
        sent.append((request.method, (headers.get("Range") or b"").decode()))  # type: ignore[attr-defined]

    client.meta.events.register("before-send.s3", record)
    try:
        yield sent
    finally:
        client.meta.events.unregister("before-send.s3", record)


def opaque(start: int, n: int, size: int, *, count: int = 3) -> list[RecordBatch]:
    return [RecordBatch(bytes([i % 256]) * size, count, 1_000 + i, 1_000 + i,
                        base_offset=start + i * count) for i in range(n)]


def put(store: ObjectStore, data: bytes) -> str:
    key = f"obj/{uuid.uuid4().hex}"
    store.put(key, data)
    return key


def records_batches(start: int) -> list[RecordBatch]:
    result = []
    for i in range(5):
        batch = RecordBatch.from_records([Record(b"v%d" % j, key=b"k", timestamp=j)
                                          for j in range(10)], timestamp=0)
        result.append(batch.with_offset(start + i * 10))
    return result


STREAMS = {12: opaque(0, 30, 500), 3: records_batches(100), 40: opaque(7, 3, 50_000)}


@pytest.fixture(scope="module", params=["none", "lz4", "zstd"])
def built(request: pytest.FixtureRequest) -> tuple[bytes, ObjectIndex]:
    return encode_object(STREAMS, block_bytes=2_000, compression=request.param)


def test_round_trip(store: ObjectStore, built: tuple[bytes, ObjectIndex]) -> None:
    data, index = built
    reader = ObjectReader(store, put(store, data), len(data))
    assert reader.index() == index
    for stream_id, batches in STREAMS.items():
        assert reader.read(stream_id, 0) == batches
        assert reader.read(stream_id, batches[1].base_offset + 1,
                           batches[2].next_offset) == batches[1:3]
    assert reader.read(99, 0) == []


def test_footer_and_index_in_one_get_then_the_cache(store: ObjectStore) -> None:
    data, index = encode_object(STREAMS, block_bytes=2_000, compression="none")
    assert len(data) > 64 * 1024 + FOOTER_SIZE  # the tail GET is a real tail, not everything
    key = put(store, data)
    cache = IndexCache()
    with wire_requests(store) as wire:
        reader = ObjectReader(store, key, len(data), cache=cache)
        assert reader.index() == index
        assert (reader.gets, reader.fetched_bytes) == (1, 64 * 1024 + FOOTER_SIZE)
        if wire is not None:
            assert wire == [("GET", f"bytes={len(data) - 65568}-{len(data) - 1}")]
        again = ObjectReader(store, key, len(data), cache=cache)
        assert again.index() is reader.index() and again.gets == 0
        if wire is not None:
            assert len(wire) == 1
    assert cache.hits == 1 and (store.url, key) in cache
    assert ObjectReader(store, key, len(data)).index() == index  # no cache: its own GET


def test_an_index_larger_than_the_guess_takes_one_more_get(store: ObjectStore) -> None:
    data, index = encode_object({5: opaque(0, 60, 10)}, block_bytes=1, compression="none")
    assert len(index.entries) == 60  # an index of 3856 bytes
    key = put(store, data)
    for guess in (0, 100, index.index_size - 1):
        with wire_requests(store) as wire:
            reader = ObjectReader(store, key, len(data), tail_guess=guess)
            assert reader.index() == index
            assert reader.gets == 2
            assert reader.fetched_bytes == index.index_size + FOOTER_SIZE  # nothing twice
            if wire is not None:
                tail = len(data) - FOOTER_SIZE - max(guess, len(data) // (8 * 1024))
                assert wire == [("GET", f"bytes={tail}-{len(data) - 1}"),
                                ("GET", f"bytes={index.index_position}-{tail - 1}")]
    reader = ObjectReader(store, key, len(data), tail_guess=index.index_size)
    assert reader.index() == index and reader.gets == 1


def test_the_guess_grows_with_the_object(store: ObjectStore) -> None:
    # Four blocks of 1 MiB: an index of 272 bytes, found in a tail of size / 8 KiB.
    data, index = encode_object({1: opaque(0, 4, 1 << 20)}, compression="none")
    assert len(index.entries) == 4 and index.index_size < len(data) // (8 * 1024)
    key = put(store, data)
    reader = ObjectReader(store, key, len(data), tail_guess=10)
    reader.index()
    assert reader.fetched_bytes == FOOTER_SIZE + len(data) // (8 * 1024) and reader.gets == 1


def test_one_get_per_run_of_adjacent_blocks(store: ObjectStore) -> None:
    data, index = encode_object({1: opaque(0, 40, 300), 2: opaque(0, 10, 300)}, block_bytes=1,
                                compression="lz4")
    key = put(store, data)
    reader = ObjectReader(store, key, len(data))
    reader.index()
    blocks = index.blocks(1, 15, 90)
    assert len(blocks) == 25
    with wire_requests(store) as wire:
        assert reader.read(1, 15, 90) == opaque(0, 40, 300)[5:30]
        assert reader.gets == 2
        if wire is not None:
            assert wire == [("GET", f"bytes={blocks[0].position}-{blocks[-1].end - 1}")]
    # Blocks of two streams far apart: one GET each, or one for all when the gap is allowed.
    first, last = index.entries[0], index.entries[-1]
    gap = last.position - first.end
    for merge_gap, gets in [(gap - 1, 2), (gap, 1)]:
        reader = ObjectReader(store, key, len(data), merge_gap=merge_gap)
        reader.index()
        with wire_requests(store) as wire:
            found = reader.read_blocks([last, first])
            assert [b.base_offset for b in found[0]] == [27] and found[1][0].base_offset == 0
            assert reader.gets == 1 + gets
            if wire is not None:
                assert len(wire) == gets


def test_max_bytes_fetches_little_of_a_long_range(store: ObjectStore) -> None:
    data, index = encode_object({1: opaque(0, 200, 1000)}, block_bytes=4_000,
                                compression="none")
    reader = ObjectReader(store, put(store, data), len(data))
    reader.index()
    before = reader.fetched_bytes
    found = reader.read(1, 30, max_bytes=3_500)
    assert [b.base_offset for b in found] == [30, 33, 36]
    assert reader.fetched_bytes - before < 3 * index.entries[0].size
    assert len(reader.read(1, 30, max_bytes=0)) == 1


def test_a_missing_object_and_a_short_one(store: ObjectStore) -> None:
    data, _ = encode_object({1: opaque(0, 3, 100)}, compression="none")
    with pytest.raises(FileNotFoundError):
        ObjectReader(store, "obj/missing", 1000).index()
    key = put(store, data[:-1])
    with pytest.raises(CorruptDataError, match="shorter than its recorded size"):
        ObjectReader(store, key, len(data)).index()
    # A recorded size far beyond the object: the tail starts past its end (S3 answers 416).
    with pytest.raises(CorruptDataError, match="shorter than its recorded size") as caught:
        ObjectReader(store, key, len(data) * 1000, tail_guess=0).index()
    assert caught.value.position is not None and caught.value.position > len(data)


SMALL = encode_object({1: opaque(0, 3, 100)}, compression="none")[0]


@pytest.mark.parametrize("size", [
    len(SMALL) + 1, len(SMALL) + 100, 1 << 20, 1 << 40, 1 << 50, 1 << 62, (1 << 63) - 1,
], ids=lambda size: f"{size}")
def test_a_recorded_size_beyond_the_object_is_corrupt_data(store: ObjectStore,
                                                          size: int) -> None:
    """The metadata's size is a claim: a GET past the object's end is damage naming the key
    and where the object ended, never an OSError; and the reader asks for no more than a
    bounded tail however large the claim (a local file's read allocates what it is asked for:
    measured there; S3 is measured by the Range it is sent, moto's own allocations being in this
    process too)."""
    key = put(store, SMALL)
    reader = ObjectReader(store, key, size)
    with wire_requests(store) as wire:
        tracemalloc.start()
        try:
            with pytest.raises(CorruptDataError, match="shorter than its recorded size") as caught:
                reader.index()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert caught.value.source == key and f"`{size}`" in str(caught.value)
    assert caught.value.position is not None and len(SMALL) <= caught.value.position <= size
    if wire is None:
        assert peak < 4 * MiB, f"reading the tail of a {size}-byte claim took {peak} bytes"
    else:
        first, last = map(int, wire[0][1].removeprefix("bytes=").split("-"))
        assert last == size - 1 and last - first + 1 <= FOOTER_SIZE + MiB


@pytest.mark.parametrize("size", [len(SMALL) - 1, len(SMALL) // 2, FOOTER_SIZE, 31, 1, 0])
def test_a_recorded_size_below_the_object_is_corrupt_data(store: ObjectStore,
                                                         size: int) -> None:
    key = put(store, SMALL)
    with pytest.raises(CorruptDataError, match="footer") as caught:
        ObjectReader(store, key, size).read(1, 0)
    assert caught.value.source == key
    assert caught.value.position == max(0, size - FOOTER_SIZE)


@pytest.mark.parametrize("kept", [len(SMALL) - 1, len(SMALL) - FOOTER_SIZE, 100, 1, 0])
def test_a_truncated_object_is_corrupt_data(store: ObjectStore, kept: int) -> None:
    key = put(store, SMALL[:kept])
    with pytest.raises(CorruptDataError, match="shorter than its recorded size") as caught:
        ObjectReader(store, key, len(SMALL)).read(1, 0)
    assert caught.value.source == key and caught.value.position == kept


def test_an_object_truncated_after_its_index_was_read(store: ObjectStore) -> None:
    """A block GET that ends early (the object replaced by a shorter one) is damage too."""
    batches = opaque(0, 30, 500)
    data, index = encode_object({1: batches}, block_bytes=2_000, compression="none")
    key = put(store, data)
    reader = ObjectReader(store, key, len(data))
    reader.index()
    cut = index.entries[2].position + 10
    store.put(key, data[:cut])
    two = index.entries[1].end_offset  # the first two blocks are still whole
    assert reader.read(1, 0, two) == [b for b in batches if b.base_offset < two]
    with pytest.raises(CorruptDataError, match="shorter than its recorded size") as caught:
        reader.read(1, index.entries[2].start_offset)
    assert caught.value.source == key and caught.value.position == cut


def test_threads_share_one_reader_and_one_index_load(store: ObjectStore) -> None:
    data, _ = encode_object(STREAMS, block_bytes=2_000, compression="zstd")
    reader = ObjectReader(store, put(store, data), len(data))
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(stream_id: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                assert reader.read(stream_id, 0) == STREAMS[stream_id]
        except BaseException as e:  # reported below, with the thread's failure
            errors.append(e)

    threads = [threading.Thread(target=work, args=(sorted(STREAMS)[i % 3],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert reader.gets == 1 + 8 * 3  # one index load, then one GET per read


# ---- what a block decodes to (docs/format.md, "Object format version 2") ----


def squeezable(start: int, n: int) -> list[RecordBatch]:
    """Batches of 2 MiB that zstd squeezes to a few KiB each."""
    return [RecordBatch(b"squeeze me " * 190_651, 1, 7, 7, base_offset=start + i)
            for i in range(n)]


REFUSAL = """
import tracemalloc
from streamlib.errors import CorruptDataError
from streamlib.io import ObjectStore
from streamlib.objects import ObjectReader, encode_object
from streamlib.records import RecordBatch
batches = [RecordBatch(b"squeeze me " * 190_651, 1, 7, 7, base_offset=i) for i in range(3)]
data, _ = encode_object({1: batches}, compression="zstd")
store = ObjectStore.from_url("memory://refusal")
store.put("o", data)
reader = ObjectReader(store, "o", len(data), max_block_bytes=1 << 20)
reader.index()
tracemalloc.start()
try:
    reader.read(1, 0)
except CorruptDataError:
    print(tracemalloc.get_traced_memory()[1])
"""


def refusal_peak() -> int:
    """The peak of what a read refused for its block's size allocates (bytes), measured in a
    fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", REFUSAL], capture_output=True, text=True,
                          check=True, timeout=120)
    return int(done.stdout.strip())


def test_a_block_larger_than_max_block_bytes_is_refused_before_decompression(
        store: ObjectStore) -> None:
    data, index = encode_object({1: squeezable(0, 3)}, compression="zstd")
    assert len(data) < 100_000 and all(e.raw_size and e.raw_size > 2 * MiB - 100
                                       for e in index.entries)
    key = put(store, data)
    reader = ObjectReader(store, key, len(data), max_block_bytes=1 * MiB)
    assert reader.decoded_bound(index.entries[0]) == index.entries[0].raw_size
    with pytest.raises(CorruptDataError, match="more than max_block_bytes `1048576`") as caught:
        reader.read(1, 0)
    assert caught.value.source == key and caught.value.position == 0
    if store.url.startswith("memory://"):
        # Refused before any block was decompressed: measured in a process of its own, where
        # no other test's threads (an S3 server still answering a request whose answer a
        # fault test dropped) allocate meanwhile.
        assert refusal_peak() < MiB // 2
    whole = ObjectReader(store, key, len(data), max_block_bytes=4 * MiB)
    assert whole.read(1, 0) == squeezable(0, 3)


def test_a_version_1_block_is_bounded_by_its_header(store: ObjectStore) -> None:
    """A version-1 index does not give decoded sizes: a reader assumes the worst before the
    GET (its max_block_bytes) and checks the header before decompressing."""
    data, index = encode_object({1: squeezable(0, 2)}, compression="zstd", version=1)
    assert index.version == 1 and index.entries[0].raw_size is None
    key = put(store, data)
    reader = ObjectReader(store, key, len(data), max_block_bytes=1 * MiB)
    assert reader.index() == index and reader.decoded_bound(index.entries[0]) == 1 * MiB
    with pytest.raises(CorruptDataError, match="decodes to `2097217` bytes, more than"):
        reader.read(1, 0)
    assert ObjectReader(store, key, len(data)).read(1, 0) == squeezable(0, 2)


def test_an_index_that_understates_a_block_is_refused(store: ObjectStore) -> None:
    """A version-2 entry whose raw_size disagrees with the block's header is damage: found
    before decompression, named by the block's position."""
    data, index = encode_object({1: squeezable(0, 2)}, compression="zstd")
    second = index.entries[1]
    lying = [index.entries[0], dataclasses.replace(second, raw_size=4096)]
    block = encode_index(lying)
    forged = data[:index.index_position] + block + encode_footer(index.index_position,
                                                                 len(block))
    key = put(store, forged)
    reader = ObjectReader(store, key, len(forged))
    with pytest.raises(CorruptDataError, match=r"disagrees with its index entry: raw_size=") \
            as caught:
        reader.read(1, 0)
    assert caught.value.position == second.position and caught.value.source == key
