"""Opens for write of different streams on one node reach a shared manifest together (they
share ``Node.changes``; docs/shared-stores.md, "Group commit"), while a commit still waits for
them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nodes import HELD, faulty_node, node

pytestmark = pytest.mark.once  # the hand-over protocol, not the codec: the C pass runs it


def test_opens_of_two_streams_reach_the_metadata_at_once(tmp_path: Path) -> None:
    writer = node(tmp_path, "w")
    for name in ("s1", "s2"):
        writer.create_stream(name)
    writer.close()
    a, faulty = faulty_node(tmp_path, "a", **HELD)
    try:
        first = faulty.pause("open_stream")
        second = faulty.pause("open_stream")
        with ThreadPoolExecutor(2) as pool:
            one = pool.submit(a.open_stream, "s1")
            assert first.wait_reached(1, 10)  # s1's open is at the metadata, held there
            two = pool.submit(a.open_stream, "s2")
            assert second.wait_reached(1, 10), "s2's open waited for s1's"
            flush = pool.submit(a.flush)  # a commit waits for the opens under way
            first.release()
            second.release()
            one.result(timeout=10).append([b"x"])
            two.result(timeout=10).append([b"y"])
            flush.result(timeout=10)
    finally:
        faulty.clear()
        a.close()


def test_creates_from_many_threads_share_deltas(tmp_path: Path) -> None:
    """200 creates (each a create and an open, queued together) from 8 threads: fewer
    manifest PUTs than creates — some of them share a delta (with 8 threads at it, some
    always overlap)."""
    store = node(tmp_path, "a", **HELD)
    try:
        store.create_stream("warm-up")
        before = store.stats()["cost"]["manifest"]["puts"]  # type: ignore[index]
        with ThreadPoolExecutor(8) as pool:
            handles = list(pool.map(lambda n: store.create_stream(f"s{n}"), range(200)))
        puts = store.stats()["cost"]["manifest"]["puts"] - before  # type: ignore[index]
        assert len({h.id for h in handles}) == 200
        assert puts < 200, puts  # one PUT each without groups
    finally:
        store.close()


def test_a_create_stream_is_one_change_of_the_manifest(tmp_path: Path) -> None:
    """``create_stream`` creates and opens the stream in one delta (one PUT, or two where a
    checkpoint falls): 20 creates one after the other, fewer than 40 PUTs — a create and an
    open written apart would take 40."""
    store = node(tmp_path, "a", **HELD)
    try:
        store.create_stream("warm-up")
        before = store.stats()["cost"]["manifest"]["puts"]  # type: ignore[index]
        handles = [store.create_stream(f"s{n}") for n in range(20)]
        puts = store.stats()["cost"]["manifest"]["puts"] - before  # type: ignore[index]
        assert puts < 40, puts
        assert all(store.get(h.id).epoch == 1 for h in handles)  # opened, once
        handles[0].append([b"x"])  # and written with the epoch the create gave
    finally:
        store.close()

