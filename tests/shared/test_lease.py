"""The owner's lease (``lease_ms``, docs/shared-stores.md "Acknowledging without a look"):
within its lease a node acknowledges durable appends without a look at the metadata; a
take-over waits the lease out, so that an append the fenced node makes durable after the
taker read its WAL is never acknowledged. Gates hold the looks and the WAL's PUTs where the
races would happen, so each test runs the same way on a quiet or a loaded machine."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import fsspec
import pytest
from nodes import HELD, crash, durable, eventually_read, faulty_node, node, wait_for

import streamlib
from streamlib.errors import FencedError, OutcomeUnknown
from streamlib.io import ObjectStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.shared import lease
from streamlib.testing import FaultyMetadataStore
from streamlib.testing.faults import FaultyFileSystem

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

T = TypeVar("T")

QUIET = {"fence_poll_ms": 3_600_000, **HELD}
"""The fence thread looks only when an append waits for a look (no idle looks)."""


def test_within_its_lease_a_node_acknowledges_without_a_look(tmp_path: Path) -> None:
    a, faulty = faulty_node(tmp_path, "a", lease_ms=3_600_000, **QUIET)
    try:
        stream = a.create_stream("s")
        stream.append([b"first"])  # its look starts the lease
        looks = faulty.pause("refresh", times=None, thread="streamlib-fences")
        before = a.stats()["cost"]["manifest"]["gets"]  # type: ignore[index]
        for n in range(20):  # would wait forever for a look: every look is held
            stream.append([n.to_bytes(2, "big")], timeout=10)
        assert a.stats()["cost"]["manifest"]["gets"] == before  # type: ignore[index]
        assert not looks.wait_reached(1, 0)  # nothing even asked for a look
    finally:
        faulty.clear()
        a.close()


def test_past_its_lease_a_node_waits_for_a_look(tmp_path: Path) -> None:
    """With the lease over (the looks held since), an append is acknowledged only by a look
    that started after it was durable — as without a lease."""
    a, faulty = faulty_node(tmp_path, "a", lease_ms=200, **QUIET)
    try:
        stream = a.create_stream("s")
        stream.append([b"first"])
        look = faulty.pause("refresh", thread="streamlib-fences")
        time.sleep(0.25)  # the lease of the look above is over (a fact of the clock, no race)
        late = stream.append_future([b"late"])
        assert look.wait_reached(1, 10), "no look for the append past the lease"
        assert not late.done()
        look.release()
        assert late.result(timeout=10).base_offset == 1
    finally:
        faulty.clear()
        a.close()


def test_a_paused_owner_acknowledges_nothing_its_taker_did_not_read(tmp_path: Path) -> None:
    """A (lease 300 ms, a look every 20 ms) has X's WAL PUT held, and then its looks too (a
    process paused, or cut off from the metadata). C takes A over: it fences A, waits A's
    lease out, reads A's WAL (without X) and commits what it found. Then X's PUT lands: A
    must not acknowledge X — its lease is over, and only a look could tell it whether it is
    still the owner. Every append A did acknowledge is in the stream as C sees it."""
    bucket = f"memory://lease-{uuid.uuid4().hex}"  # one memory filesystem: both nodes see it
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    looks_of_a = FaultyMetadataStore(ManifestMetadataStore(
        ObjectStore(faulty, bucket.split("://")[1]), node_id="a"))
    leased = {"lease_ms": 300, "wal": "object", "metadata": "manifest", "objects_url": bucket,
             **HELD}
    a = streamlib.open(tmp_path / "node-a", node_id="a", filesystem=faulty,
                       metadata_store=looks_of_a, fence_poll_ms=20, **leased)
    c = streamlib.open(tmp_path / "node-c", node_id="c", **leased)
    gate = threading.Event()
    try:
        stream = a.create_stream("s")
        for n in range(5):
            stream.append([f"w{n}".encode()])
        faulty.inject("put", gate=gate, match=lambda path: "/wal/a/" in path)
        x: Future[streamlib.AppendResult] = stream.append_future([b"X"])
        looks = looks_of_a.pause("refresh", times=None, thread="streamlib-fences")
        assert looks.wait_reached(1, 10)
        started = time.monotonic()
        taken = c.take_over("a", wal="object")
        assert time.monotonic() - started >= 0.3  # the lease, waited out
        assert taken.records == 5
        gate.set()  # X lands in A's WAL now: after the taker read it
        wait_for(lambda: durable(stream, 1), what="X durable")
        assert not x.done(), "X was answered by a node past its lease, without a look"
        looks.release()  # A's next look finds itself taken over
        looks_of_a.clear()
        with pytest.raises((FencedError, OutcomeUnknown)):
            x.result(timeout=10)
        assert eventually_read(c, "s", 5) == [f"w{n}".encode() for n in range(5)]
    finally:
        gate.set()
        looks_of_a.clear()
        faulty.clear()
        a.close()
        c.close()


def opened_within(seconds: float, open_: Callable[[], T]) -> T:
    """``open_()``, which must return within ``seconds`` (far less than a lease it must not
    wait out, far more than it takes on a loaded machine)."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(open_)
        try:
            return future.result(timeout=seconds)
        except TimeoutError:
            raise AssertionError(f"still waiting after {seconds} s: a lease waited out") from None


