"""Compaction and deletion through the store (docs/lifecycle.md): merged objects read back
byte for byte, trimmed and destroyed data leaves the bucket after the grace period, a slow
reader crosses a compaction and a deletion without a gap, two compactions of the same inputs:
one wins and the loser leaves nothing behind. On the local store and on S3 (moto)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_checks import bucket, check_coverage, referenced
from waits import wait_for

import streamlib
from streamlib import Record, StreamStore
from streamlib.errors import CompactionConflict
from streamlib.lifecycle.compaction import CompactionReport, Compactor
from streamlib.testing.s3 import S3Endpoint

KiB = 1024


@pytest.fixture(params=["local", pytest.param("moto", marks=pytest.mark.once)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Opens a store on a local directory or a moto bucket: small upload rounds (each flush is
    one), no background lifecycle, no grace period (tests say when a pass runs)."""
    options: dict[str, Any] = {"upload_interval_ms": 3_600_000, "block_bytes": 16 * KiB,
                               "compaction_interval_ms": 0, "delete_grace_ms": 0,
                               "retry_timeout_ms": 0, "stream_object_bytes": 64 * KiB,
                               "compaction_object_bytes": "1MiB"}
    if request.param == "moto":
        moto: S3Endpoint = request.getfixturevalue("moto_s3")
        bucket = moto.create_bucket()
        # The endpoint's one filesystem, as the store would build it (a store's own costs a
        # new botocore client, 0.1-0.4 s, at every open).
        options.update(objects_url=f"s3://{bucket}/store", filesystem=moto.store_fs,
                       retry_timeout_ms=500, delete_grace_ms=2000)
        request.addfinalizer(lambda: moto.delete_bucket(bucket))
    opened: list[StreamStore] = []

    def opener(**overrides: Any) -> StreamStore:
        settings = {**options, **overrides}
        storage_options = settings.pop("storage_options", None)
        store = streamlib.open(tmp_path / "data", storage_options=storage_options, **settings)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def records_of(stream_id: int, round_: int, n: int, rng: random.Random) -> list[Record]:
    return [Record(rng.randbytes(rng.randint(0, 600)) + b"v" * rng.randint(0, 3000),
                   key=None if i % 5 == 0 else f"k{stream_id}-{round_}-{i}".encode(),
                   headers=[("h", bytes([i % 256]))] if i % 3 == 0 else (),
                   timestamp=1_000_000 + round_ * 1000 + i)
            for i in range(n)]


def write_rounds(store: StreamStore, streams: int, rounds: int, seed: int = 7) -> list[Any]:
    """``rounds`` upload rounds over ``streams`` streams (one flush each): small multi-stream
    objects, and stream objects for the streams that write more."""
    rng = random.Random(seed)
    handles = [store.create_stream(f"s{i}") for i in range(streams)]
    for r in range(rounds):
        for i, stream in enumerate(handles):
            if rng.random() < 0.8:
                stream.append(records_of(i, r, rng.randint(1, 40 if i == 0 else 8), rng))
        store.flush()
    return handles


def everything(stream: Any) -> list[tuple[int, Record]]:
    found = []
    offset = stream.start_offset
    while offset < stream.next_offset:
        result = stream.fetch(offset)
        for batch in result:
            assert batch.base_offset is not None
            found.extend(enumerate(batch.records(), batch.base_offset))
        offset = result.next_fetch_offset
    return [(o, r) for o, r in found if o >= stream.start_offset]


def delete_doomed(store: StreamStore) -> None:
    """Run passes until the doomed objects are deleted (at once with no grace period; on S3,
    whose calls need a retry budget, once its grace period has passed)."""
    wait_for(lambda: store.compact() and store.metadata.doomed() == [], timeout=60,
             what="the doomed objects' deletion")


def test_compaction_merges_rounds_and_every_record_reads_back_the_same(open_store: Any) -> None:
    store = open_store()
    handles = write_rounds(store, streams=6, rounds=12)
    before = {s.id: everything(s) for s in handles}
    lookups = {s.id: [s.offset_for_timestamp(t) for t in (0, 1_003_000, 1_007_017, 2_000_000)]
               for s in handles}
    objects_before = len(store.metadata.live_objects(limit=10_000))
    report = store.compact()
    assert isinstance(report, CompactionReport)
    assert report.tasks >= 1 and report.failures == 0 and report.conflicts == 0, report
    assert report.objects_read >= 10 and report.objects_written >= 1
    assert report.bytes_read > 0 and report.bytes_written > 0
    live = store.metadata.live_objects(limit=10_000)
    assert len(live) < objects_before / 2
    assert {s.id: everything(s) for s in handles} == before
    assert {s.id: [s.offset_for_timestamp(t) for t in (0, 1_003_000, 1_007_017, 2_000_000)]
            for s in handles} == lookups
    check_coverage(store.metadata)
    # The inputs wait for deletion until the grace period has passed (none here on the local
    # store: the pass deleted them already).
    deleted = store.stats()["lifecycle"]["deletion"]["deleted"]  # type: ignore[index]
    assert len(store.metadata.doomed()) + deleted == report.objects_doomed
    delete_doomed(store)
    assert bucket(store) == referenced(store.metadata)
    # Appends go on after the swap and reopening reads the same.
    handles[0].append([b"after"])
    store.flush()
    before[handles[0].id].append((handles[0].next_offset - 1, Record(b"after")))
    store.close()
    again = open_store()
    for stream_id, expected in before.items():
        found = everything(again.open_stream(stream_id, read_only=True))
        assert [(o, r.value, r.key, r.headers) for o, r in found] == [
            (o, r.value, r.key, r.headers) for o, r in expected]


