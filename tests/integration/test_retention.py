"""Retention (docs/lifecycle.md, "Retention"): kept in the metadata with the stream, applied by
the lifecycle pass as trims at block granularity: by age, every record younger than the limit
stays and the objects fully older go; by size, what stays is within one block of the limit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import streamlib
from streamlib import Record, Retention, StreamStore

KiB = 1024
SETTINGS: dict[str, Any] = {"upload_interval_ms": 3_600_000, "block_bytes": 4 * KiB,
                            "compaction_interval_ms": 0, "delete_grace_ms": 0,
                            "retry_timeout_ms": 0, "compression": "none"}


def open_store(tmp_path: Path, **extra: Any) -> StreamStore:
    return streamlib.open(tmp_path / "data", **{**SETTINGS, **extra})


def stored(store: StreamStore, stream_id: int) -> int:
    return sum(o.range.size for o in store.metadata.stream_objects(stream_id, 0)
               if o.range.end_offset > store.metadata.get_stream(stream_id).start_offset)


def test_retention_is_kept_with_the_stream(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        stream = store.create_stream("a", retention=Retention(max_age=3600))
        assert stream.retention == Retention(max_age=3600)
        stream.set_retention(Retention(max_bytes=10 * KiB))
        plain = store.create_stream("b")
        assert plain.retention is None
        with pytest.raises(TypeError, match="Retention"):
            plain.set_retention(3600)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_age"):
            Retention(max_age=-1)
        with pytest.raises(streamlib.ReadOnlyError):
            store.open_stream("b", read_only=True).set_retention(None)
    with open_store(tmp_path) as store:
        assert store.open_stream("a").retention == Retention(max_bytes=10 * KiB)
        stream = store.open_stream("a")
        stream.set_retention(None)
        assert stream.retention is None


def test_retention_by_age_keeps_what_is_younger_and_drops_older_objects(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        stream = store.create_stream("events")
        now = int(time.time() * 1000)
        hour = 3_600_000
        for age_hours in (10, 9, 8, 3, 2, 1):  # one upload round (object) each
            stream.append([Record(b"x" * 500, timestamp=now - age_hours * hour + i)
                           for i in range(20)])
            store.flush()
        young = stream.offset_for_timestamp(now - 5 * hour)
        assert young == 60
        stream.set_retention(Retention(max_age=5 * 3600))
        store.compact()  # the pass: retention trims, the trimmed objects are marked, deleted
        assert stream.start_offset == young  # every record younger than 5 h kept, no more
        first = next(r for b in stream.fetch(stream.start_offset) for r in b.records())
        assert first.timestamp is not None and first.timestamp >= now - 5 * hour
        stats = store.stats()["lifecycle"]
        assert stats["retention_trims"] == 1  # type: ignore[index]
        store.compact()
        live = store.metadata.live_objects(limit=100)
        assert all(r.end_offset > young for o in live for r in o.ranges)
        assert len(store.objects.list("data/")) == len(live)


def test_retention_by_size_stays_within_one_block(tmp_path: Path) -> None:
    with open_store(tmp_path, compaction_object_bytes="1MiB") as store:
        stream = store.create_stream("sized", retention=Retention(max_bytes=40 * KiB))
        for _ in range(10):
            stream.append([Record(b"y" * 1000) for _ in range(20)])  # ~20 KiB: 5 blocks
            store.flush()
        store.compact()
        kept = stored(store, stream.id)
        assert 40 * KiB - 5 * KiB <= kept <= 40 * KiB, kept
        assert stream.start_offset > 0
        values = [r.value for b in stream.fetch(stream.start_offset, max_bytes=1 << 30)
                  for r in b.records()]
        assert len(values) >= stream.next_offset - stream.start_offset


def test_the_store_default_applies_to_streams_without_their_own(tmp_path: Path) -> None:
    with open_store(tmp_path, retention_max_bytes=8 * KiB) as store:
        default = store.create_stream("default")
        own = store.create_stream("own", retention=Retention(max_age=10 * 365 * 86400))
        for _ in range(6):
            for stream in (default, own):
                stream.append([Record(b"z" * 1000) for _ in range(10)])
            store.flush()
        store.compact()
        assert default.start_offset > 0 and stored(store, default.id) <= 8 * KiB
        assert own.start_offset == 0  # its own retention keeps 10 years


def test_data_not_yet_uploaded_is_never_trimmed_by_retention(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        stream = store.create_stream("wal", retention=Retention(max_age=1))
        old = int(time.time() * 1000) - 3_600_000
        stream.append([Record(b"old", timestamp=old)])  # in the WAL only
        store.compact()
        assert stream.start_offset == 0
        assert [r.value for b in stream.fetch(0) for r in b.records()] == [b"old"]
        store.flush()
        store.compact()
        assert stream.start_offset == 1
