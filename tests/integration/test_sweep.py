"""The garbage-collecting sweep (docs/lifecycle.md, "Garbage collection"): what no metadata
references and is older than the grace period goes, by the store's clock; what is referenced,
or young (an upload may be about to commit it), stays; object-WAL objects below their node's
trim position go; a dry run deletes nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

import streamlib
from streamlib import Record, StreamStore
from streamlib.lifecycle.sweep import GarbageReport

# Listings and deletions: the codec plays no part (the C pass runs it).
pytestmark = pytest.mark.once

SETTINGS: dict[str, Any] = {"upload_interval_ms": 3_600_000, "compaction_interval_ms": 0,
                            "retry_timeout_ms": 0}


def filled(tmp_path: Path, **extra: Any) -> StreamStore:
    store = streamlib.open(tmp_path / "data", **{**SETTINGS, **extra})
    stream = store.create_stream("s")
    for i in range(3):
        stream.append([Record(b"v" * 100, key=str(i).encode())])
        store.flush()
    return store


def age(store: StreamStore, key: str, seconds: float) -> None:
    """Make a local object look ``seconds`` old (its listed modification time)."""
    path = Path(store.objects.root) / key
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_orphans_older_than_the_grace_period_go_and_nothing_else(tmp_path: Path) -> None:
    with filled(tmp_path, delete_grace_ms=600_000) as store:
        referenced = {o.key for o in store.metadata.live_objects()}
        store.objects.put("data/0/1/000000000099-dead.mobj", b"x" * 10)  # a crashed round
        store.objects.put("data/compacted/0000000000001-dead.mobj", b"y" * 20)
        store.objects.put("data/0/1/000000000100-young.mobj", b"z")
        for key in ("data/0/1/000000000099-dead.mobj", "data/compacted/0000000000001-dead.mobj",
                    *referenced):
            age(store, key, 700)
        dry = store.collect_garbage(dry_run=True)
        assert isinstance(dry, GarbageReport) and dry.dry_run
        assert sorted((g.key, g.size, g.reason) for g in dry.garbage) == [
            ("data/0/1/000000000099-dead.mobj", 10, "orphan"),
            ("data/compacted/0000000000001-dead.mobj", 20, "orphan")]
        assert dry.young == 1 and dry.bytes == 30
        assert store.objects.exists("data/0/1/000000000099-dead.mobj")  # a dry run deletes none
        done = store.collect_garbage()
        assert [g.key for g in done.garbage] == [g.key for g in dry.garbage]
        keys = {info.key for info in store.objects.list("data/")}
        assert keys == referenced | {"data/0/1/000000000100-young.mobj"}
        stats = store.stats()["lifecycle"]
        assert stats["gc_deleted"] == 2 and stats["gc_deleted_bytes"] == 30  # type: ignore[index]
        # Everything still reads.
        stream = store.open_stream("s", read_only=True)
        assert [r.key for b in stream.fetch(0) for r in b.records()] == [b"0", b"1", b"2"]


def test_doomed_objects_are_not_orphans(tmp_path: Path) -> None:
    with filled(tmp_path, delete_grace_ms=600_000) as store:
        stream = store.open_stream("s")
        stream.trim(stream.next_offset)
        store.compact()  # marks every object doomed; the grace period keeps them
        doomed = {d.key for d in store.metadata.doomed()}
        assert len(doomed) == 3
        for key in doomed:
            age(store, key, 700)
        assert store.collect_garbage().garbage == []
        assert {info.key for info in store.objects.list("data/")} == doomed


def test_the_sweep_uses_the_stores_clock_on_s3(tmp_path: Path, moto_s3: Any) -> None:
    bucket = moto_s3.create_bucket()
    try:
        with filled(tmp_path, objects_url=f"s3://{bucket}/x", delete_grace_ms=0,
                    storage_options=moto_s3.storage_options()) as store:
            referenced = {o.key for o in store.metadata.live_objects()}
            store.objects.put("data/0/1/000000000099-dead.mobj", b"orphan")
            # S3's times have whole seconds: past the next second, it is older than a grace of 0.
            server = store.objects.server_time()
            while store.objects.server_time() < server + 1.5:
                time.sleep(0.1)
            report = store.collect_garbage()
            assert [g.key for g in report.garbage] == ["data/0/1/000000000099-dead.mobj"]
            assert {info.key for info in store.objects.list("data/")} == referenced
    finally:
        moto_s3.delete_bucket(bucket)


def test_object_wal_leftovers_below_the_trim_position_go(tmp_path: Path) -> None:
    with filled(tmp_path, delete_grace_ms=600_000) as store:
        objects = store.objects

        def wal_key(epoch: int, start: int, end: int) -> str:
            return f"wal/dead-node/{epoch:020d}/{start:020d}-{end:020d}-{start:020d}.wal"

        below, above = wal_key(1, 0, 100), wal_key(2, 100, 200)
        marker = f"wal/dead-node/{2:020d}/OPEN"
        for key in (below, above, marker):
            objects.put(key, b"w")
        objects.put("wal/dead-node/TRIM", b"150")
        report = store.collect_garbage()
        assert [(g.key, g.reason) for g in report.garbage] == [(below, "wal")]
        assert {i.key for i in objects.list("wal/dead-node/")} == {
            above, marker, "wal/dead-node/TRIM"}


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_closed_store_refuses_a_sweep(tmp_path: Path, dry_run: bool) -> None:
    store = filled(tmp_path)
    store.close()
    with pytest.raises(streamlib.StreamClosed):
        store.collect_garbage(dry_run=dry_run)
