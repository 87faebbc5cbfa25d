"""The object format (docs/format.md, "Object"; versions 2 and 1): the writer, the index and
footer codec, the reader's choices, and damage — every check of the spec raises CorruptDataError
naming the object and the position, and no damaged byte ever comes back as data.

Reads go through a memory:// ObjectStore; tests/backends/test_object_reader.py runs the reader on
file:// and S3 too."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import pathlib
import random
import struct
import sys
import threading
import tracemalloc
import uuid
from collections.abc import Iterator

import fsspec
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st
from strategies import reseal, small_record_lists

from streamlib import CorruptDataError, Record, RecordBatch, codec
from streamlib.io import ObjectStore
from streamlib.objects import (
    ENTRY_SIZE,
    FOOTER_SIZE,
    INDEX_HEADER_SIZE,
    IndexCache,
    IndexEntry,
    ObjectIndex,
    ObjectReader,
    ObjectStreamWriter,
    ObjectWriter,
    StreamRange,
    cut_blocks,
    decode_footer,
    decode_index,
    decode_object_index,
    encode_footer,
    encode_index,
    encode_object,
    plan_runs,
)
from streamlib.testing.faults import FaultyFileSystem, access_denied

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))

import make_golden_objects  # noqa: E402
from object_cases import UINT64_MAX, object_none, object_streams  # noqa: E402

_NOISE = random.Random(7).randbytes(1 << 16)  # incompressible payloads, without os.urandom's cost


def batches(start: int, sizes: list[int], *, count: int = 2, ts: int = 1000,
            noise: bool = False) -> list[RecordBatch]:
    """Opaque batches of ``count`` records each, contiguous from ``start``."""
    result = []
    for i, size in enumerate(sizes):
        payload = _NOISE[i * 7:i * 7 + size] if noise else bytes([i % 251]) * size
        result.append(RecordBatch(payload, count, base_timestamp=ts + i, max_timestamp=ts + i + 5,
                                  base_offset=start + i * count))
    return result


@pytest.fixture(scope="module")
def store() -> Iterator[ObjectStore]:
    url = f"memory://objects-{uuid.uuid4().hex}"
    yield ObjectStore.from_url(url)
    fs = fsspec.filesystem("memory")
    with contextlib.suppress(FileNotFoundError):
        fs.rm(fs._strip_protocol(url), recursive=True)


def reader_for(store: ObjectStore, data: bytes, **options: object) -> ObjectReader:
    key = f"obj-{uuid.uuid4().hex}"
    store.put(key, data)
    return ObjectReader(store, key, len(data), **options)  # type: ignore[arg-type]


def read_all(reader: ObjectReader) -> dict[int, list[RecordBatch]]:
    return {r.stream_id: reader.read(r.stream_id, 0) for r in reader.index().ranges}


# ---- golden file ----


GOLDEN_FILES = {1: "object_none.bin", 2: "object_none_v2.bin"}


@pytest.mark.parametrize("name", GOLDEN_FILES.values())
def test_golden_object_bytes_are_pinned(name: str) -> None:
    pinned = (GOLDEN / name).read_bytes()
    assert make_golden_objects.files()[name] == pinned


@pytest.mark.parametrize("version", GOLDEN_FILES)
def test_golden_object_read_by_hand(version: int) -> None:
    """Footer and index as docs/format.md draws them, read with struct alone (version 2's
    entries add the block's decoded size and four reserved bytes)."""
    data = (GOLDEN / GOLDEN_FILES[version]).read_bytes()
    footer = data[-32:]
    index_position, index_size, found_version = struct.unpack_from("<QIB", footer)
    assert footer[13:16] == bytes(3) and footer[24:28] == bytes(4) and footer[28:] == b"SLOB"
    assert struct.unpack_from("<Q", footer, 16)[0] == xxhash.xxh64_intdigest(footer[:16])
    assert found_version == version and index_position + index_size == len(data) - 32
    index = data[index_position:index_position + index_size]
    assert index[:4] == b"SLIX"
    assert struct.unpack_from("<Q", index, 4)[0] == xxhash.xxh64_intdigest(index[12:])
    (count,) = struct.unpack_from("<I", index, 12)
    width, shape = (56, "<QqqQIIqq") if version == 1 else (64, "<QqqQIIqqII")
    assert index_size == 16 + width * count and count == 5  # stream 3: 1 block, 7: 3, 2^64-1: 1
    entries = [struct.unpack_from(shape, index, 16 + width * i) for i in range(count)]
    assert [e[0] for e in entries] == [3, 7, 7, 7, UINT64_MAX]
    assert [(e[1], e[2], e[5]) for e in entries] == [
        (0, 3, 3), (1000, 1005, 5), (1005, 1025, 20), (1025, 1037, 12),
        ((1 << 62) + 1, (1 << 62) + 4, 3)]
    position = 0
    for stream, start, end, at, size, _, first, top, *more in entries:
        assert at == position
        info, found = codec.decode_block(data[at:at + size])
        assert (info.stream_id, info.base_offset, info.next_offset) == (stream, start, end)
        assert (info.first_timestamp, info.max_timestamp, info.length) == (first, top, size)
        assert info.compression == "none" and sum(b.count for b in found) == end - start
        if version == 2:
            assert more == [info.raw_length, 0]
            assert info.raw_length == sum(56 + len(b.payload) for b in found)
        position += size
    assert position == index_position


@pytest.mark.parametrize("version", GOLDEN_FILES)
def test_golden_object_decodes(store: ObjectStore, version: int) -> None:
    data = (GOLDEN / GOLDEN_FILES[version]).read_bytes()
    _, index = object_none(version)
    assert decode_object_index(data) == index and index.version == version
    assert [(r.stream_id, r.start_offset, r.end_offset, r.block_count) for r in index.ranges] == [
        (3, 0, 3, 1), (7, 1000, 1037, 3), (UINT64_MAX, (1 << 62) + 1, (1 << 62) + 4, 1)]
    assert read_all(reader_for(store, data)) == dict(sorted(object_streams().items()))


# ---- writer ----


def test_streams_go_in_ascending_id_and_ranges_describe_them() -> None:
    writer = ObjectWriter(block_bytes=300, compression="none")
    writer.add(9, batches(50, [100, 100, 100]))
    writer.add(2, batches(0, [10]))
    writer.add(9, batches(56, [100]))  # continues stream 9
    assert writer.stream_count == 2 and writer.raw_size == 4 * 156 + 66
    data, index = writer.finish()
    assert [(r.stream_id, r.start_offset, r.end_offset) for r in index.ranges] == [
        (2, 0, 2), (9, 50, 58)]
    assert index.ranges[0].position == 0 and index.ranges[1].position == index.ranges[0].size
    assert sum(r.size for r in index.ranges) == index.index_position
    assert index.size == len(data) and index.index_size == 16 + ENTRY_SIZE * len(index.entries)
    assert [e.stream_id for e in index.entries] == [2, 9, 9, 9, 9]  # 156 + 156 > 300
    assert index.range_of(9) == StreamRange(9, 50, 58, index.ranges[1].position,
                                            index.ranges[1].size, 4)
    assert index.range_of(5) is None
    assert writer.finish() == (data, index)  # finish leaves the writer as it was


def test_cut_blocks_never_splits_a_batch() -> None:
    given_batches = batches(0, [10, 500, 10, 10, 2000, 10])
    groups = cut_blocks(given_batches, 200)
    assert [[b.size for b in g] for g in groups] == [[10], [500], [10, 10], [2000], [10]]
    assert [b for g in groups for b in g] == given_batches
    assert cut_blocks(given_batches, 10**6) == [given_batches]
    assert len(cut_blocks(given_batches, 1)) == len(given_batches)


def test_blocks_are_compressed_one_by_one() -> None:
    streams = {1: batches(0, [3000, 3000]), 2: batches(0, [3000])}
    for compression in ("none", "lz4", "zstd"):
        data, index = encode_object(streams, block_bytes=4000, compression=compression)
        infos = [codec.decode_block(data[e.position:e.end])[0] for e in index.entries]
        assert [i.compression for i in infos] == [compression] * 3
        assert [i.raw_length for i in infos] == [3056] * 3


def test_huge_counts_start_a_new_block() -> None:
    big = (1 << 31) - 1
    group = [RecordBatch(b"x", big, 0, 0, base_offset=i * big) for i in range(3)]
    _, index = encode_object({1: group}, compression="none")
    assert [e.record_count for e in index.entries] == [2 * big, big]  # u32 record_count per block


@given(sizes=st.lists(st.lists(st.integers(1, 300), min_size=1, max_size=12), min_size=1,
                      max_size=5),
       cuts=st.lists(st.integers(1, 4), min_size=1, max_size=20),
       block_bytes=st.integers(1, 1200), compression=st.sampled_from(["none", "lz4", "zstd"]))
def test_the_streaming_writer_gives_the_bytes_of_the_whole_object_writer(
        sizes: list[list[int]], cuts: list[int], block_bytes: int, compression: str) -> None:
    """Whatever pieces a stream's batches come in, and whenever the bytes are taken, the
    streamed object is the object ObjectWriter builds at once: same bytes, same index."""
    streams = {stream_id * 3: batches(stream_id * 100, stream_sizes, noise=stream_id % 2 == 1)
               for stream_id, stream_sizes in enumerate(sizes)}
    expected = encode_object(streams, block_bytes=block_bytes,
                             compression=compression)  # type: ignore[arg-type]
    writer = ObjectStreamWriter(block_bytes=block_bytes,
                                compression=compression)  # type: ignore[arg-type]
    parts = []
    turn = 0
    for stream_id, group in streams.items():
        i = 0
        while i < len(group):
            step = cuts[turn % len(cuts)]
            turn += 1
            writer.add(stream_id, group[i:i + step])
            i += step
            if turn % 2:
                parts.append(writer.take())
    tail, index = writer.finish()
    assert (b"".join(parts) + tail, index) == expected
    assert writer.raw_size == sum(codec.BATCH_HEADER_SIZE + len(b.payload)
                                  for group in streams.values() for b in group)


def test_the_streaming_writer_refuses_what_would_break_the_object() -> None:
    writer = ObjectStreamWriter()
    with pytest.raises(ValueError, match="at least one stream"):
        writer.finish()
    writer.add(5, batches(0, [3]))
    with pytest.raises(ValueError, match=r"ascending id: stream=`4` after=`5`"):
        writer.add(4, batches(0, [3]))
    with pytest.raises(ValueError, match="expected=`2`"):
        writer.add(5, batches(7, [3]))  # a gap in the stream
    writer.add(6, batches(10, [3]))
    data, index = writer.finish()
    assert [r.stream_id for r in index.ranges] == [5, 6]
    assert len(data) == index.size
    with pytest.raises(ValueError, match="finished"):
        writer.add(7, batches(0, [1]))
    with pytest.raises(ValueError, match="finished"):
        writer.finish()


def test_writer_refuses_bad_input_and_adds_nothing_then() -> None:
    writer = ObjectWriter()
    with pytest.raises(TypeError, match="sequence of RecordBatch"):
        writer.add(1, RecordBatch(b"x", 1, base_offset=0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"batches\[1\]"):
        writer.add(1, [RecordBatch(b"x", 1, base_offset=0), b"x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no batches"):
        writer.add(1, [])
    with pytest.raises(ValueError, match="no base_offset"):
        writer.add(1, [RecordBatch(b"x", 1)])
    with pytest.raises(ValueError, match=r"contiguous.*batches\[1\].base_offset=`3` expected=`1`"):
        writer.add(1, [RecordBatch(b"x", 1, base_offset=0), RecordBatch(b"y", 1, base_offset=3)])
    with pytest.raises(ValueError, match="stream_id"):
        writer.add(-1, batches(0, [1]))
    with pytest.raises(TypeError, match="stream_id"):
        writer.add("1", batches(0, [1]))  # type: ignore[arg-type]
    writer.add(1, batches(0, [5]))
    with pytest.raises(ValueError, match="expected=`2`"):
        writer.add(1, batches(3, [5]))  # does not continue the stream
    assert writer.raw_size == 61
    assert [(r.stream_id, r.start_offset, r.end_offset) for r in writer.finish()[1].ranges] == [
        (1, 0, 2)]
    with pytest.raises(ValueError, match="at least one stream"):
        ObjectWriter().finish()
    with pytest.raises(ValueError, match="compression"):
        ObjectWriter(compression="gzip")  # type: ignore[arg-type]
    for bad in (0, 64 * 2**20 + 1):
        with pytest.raises(ValueError, match="block_bytes"):
            ObjectWriter(block_bytes=bad)
    with pytest.raises(ValueError, match="zstd_level"):
        ObjectWriter(zstd_level=23)
    with pytest.raises(TypeError, match="mapping"):
        encode_object([(1, batches(0, [1]))])  # type: ignore[arg-type]


# ---- round trips ----


@st.composite
def object_inputs(draw: st.DrawFn) -> tuple[dict[int, list[RecordBatch]], int, str]:
    ids = draw(st.lists(st.integers(0, 20) | st.integers(0, UINT64_MAX), min_size=1, max_size=4,
                        unique=True))
    streams = {}
    for stream_id in ids:
        offset = draw(st.sampled_from([0, 1, 10**12, (1 << 63) - 10**6]))
        group = []
        for _ in range(draw(st.integers(1, 10))):
            if draw(st.integers(0, 4)) == 0:
                batch = RecordBatch.from_records(draw(small_record_lists), timestamp=7)
            else:
                size = draw(st.integers(0, 3000))
                at = draw(st.integers(0, len(_NOISE) - size))
                payload = _NOISE[at:at + size] if draw(st.booleans()) else b"ab" * (size // 2)
                ts = draw(st.integers(-(1 << 63), (1 << 63) - 1 - 1000))
                batch = RecordBatch(payload, draw(st.integers(1, 1000)), ts,
                                    ts + draw(st.integers(0, 1000)))
            group.append(batch.with_offset(offset))
            offset += batch.count
        streams[stream_id] = group
    return streams, draw(st.integers(1, 8000)), draw(st.sampled_from(["none", "lz4", "zstd"]))


@given(object_inputs(), st.data())
def test_round_trip(store: ObjectStore, inputs: tuple[dict[int, list[RecordBatch]], int, str],
                    data: st.DataObject) -> None:
    streams, block_bytes, compression = inputs
    obj, index = encode_object(streams, block_bytes=block_bytes,
                               compression=compression)  # type: ignore[arg-type]
    assert decode_object_index(obj) == index
    position = 0
    for r, stream_id in zip(index.ranges, sorted(streams), strict=True):
        group = streams[stream_id]
        assert (r.stream_id, r.start_offset, r.end_offset, r.position) == (
            stream_id, group[0].base_offset, group[-1].next_offset, position)
        entries = index.blocks(stream_id, 0)
        assert [(e.start_offset, e.end_offset) for e in entries] == [
            (g[0].base_offset, g[-1].next_offset) for g in cut_blocks(group, block_bytes)]
        assert len(entries) == r.block_count and sum(e.size for e in entries) == r.size
        position += r.size
    assert position == index.index_position

    reader = reader_for(store, obj)
    assert reader.index() == index and reader.gets == 1
    for stream_id, group in streams.items():
        before = reader.gets
        assert reader.read(stream_id, 0) == group
        assert reader.gets == before + 1  # a stream's blocks are one run
        start = data.draw(st.integers(group[0].base_offset - 2, group[-1].next_offset + 2))
        end = data.draw(st.none() | st.integers(max(start, 0), group[-1].next_offset + 2))
        start = max(start, 0)
        expected = [b for b in group if b.next_offset > start and (end is None
                                                                   or b.base_offset < end)]
        if end == start:
            expected = []
        assert reader.read(stream_id, start, end) == expected
        limit = data.draw(st.integers(0, 10_000))
        bounded = reader.read(stream_id, start, end, max_bytes=limit)
        assert bounded == expected[:len(bounded)]
        if expected:
            assert len(bounded) >= 1
            assert len(bounded) == 1 or sum(b.size for b in bounded) <= limit
            if len(bounded) < len(expected):
                assert sum(b.size for b in expected[:len(bounded) + 1]) > limit


# ---- reads: arguments, ranges, max_bytes, runs ----


@pytest.fixture(scope="module")
def two_streams() -> tuple[bytes, ObjectIndex]:
    return encode_object({1: batches(100, [100] * 10), 2: batches(0, [40, 400, 40, 40])},
                         block_bytes=350, compression="none")


def test_read_ranges(store: ObjectStore, two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, index = two_streams
    reader = reader_for(store, data)
    one = batches(100, [100] * 10)
    assert reader.read(1, 0) == one
    assert reader.read(1, 105) == one[2:]  # 104-105 is the third batch
    assert reader.read(1, 105, 108) == one[2:4]
    assert reader.read(1, 105, 106) == [one[2]]
    assert reader.read(1, 105, 105) == []
    assert reader.read(1, 120) == [] and reader.read(1, 10**9) == []  # past what the object holds
    assert reader.read(1, 0, 100) == []
    # A stream the object does not hold: an empty result, as for a range it does not hold.
    assert reader.read(3, 0) == [] and index.range_of(3) is None


def test_read_refuses_bad_arguments(store: ObjectStore,
                                    two_streams: tuple[bytes, ObjectIndex]) -> None:
    reader = reader_for(store, two_streams[0])
    with pytest.raises(ValueError, match="start_offset"):
        reader.read(1, -1)
    with pytest.raises(ValueError, match="end_offset"):
        reader.read(1, 5, -1)
    with pytest.raises(ValueError, match="end_offset"):
        reader.read(1, 5, 4)
    with pytest.raises(ValueError, match="max_bytes"):
        reader.read(1, 5, max_bytes=-1)
    with pytest.raises(ValueError, match="stream_id"):
        reader.read(-1, 0)
    with pytest.raises(TypeError, match="start_offset"):
        reader.read(1, 1.5)  # type: ignore[arg-type]
    assert reader.gets == 0  # refused before any GET
    with pytest.raises(ValueError, match="not a block of this object"):
        reader.read_blocks([dataclasses.replace(reader.index().entries[0], size=1)])
    with pytest.raises(TypeError, match="IndexEntry"):
        reader.read_blocks([0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="size"):
        ObjectReader(reader.store, "k", -1)
    with pytest.raises(TypeError, match="ObjectStore"):
        ObjectReader("memory://x", "k", 1)  # type: ignore[arg-type]


def test_max_bytes_stops_before_the_batch_that_would_pass_it(
        store: ObjectStore, two_streams: tuple[bytes, ObjectIndex]) -> None:
    reader = reader_for(store, two_streams[0])
    two = batches(0, [40, 400, 40, 40])
    assert reader.read(2, 0, max_bytes=0) == two[:1]  # always at least one batch
    assert reader.read(2, 2, max_bytes=0) == [two[1]]  # even one larger than max_bytes
    assert reader.read(2, 0, max_bytes=439) == two[:1]
    assert reader.read(2, 0, max_bytes=440) == two[:2]
    assert reader.read(2, 0, max_bytes=520) == two
    assert reader.read(2, 0, 4, max_bytes=10**6) == two[:2]


def test_max_bytes_bounds_what_is_fetched(store: ObjectStore) -> None:
    data, index = encode_object({1: batches(0, [1000] * 100)}, block_bytes=2000,
                                compression="none")
    reader = reader_for(store, data)
    reader.index()
    fetched = reader.fetched_bytes
    # Runs stop at max_bytes of stored bytes: 2.5 blocks' worth is a run of three.
    assert len(reader.read(1, 0, max_bytes=2500)) == 2
    assert reader.fetched_bytes - fetched == 3 * index.entries[0].size and reader.gets == 2
    before = reader.gets
    assert len(reader.read(1, 0)) == 100 and reader.gets == before + 1


def test_plan_runs() -> None:
    def entry(position: int, size: int) -> IndexEntry:
        return IndexEntry(1, position, position + 1, position, size, 1, 0, 0)

    blocks = [entry(0, 100), entry(100, 100), entry(300, 100), entry(1000, 50)]
    positions = lambda runs: [[e.position for e in run] for run in runs]  # noqa: E731
    assert positions(plan_runs(blocks, 0)) == [[0, 100], [300], [1000]]
    assert positions(plan_runs(blocks, 100)) == [[0, 100, 300], [1000]]
    assert positions(plan_runs(blocks, 600)) == [[0, 100, 300, 1000]]
    assert positions(plan_runs(blocks, 10**6, limit=150)) == [[0, 100], [300, 1000]]
    assert positions(plan_runs(blocks, 10**6, limit=1)) == [[0], [100], [300], [1000]]
    assert list(plan_runs([], 0)) == []


def test_read_blocks_coalesces_and_keeps_the_order_asked(
        store: ObjectStore, two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, index = two_streams
    entries = index.entries
    for gap, gets in [(0, 2), (10**6, 1)]:
        reader = reader_for(store, data, merge_gap=gap)
        reader.index()
        wanted = [entries[4], entries[0], entries[1], entries[0]]  # 0-1 adjacent, 4 apart
        found = reader.read_blocks(wanted)
        assert reader.gets == 1 + gets
        for entry, got in zip(wanted, found, strict=True):
            assert got == codec.decode_block(data[entry.position:entry.end])[1]


# ---- the index cache ----


def small_index(blocks: int) -> ObjectIndex:
    return encode_object({1: batches(0, [10] * blocks)}, block_bytes=1)[1]


def test_index_cache_is_a_bytes_bounded_lru() -> None:
    one = small_index(1)
    cache = IndexCache(max_bytes=3 * one.memory_size)
    for key in "abc":
        cache.put(key, one)
    assert len(cache) == 3 and cache.nbytes == 3 * one.memory_size
    assert cache.get("a") is one  # a is now the most recent
    cache.put("d", one)
    assert "b" not in cache and all(k in cache for k in "acd")
    assert cache.get("b") is None and (cache.hits, cache.misses) == (1, 1)
    cache.put("big", small_index(20))  # heavier than the whole cache: not kept
    assert "big" not in cache and cache.nbytes == 3 * one.memory_size
    cache.put("a", small_index(2))  # replacing re-weighs
    assert "a" in cache and cache.nbytes <= cache.max_bytes
    cache.discard("a")
    cache.discard("missing")
    assert "a" not in cache
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(TypeError, match="ObjectIndex"):
        cache.put("x", b"bytes")  # type: ignore[arg-type]


def test_index_cache_under_threads() -> None:
    indexes = [small_index(n) for n in (1, 2, 3)]
    cache = IndexCache(max_bytes=5 * indexes[2].memory_size)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(2000):
            key = rng.randrange(40)
            if rng.random() < 0.5:
                cache.put(key, rng.choice(indexes))
            else:
                cache.get(key)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [cache.get(k) for k in range(40)]
    assert cache.nbytes == sum(i.memory_size for i in held if i is not None) <= cache.max_bytes


def test_index_memory_estimate_covers_what_parsing_allocates() -> None:
    for streams, blocks in [(1, 1000), (500, 1), (10, 100)]:
        data, index = encode_object({s: batches(0, [1] * blocks) for s in range(streams)},
                                    block_bytes=1, compression="none")
        tail = data[index.index_position:-FOOTER_SIZE]
        tracemalloc.start()
        parsed = decode_index(tail, index.index_position, len(data))
        used = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert used <= parsed.memory_size <= 2 * used + 2048, (streams, blocks)


# ---- damage: footer and index ----


def corrupt_at(position: int, match: str, call, *args, **kwargs) -> CorruptDataError:  # type: ignore[no-untyped-def]
    with pytest.raises(CorruptDataError, match=match) as caught:
        call(*args, **kwargs)
    assert caught.value.position == position, str(caught.value)
    assert f"position=`{position}`" in str(caught.value)
    return caught.value


def refooter(data: bytes, index_position: int | None = None, index_size: int | None = None,
             version: int = 2, reserved: bytes = bytes(3)) -> bytes:
    """``data`` with its footer rewritten (and resealed) with some fields changed."""
    position, size = struct.unpack_from("<QI", data, len(data) - 32)
    head = struct.pack("<QIB3s", position if index_position is None else index_position,
                       size if index_size is None else index_size, version, reserved)
    return data[:-32] + head + struct.pack("<Q", xxhash.xxh64_intdigest(head)) + data[-8:]


def reindex(data: bytes, index: ObjectIndex, entries: list[IndexEntry]) -> bytes:
    """``data`` with a new (well-sealed) index of ``entries``."""
    block = encode_index(entries)
    return data[:index.index_position] + block + encode_footer(index.index_position, len(block))


def test_footer_damage(two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, index = two_streams
    at = len(data) - 32
    index_size = index.index_size

    def check(damaged: bytes, match: str) -> None:
        corrupt_at(at, match, decode_object_index, damaged, source="k/obj")
        with pytest.raises(CorruptDataError, match="source=`k/obj`"):
            decode_object_index(damaged, source="k/obj")

    check(data[:-1] + b"C", "bad footer magic")
    check(refooter(data, version=3), "unsupported object format version: version=`3`")
    check(refooter(data, version=0), "unsupported object format version")
    flipped = bytearray(data)
    flipped[at + 3] ^= 0x10
    check(bytes(flipped), "footer checksum mismatch")
    check(data[:-8] + b"\x01\x00\x00\x00SLOB", "reserved bytes")
    check(refooter(data, reserved=b"\x00\x01\x00"), "reserved bytes")
    check(refooter(data, index_position=len(data)), "index lies outside the object")
    check(refooter(data, index_position=2**64 - 1), "index lies outside the object")
    check(refooter(data, index_size=index_size + 40), "index lies outside the object")
    check(refooter(data, index_size=index_size + 8), "index overlaps the footer")
    check(refooter(data, index_position=at + 4, index_size=4), "index overlaps the footer")
    check(refooter(data, index_position=index.index_position + 24, index_size=index_size),
          "index overlaps the footer")
    check(refooter(data, index_size=index_size - ENTRY_SIZE), "index does not end where the footer")
    check(refooter(data, index_position=at, index_size=0), "index size is not 16 \\+ 64")
    check(refooter(data, index_position=at - 16, index_size=16), "index size is not 16 \\+ 64")
    check(refooter(data, index_position=at - 20, index_size=20), "index size is not 16 \\+ 64")
    corrupt_at(0, "too small for a footer", decode_object_index, data[-31:])
    corrupt_at(0, "too small for a footer", decode_object_index, b"")
    with pytest.raises(ValueError, match="32 bytes"):
        decode_footer(data[-31:], len(data))


def test_index_block_damage(two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, index = two_streams
    at = index.index_position
    bad = bytearray(data)
    bad[at] ^= 1
    corrupt_at(at, "bad index magic", decode_object_index, bytes(bad))
    for offset in (4, 12, 16 + 3, index.index_size - 1):  # the checksum, the count, entries
        bad = bytearray(data)
        bad[at + offset] ^= 0x40
        corrupt_at(at, "index checksum mismatch", decode_object_index, bytes(bad))
    bad = bytearray(data)
    struct.pack_into("<I", bad, at + 12, len(index.entries) + 1)
    corrupt_at(at, "entry count disagrees", decode_object_index, reseal(bad, at, len(data) - 32))
    with pytest.raises(ValueError, match="size of a version-2 index block"):
        decode_index(data[at:at + 20], at, len(data))


def test_footer_and_index_refuse_positions_outside_the_object(
        two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, index = two_streams
    footer = data[-FOOTER_SIZE:]
    block = data[index.index_position:-FOOTER_SIZE]
    assert decode_footer(footer, len(data)) == (index.index_position, index.index_size, 2)
    for size in (-1, -len(data)):
        with pytest.raises(ValueError, match=f"^object_size must be in .*`{size}`"):
            decode_footer(footer, size)
    with pytest.raises(TypeError, match=r"^object_size must be an int"):
        decode_footer(footer, float(len(data)))
    with pytest.raises(CorruptDataError, match="too small for a footer"):  # a size is data
        decode_footer(footer, FOOTER_SIZE - 1)
    assert decode_index(block, index.index_position, len(data)) == index
    with pytest.raises(ValueError, match=r"^index_position must be in"):
        decode_index(block, -1, len(data))
    # The index block and the footer after it must fit in the object the caller names.
    for size in (-1, 0, len(data) - 1):
        with pytest.raises(ValueError, match=r"^object_size must be in"):
            decode_index(block, index.index_position, size)


def entry_cases(index: ObjectIndex) -> list[tuple[int, str, list[IndexEntry]]]:
    """(bad entry number, message, entries) for every check of an entry."""
    e = list(index.entries)
    last = len(e) - 1

    def changed(i: int, **fields: int) -> list[IndexEntry]:
        return [dataclasses.replace(x, **fields) if n == i else x for n, x in enumerate(e)]

    swapped_streams = [dataclasses.replace(e[0], stream_id=e[last].stream_id),
                       *e[1:last], dataclasses.replace(e[last], stream_id=e[0].stream_id)]
    return [
        (1, "record_count is not end - start", changed(1, record_count=e[1].record_count + 1)),
        (1, "empty or negative offset range", changed(1, end_offset=e[1].start_offset,
                                                      record_count=0)),
        (0, "empty or negative offset range", changed(0, start_offset=-2, end_offset=-1,
                                                      record_count=1)),
        (2, "max_timestamp below first_timestamp", changed(2, max_timestamp=e[2].first_timestamp
                                                           - 1)),
        (last, "impossible block size", changed(last, size=10)),
        (1, "overlaps the previous block", changed(1, position=e[1].position - 1)),
        (1, "does not start where the previous block ends", changed(1, position=e[1].position
                                                                    + 1)),
        (1, "does not start where the previous block ends", [e[0], *e[2:3], e[1], *e[3:]]),
        (last, "points outside the data area", changed(last, size=e[last].size + 1)),
        (1, "streams out of order", swapped_streams),
        (2, "not contiguous with the stream's previous block",
         changed(2, start_offset=e[2].start_offset + 1, end_offset=e[2].end_offset + 1)),
    ]


def test_index_entry_damage(two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, index = two_streams
    assert index.entries[0].stream_id == index.entries[1].stream_id == index.entries[2].stream_id
    for number, match, entries in entry_cases(index):
        damaged = reindex(data, index, entries)
        corrupt_at(index.index_position + 16 + ENTRY_SIZE * number, match, decode_object_index,
                   damaged)
    # The last block ends before the index: bytes no entry covers.
    e = list(index.entries)
    short = reindex(data, index, [*e[:-1], dataclasses.replace(e[-1], size=e[-1].size - 1)])
    corrupt_at(index.index_position + 16 + ENTRY_SIZE * (len(e) - 1), "do not fill the data area",
               decode_object_index, short)


def test_reader_reports_index_damage_with_the_key(store: ObjectStore,
                                                  two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, index = two_streams
    reader = reader_for(store, reindex(data, index, entry_cases(index)[0][2]))
    with pytest.raises(CorruptDataError, match=f"source=`{reader.key}`"):
        reader.read(1, 0)
    reader = reader_for(store, data[:-1] + b"X")
    with pytest.raises(CorruptDataError, match=f"bad footer magic.*source=`{reader.key}`"):
        reader.index()
    tiny = reader_for(store, b"SLOB")
    corrupt_at(0, "too small for a footer", tiny.index)
    assert tiny.gets == 0


# ---- damage: blocks against their entries ----


def test_block_header_disagreeing_with_its_entry(store: ObjectStore,
                                                 two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, index = two_streams
    e = list(index.entries)
    target = e[5]  # the first block of stream 2
    assert (target.stream_id, target.start_offset) == (2, 0) and e[4].stream_id == 1

    def changed(**fields: int) -> list[IndexEntry]:
        return [dataclasses.replace(x, **fields) if x is target else x for x in e]

    cases = [
        ("first_timestamp", changed(first_timestamp=target.first_timestamp - 1)),
        ("max_timestamp", changed(max_timestamp=target.max_timestamp + 1)),
        # every offset of the stream moved: the index itself stays consistent
        ("start_offset", [x if x.stream_id != 2 else dataclasses.replace(
            x, start_offset=x.start_offset + 2, end_offset=x.end_offset + 2) for x in e]),
    ]
    for field, entries in cases:
        reader = reader_for(store, reindex(data, index, entries))
        corrupt_at(target.position, f"disagrees with its index entry: {field}=", reader.read,
                   2, 0)
    # One entry for two blocks: the first block's header says it is shorter.
    merged = dataclasses.replace(e[0], size=e[0].size + e[1].size, end_offset=e[1].end_offset,
                                 record_count=e[1].end_offset - e[0].start_offset,
                                 max_timestamp=max(e[0].max_timestamp, e[1].max_timestamp))
    reader = reader_for(store, reindex(data, index, [merged, *e[2:]]))
    corrupt_at(0, "size=", reader.read, 1, 0)
    # A single-stream object whose index names another stream.
    one, one_index = encode_object({4: batches(0, [10])}, compression="none")
    other = [dataclasses.replace(one_index.entries[0], stream_id=5)]
    reader = reader_for(store, reindex(one, one_index, other))
    corrupt_at(0, "stream=`4` \\(index `5`\\)", reader.read, 5, 0)


def test_block_damage_is_named_by_its_position_in_the_object(
        store: ObjectStore, two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, index = two_streams
    target = index.entries[2]
    bad = bytearray(data)
    bad[target.position + 100] ^= 1
    reader = reader_for(store, bytes(bad))
    with pytest.raises(CorruptDataError, match="checksum mismatch in the data block of stream "
                       "`1` at offsets `\\[108, 112\\)`") as caught:
        reader.read(1, 0)
    assert target.position <= caught.value.position < target.end  # at the block's checksum
    assert caught.value.source == reader.key
    # Damage behind a resealed block checksum is found in the batches inside it.
    reader = reader_for(store, reseal(bad, target.position, target.end))
    corrupt_at(target.position, "decompressed bytes", reader.read, 1, target.start_offset)
    assert reader.read(1, 0, target.start_offset) == batches(100, [100] * 10)[:4]


def test_an_object_shorter_than_its_recorded_size(store: ObjectStore,
                                                  two_streams: tuple[bytes, ObjectIndex]) -> None:
    data, _ = two_streams
    key = f"short-{uuid.uuid4().hex}"
    store.put(key, data[:-10])
    reader = ObjectReader(store, key, len(data))
    corrupt_at(len(data) - 10, "shorter than its recorded size", reader.index)
    store.put(key, b"more" + data)  # another object than the size was recorded for
    corrupt_at(len(data) - 32, "bad footer magic", ObjectReader(store, key, len(data)).index)



def test_a_get_that_fails_past_the_end_is_explained_by_the_listed_size(
        two_streams: tuple[bytes, ObjectIndex]) -> None:
    """A GET past the object's end may fail rather than come back short (a local file cannot
    seek past its filesystem's largest size): the reader asks the listing how long the object
    is and reports damage; an error the object's length does not explain stands."""
    data, _ = two_streams
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    store = ObjectStore(faulty, f"/faulty-{uuid.uuid4().hex}")
    store.put("obj", data)

    def invalid(path: str) -> BaseException:
        return OSError(errno.EINVAL, "Invalid argument")

    faulty.inject("get", invalid)
    with pytest.raises(CorruptDataError, match=f"object of `{len(data)}` bytes is shorter than "
                       f"its recorded size `{1 << 50}`") as caught:
        ObjectReader(store, "obj", 1 << 50).index()
    assert (caught.value.source, caught.value.position) == ("obj", len(data))
    assert isinstance(caught.value.__cause__, OSError)
    # The size is right: the GET's own error is the answer.
    faulty.inject("get", invalid)
    with pytest.raises(OSError, match="Invalid argument"):
        ObjectReader(store, "obj", len(data)).index()
    faulty.inject("get", access_denied)
    with pytest.raises(PermissionError):
        ObjectReader(store, "obj", len(data)).index()
    # The listing fails too: the GET's error, not the listing's, is raised.
    faulty.inject("get", invalid)
    faulty.inject("list", access_denied)
    with pytest.raises(OSError, match="Invalid argument"):
        ObjectReader(store, "obj", 1 << 50).index()
    assert ObjectReader(store, "obj", len(data)).index() == decode_object_index(data)

def test_every_single_bit_flip_is_caught(store: ObjectStore) -> None:
    """Flip each bit of a small object (three streams, compressed and not, one two-block
    stream): a full read raises CorruptDataError, never returns wrong data, never crashes."""
    obj = ObjectWriter(block_bytes=120, compression="lz4")
    obj.add(1, batches(0, [60, 30]))
    obj.add(UINT64_MAX, batches(5, [20], noise=True))
    records = [RecordBatch.from_records([Record(b"v", key=b"k", headers=[("h", b"")])],
                                        timestamp=3).with_offset(9)]
    obj.add(2, records)
    data, index = obj.finish()
    expected = {1: batches(0, [60, 30]), 2: records,
                UINT64_MAX: batches(5, [20], noise=True)}
    reader = reader_for(store, data)
    assert read_all(reader) == expected and len(index.entries) == 4
    key = f"flip-{uuid.uuid4().hex}"
    for bit in range(len(data) * 8):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        store.put(key, bytes(bad))
        reader = ObjectReader(store, key, len(data))
        with pytest.raises(CorruptDataError) as caught:
            read_all(reader)
        assert caught.value.source == key and caught.value.position is not None
        assert 0 <= caught.value.position < len(data)


def test_random_bytes_are_refused_cleanly(store: ObjectStore) -> None:
    rng = random.Random(3)
    for size in [32, 33, 100, 1000, 70_000]:
        junk = rng.randbytes(size - 4) + b"SLOB"
        with pytest.raises(CorruptDataError):
            reader_for(store, junk).index()
    for _ in range(200):  # a plausible footer over junk: the index checks refuse it
        size = rng.randrange(200, 2000)
        at = rng.randrange(0, size - 32 - 72)
        junk = rng.randbytes(size - 32)
        head = struct.pack("<QIB3s", at, size - 32 - at, 1, bytes(3))
        footer = head + struct.pack("<Q", xxhash.xxh64_intdigest(head)) + bytes(4) + b"SLOB"
        with pytest.raises(CorruptDataError):
            decode_object_index(junk + footer)


def test_entry_layout_constants() -> None:
    assert (FOOTER_SIZE, INDEX_HEADER_SIZE, ENTRY_SIZE) == (32, 16, 64)
    assert len(encode_footer(0, 72)) == 32
    assert os.path.getsize(GOLDEN / "object_none.bin") == object_none(1)[1].size
    assert os.path.getsize(GOLDEN / "object_none_v2.bin") == object_none(2)[1].size