def test_trimmed_and_destroyed_data_leaves_the_bucket(open_store: Any) -> None:
    store = open_store(compaction_object_bytes="1MiB")
    handles = write_rounds(store, streams=3, rounds=8)
    handles[1].trim(handles[1].next_offset)
    store.destroy_stream(handles[2].id)
    kept = everything(handles[0])
    store.compact()  # marks what holds nothing readable, merges the rest
    delete_doomed(store)
    live = store.metadata.live_objects(limit=10_000)
    assert {r.stream_id for o in live for r in o.ranges} <= {handles[0].id, handles[1].id}
    assert bucket(store) == referenced(store.metadata)
    assert everything(handles[0]) == kept
    assert everything(handles[1]) == []
    stats = store.stats()["lifecycle"]
    assert isinstance(stats, dict)
    assert stats["deletion"]["deleted"] >= 8 and stats["passes"] >= 2  # type: ignore[index]


def test_a_slow_reader_crosses_a_compaction_and_a_deletion(open_store: Any) -> None:
    store = open_store()
    handles = write_rounds(store, streams=2, rounds=10)
    expected = everything(handles[0])
    reader = store.open_stream(handles[0].id, read_only=True)
    found: list[tuple[int, Record]] = []
    batches = reader.read(0, max_bytes=2 * KiB)
    for batch in batches:
        found.extend(enumerate(batch.records(), batch.base_offset))
        if len(found) >= len(expected) // 3:
            break
    store.compact()
    delete_doomed(store)  # the objects the reader had resolved are deleted now
    for batch in batches:
        found.extend(enumerate(batch.records(), batch.base_offset))
        if found[-1][0] >= expected[-1][0]:
            break
    batches.close()
    assert found == expected


def test_two_compactions_of_the_same_inputs_one_wins(open_store: Any) -> None:
    store = open_store()
    write_rounds(store, streams=3, rounds=6)
    meta = store.metadata
    live = meta.live_objects(limit=10_000)
    streams = {s.id: s for s in meta.streams()}
    stores = {"": store.objects}
    first = Compactor(meta=meta, stores=stores, config=store.config)
    second = Compactor(meta=meta, stores=stores, config=store.config)
    tasks = first.plan(live, streams)
    assert tasks == second.plan(live, streams) and tasks
    won = first.run_task(tasks[0], CompactionReport())
    with pytest.raises(CompactionConflict):
        second.run_task(tasks[0], CompactionReport())
    # The loser deleted its outputs: what is in the bucket is what the metadata names.
    assert bucket(store) == referenced(meta)
    assert {o.key for o in won} <= {o.key for o in meta.live_objects(limit=10_000)}
    check_coverage(meta)


def test_the_background_pass_runs_by_itself(open_store: Any) -> None:
    store = open_store(compaction_interval_ms=50, compaction_bytes_per_s=0)
    handles = write_rounds(store, streams=2, rounds=6)
    expected = everything(handles[0])

    def compacted() -> bool:
        stats = store.stats()["lifecycle"]
        return stats["compaction"]["objects_written"] >= 1  # type: ignore[index,no-any-return]

    wait_for(compacted, timeout=60, what="a background compaction")
    assert everything(handles[0]) == expected


def test_a_stream_object_run_merges_into_one(open_store: Any) -> None:
    store = open_store(stream_object_bytes=1024)  # every stream's round: a stream object
    stream = store.create_stream("big")
    for r in range(6):
        stream.append([Record(bytes([r]) * 20_000)])
        store.flush()
    before = everything(stream)
    report = store.compact()
    assert report.objects_read == 6 and report.objects_written == 1
    (merged,) = store.metadata.live_objects(limit=100)
    assert merged.key.endswith(".sobj") and merged.ranges[0].start_offset == 0
    assert everything(stream) == before


def test_with_an_archive_tier_compaction_writes_there_and_readers_follow(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    settings: dict[str, Any] = {"upload_interval_ms": 3_600_000, "block_bytes": 16 * KiB,
                                "compaction_interval_ms": 0, "delete_grace_ms": 0,
                                "retry_timeout_ms": 0, "compaction_object_bytes": "1MiB",
                                "archive_url": f"file://{archive}"}
    with streamlib.open(tmp_path / "data", **settings) as store:
        handles = write_rounds(store, streams=3, rounds=6)
        before = {s.id: everything(s) for s in handles}
        report = store.compact()
        assert report.objects_written >= 1
        live = store.metadata.live_objects(limit=1000)
        outputs = {o.key for o in live if o.key.startswith("data/compacted/")}
        assert len(outputs) == report.objects_written
        assert {o.tier for o in live if o.key in outputs} == {"archive"}
        assert {o.tier for o in live if o.key not in outputs} <= {""}
        archived = {str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file()}
        assert archived == outputs
        # The inputs, doomed, are deleted from the objects store (no grace period here).
        assert bucket(store) == {o.key for o in live if o.tier == ""}
        assert {s.id: everything(s) for s in handles} == before
        store.compact()  # the pass that counts objects by tier
        counts = store.stats()["lifecycle"]["objects"]  # type: ignore[index]
        assert counts["archive"]["objects"] == len(outputs)
        assert store.collect_garbage().garbage == []
    with streamlib.open(tmp_path / "data", **settings) as store:  # reopened: reads the archive
        for stream_id, expected in before.items():
            assert everything(store.open_stream(stream_id, read_only=True)) == expected
    without = {k: v for k, v in settings.items() if k != "archive_url"}
    with streamlib.open(tmp_path / "data", **without) as store:
        stream = store.open_stream(next(iter(before)), read_only=True)
        with pytest.raises(streamlib.ConfigError, match="archive_url"):
            stream.fetch(0)