def test_a_reopen_waits_out_the_lease_its_crashed_process_recorded(tmp_path: Path) -> None:
    """The lease to wait out is the one the fenced process recorded, not the opener's own."""
    a = node(tmp_path, "a", wal="object", lease_ms=400)
    a.create_stream("s").append([b"x"])
    crash(a)
    started = time.monotonic()
    again = node(tmp_path, "a", wal="object", lease_ms=0)
    try:
        assert time.monotonic() - started >= 0.4
        assert next(again.open_stream("s").fetch(0).records())[1].value == b"x"
    finally:
        again.close()


def test_after_a_clean_close_a_reopen_does_not_wait(tmp_path: Path) -> None:
    """A clean close records that its process acknowledges nothing more: the next process of
    the node opens at once, however long its lease."""
    hour = {"wal": "object", "lease_ms": 3_600_000}
    a = node(tmp_path, "a", **hour)
    a.create_stream("s").append([b"x"])
    a.close()
    again = opened_within(60, lambda: node(tmp_path, "a", **hour))
    try:
        assert next(again.open_stream("s").fetch(0).records())[1].value == b"x"
    finally:
        again.close()


def test_a_take_over_waits_out_the_lease_the_dead_node_recorded(tmp_path: Path) -> None:
    a = node(tmp_path, "a", wal="object", lease_ms=400)
    c = node(tmp_path, "c", lease_ms=0)
    try:
        a.create_stream("s").append([b"x"])
        crash(a)
        started = time.monotonic()
        assert c.take_over("a", wal="object").records == 1
        assert time.monotonic() - started >= 0.4
    finally:
        c.close()


def test_a_process_fenced_before_it_recorded_its_lease_opens_nothing(tmp_path: Path) -> None:
    """The record is fenced by the node epoch: a process whose node another process registered
    since cannot record a lease (and so cannot shorten the wait of whoever fenced it)."""
    a = node(tmp_path, "a", wal="object", lease_ms=400)
    try:
        with pytest.raises(FencedError):
            lease.record(a.metadata, "a", a.node_epoch - 1, 0)
        assert lease.recorded(a.metadata, "a", 0) == 400
    finally:
        a.close()
    meta = ManifestMetadataStore(ObjectStore.from_url(f"file://{tmp_path / 'bucket'}"),
                                 node_id="reader")
    try:
        assert lease.recorded(meta, "a", 7) == 0  # closed cleanly: nothing to wait out
    finally:
        meta.close()
