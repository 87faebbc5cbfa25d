"""Compaction on a shared manifest (docs/lifecycle.md): a reader on another node crosses a
compaction and the deletion of the objects it had resolved without a gap or an error; two
nodes compacting at once: one swap wins, the other's outputs leave the bucket."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from lifecycle_checks import bucket, referenced
from nodes import node

from streamlib import Record, StreamStore

# Nodes on one bucket: the codec's part is tested by test_compaction (the C pass runs it).
pytestmark = pytest.mark.once

KiB = 1024
LIFECYCLE = {"upload_interval_ms": 3_600_000, "upload_bytes": "1GiB", "block_bytes": 4 * KiB,
             "compaction_interval_ms": 0, "delete_grace_ms": 0, "retry_timeout_ms": 0,
             "readahead_bytes": 0, "compaction_object_bytes": "1MiB"}


def rounds(store: StreamStore, name: str, count: int) -> list[Record]:
    stream = store.create_stream(name)
    written = []
    for r in range(count):
        batch = [Record(f"{name}-{r}-{i}".encode() * 40, key=f"k{i}".encode(),
                        timestamp=1_000 + r) for i in range(12)]
        stream.append(batch)
        written += batch
        store.flush()
    return written


def test_a_reader_on_another_node_crosses_a_compaction_and_a_deletion(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamlib.read")
    with node(tmp_path, "a", **LIFECYCLE) as a, node(tmp_path, "b", **LIFECYCLE) as b:
        written = rounds(a, "s", 10)
        stream = b.open_stream("s", read_only=True)
        found: list[Record] = []
        batches = stream.read(0, max_bytes=1 * KiB)
        for batch in batches:
            found += batch.records()
            if len(found) >= len(written) // 3:
                break
        report = a.compact()
        assert report.objects_read == 10 and report.objects_written >= 1
        a.compact()  # no grace period here: the old objects are deleted now
        assert a.metadata.doomed() == []
        for batch in batches:
            found += batch.records()
            if len(found) >= len(written):
                break
        batches.close()
        assert [(r.value, r.key) for r in found] == [(r.value, r.key) for r in written]
        # It did find an object gone, and went on from the replacement.
        assert any("an object was gone" in r.getMessage() for r in caplog.records)


def test_two_nodes_compacting_at_once_leave_one_set_of_objects(tmp_path: Path) -> None:
    with node(tmp_path, "a", **LIFECYCLE) as a, node(tmp_path, "b", **LIFECYCLE) as b:
        written = {name: rounds(a, name, 6) for name in ("x", "y")}
        b.metadata.refresh()
        start = threading.Barrier(2)
        reports = {}

        def compact(name: str, store: StreamStore) -> None:
            start.wait()
            reports[name] = store.compact()

        threads = [threading.Thread(target=compact, args=item)
                   for item in (("a", a), ("b", b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Each planned the same inputs: per task, one swap won and the other was refused
        # (unless one finished before the other planned: then it found nothing to do).
        assert sum(r.objects_read for r in reports.values()) == 12
        a.compact()  # deletes what the swaps doomed (no grace period)
        a.metadata.refresh()
        assert bucket(a) == referenced(a.metadata)
        for store in (a, b):
            store.metadata.refresh()
            for name, expected in written.items():
                stream = store.open_stream(name, read_only=True)
                got: list[Record] = []
                offset = 0
                while offset < stream.next_offset:
                    result = stream.fetch(offset)
                    for batch in result:
                        got += batch.records()
                    offset = result.next_fetch_offset
                assert [r.value for r in got] == [r.value for r in expected]
