"""Races of an append with the hand-over of its stream, with and without the owner's lease
(docs/shared-stores.md, "Hand-over" and "Acknowledging without a look"). Gates hold the WAL's
PUTs and count the looks at the metadata, so that each test drives one interleaving, the same on
a quiet or a loaded machine."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import Future
from pathlib import Path

import fsspec
import pytest
from nodes import HELD, eventually_read, faulty_node, looks, node, wait_for
from waits import blocked_in

import streamlib
from streamlib.errors import FencedError
from streamlib.io import ObjectStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing import FaultyMetadataStore
from streamlib.testing.faults import FaultyFileSystem
from streamlib.wal._admission import Admission

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

MiB = 1 << 20


@pytest.mark.parametrize("lease_ms", [0, 60_000], ids=["no-lease", "lease"])
def test_an_append_past_its_fence_check_when_the_stream_is_fenced_is_answered(
        tmp_path: Path, lease_ms: int) -> None:
    """X, on A's stream s, has passed the check that refuses appends of a fenced stream and
    waits for room in A's object WAL (a large append of another stream fills it, its PUT held)
    when B opens s and A's fence thread fences s. X reaches the WAL only afterwards: A must not
    release s before X is settled (else X, parked after the release, is never answered), and X
    must never show."""
    bucket = f"memory://races-{uuid.uuid4().hex}"  # one memory filesystem: both nodes see it
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    meta_a = FaultyMetadataStore(ManifestMetadataStore(
        ObjectStore(faulty, bucket.split("://")[1]), node_id="a"))
    # wal_bytes at its least: the object WAL holds at most 4 MiB of PUTs not done.
    options = {"metadata": "manifest", "wal": "object", "objects_url": bucket,
               "lease_ms": lease_ms, "wal_bytes": "256KiB", "fence_poll_ms": 20, **HELD}
    a = streamlib.open(tmp_path / "node-a", node_id="a", filesystem=faulty,
                       metadata_store=meta_a, **options)
    b = streamlib.open(tmp_path / "node-b", node_id="b", **options)
    puts = threading.Event()
    x: list[Future[streamlib.AppendResult]] = []
    try:
        s = a.create_stream("s")
        s.append([b"w0"])
        a.flush()  # nothing of s left to commit: a fence releases it at once
        faulty.inject("put", gate=puts, times=None,
                      match=lambda path: "/wal/a/" in path and path.endswith(".wal"))
        big = a.create_stream("t").append_future([bytes(4 * MiB)])  # the WAL is full now
        appender = threading.Thread(target=lambda: x.append(s.append_future([b"X"])))
        appender.start()
        wait_for(lambda: blocked_in(appender, Admission.wait), what="X to wait for room")
        taken = b.open_stream("s")
        counted = looks(meta_a)
        # Two looks of A's fence thread that started after the open: the first, its scan and
        # what its round did for the streams it fenced (a release) are done.
        wait_for(lambda: counted.hits >= 2, timeout=30, what="two looks of A")
        puts.set()  # the large append's PUT, then X's
        appender.join(timeout=30)
        assert x, "X was not submitted"
        big.result(timeout=30)
        with pytest.raises(FencedError):
            x[0].result(timeout=30)
        taken.append([b"new"], timeout=30)  # after A's release
        wait_for(lambda: b.get("s").next_offset >= 2, timeout=30, what="B to see its append")
        got = [r.value for batch in b.open_stream("s", read_only=True).fetch(0) for r in
               batch.records()]
        assert got == [b"w0", b"new"]
    finally:
        puts.set()
        faulty.clear()
        meta_a.clear()
        a.close()
        b.close()


def test_within_its_lease_an_owner_acknowledges_an_append_durable_after_the_hand_over(
        tmp_path: Path) -> None:
    """B opens A's stream while every look of A's fence thread is held: X, made durable by A
    afterwards, is acknowledged within A's lease without a look. A's release, once a look
    shows the hand-over, comes after X is committed: B's first record follows X."""
    a, meta_a = faulty_node(tmp_path, "a", lease_ms=3_600_000, fence_poll_ms=20, **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        stream = a.create_stream("s")
        stream.append([b"w0"])  # its look starts the lease
        held = meta_a.pause("refresh", times=None, thread="streamlib-fences")
        taken = b.open_stream("s")
        assert held.wait_reached(1, 30)  # A's looks wait there from now on
        assert stream.append([b"X"], timeout=30).base_offset == 1  # no look: within the lease
        held.release()  # A's next look fences s: X is committed, then s released
        assert taken.append([b"new"], timeout=30).base_offset == 2
        assert eventually_read(b, "s", 3) == [b"w0", b"X", b"new"]
    finally:
        meta_a.clear()
        a.close()
        b.close()
