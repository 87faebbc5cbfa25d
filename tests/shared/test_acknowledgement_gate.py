"""The acknowledgement gate of a shared store (docs/shared-stores.md): an append is acknowledged
only after a look at the metadata that began after it was durable, and a look that failed
counts for nothing. The tests hold the fence thread's look where the race would happen (a
FaultyMetadataStore gate), so each runs the same way on a quiet or a loaded machine."""

from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from nodes import HELD, durable, eventually_read, faulty_node, node, wait_for

import streamlib
from streamlib.cache import MessageCache
from streamlib.config import Config
from streamlib.errors import FencedError, StorageUnavailable
from streamlib.io import ObjectStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.node import Backlog, Node
from streamlib.records import RecordBatch
from streamlib.shared.fencing import SharedCoordination
from streamlib.state import Inflight, StreamState
from streamlib.testing import FaultyMetadataStore
from streamlib.testing.faults import Gate
from streamlib.wal import Ticket

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

QUIET = {"fence_poll_ms": 3_600_000, "lease_ms": 0, **HELD}
"""The fence thread looks only when an append waits for a look (no idle looks); no lease (every
acknowledgement waits for a look: the gate these tests are about; test_lease.py has the lease)."""


def append_w_with_its_look_held(a: streamlib.StreamStore, faulty: FaultyMetadataStore, *,
                                after_reading: bool) -> tuple[streamlib.Stream, Gate,
                                                              Future[streamlib.AppendResult]]:
    """A stream of A with one acknowledged record, then an append W whose look at the metadata
    (the first after W is durable: A makes no idle looks) is held — before it reads, or once
    it has read (``after_reading``). Returns the handle, the gate and W's future."""
    old = a.create_stream("s")
    old.append([b"before"])
    look = faulty.pause("refresh", after=after_reading, thread="streamlib-fences")
    w = old.append_future([b"W"])
    assert look.wait_reached(1, 10), "the look for W never came"
    return old, look, w


def test_an_append_durable_after_a_look_began_is_not_acknowledged_by_it(
        tmp_path: Path) -> None:
    """A's look for W has read the metadata (no hand-over yet) and is held there; B opens the
    stream; A's append X becomes durable. The held look acknowledges W only: X waits for the
    next look, which finds the hand-over, so X is refused (FencedError) and never shows."""
    a, faulty = faulty_node(tmp_path, "a", **QUIET)
    b = node(tmp_path, "b", **HELD)
    try:
        old, look, w = append_w_with_its_look_held(a, faulty, after_reading=True)
        b.open_stream("s")  # the hand-over, after the look read the metadata
        x = old.append_future([b"X"])  # A has not seen it: X goes to the WAL
        wait_for(lambda: durable(old, 2), what="X durable")
        look.release()
        assert w.result(timeout=10).base_offset == 1
        with pytest.raises(FencedError):
            x.result(timeout=10)
        assert eventually_read(b, "s", 2) == [b"before", b"W"]
    finally:
        faulty.clear()
        a.close()
        b.close()


def test_an_append_acknowledged_by_a_node_being_taken_over_is_kept_by_the_taker(
        tmp_path: Path) -> None:
    """The same race with a take-over: while A's look for W is held, C takes A over and
    commits what A's object WAL holds; X then becomes durable in A's old WAL epoch, which no
    recovery will read again. X must not be acknowledged by the held look (it would be lost);
    an acknowledged append of A is in the stream as C sees it."""
    a, faulty = faulty_node(tmp_path, "a", wal="object", **QUIET)
    c = node(tmp_path, "c", wal="object", **HELD)
    try:
        old, look, w = append_w_with_its_look_held(a, faulty, after_reading=True)
        c.take_over("a", wal="object")  # recovers W (durable), commits it, releases s
        x = old.append_future([b"X"])
        wait_for(lambda: durable(old, 2), what="X durable")
        look.release()
        acknowledged = [f for f in (w, x) if _acknowledged(f)]
        got = eventually_read(c, "s", 2)
        assert w in acknowledged and x not in acknowledged
        assert got == [b"before", b"W"]
    finally:
        faulty.clear()
        a.close()
        c.close()


def test_an_append_refused_by_a_node_taken_over_never_shows(tmp_path: Path) -> None:
    """W is durable in A's object WAL and A's look for it is held before reading the metadata;
    C takes A over and commits W. A's look then finds itself taken over: W may be in the
    stream (the taker kept it), so A must not answer it with FencedError (an append refused
    is never visible) — it gets OutcomeUnknown, or an acknowledgement."""
    a, faulty = faulty_node(tmp_path, "a", wal="object", **QUIET)
    c = node(tmp_path, "c", wal="object", **HELD)
    try:
        _, look, w = append_w_with_its_look_held(a, faulty, after_reading=False)
        c.take_over("a", wal="object")  # recovers W, commits it
        look.release()  # A's look now finds itself taken over
        with contextlib.suppress(Exception):
            w.result(timeout=10)
        got = eventually_read(c, "s", 2)
        assert got == [b"before", b"W"]
        assert not isinstance(w.exception(timeout=0), FencedError), (
            "W was answered with FencedError and is visible")
    finally:
        faulty.clear()
        a.close()
        c.close()


def _acknowledged(future: Future[object]) -> bool:
    try:
        future.result(timeout=10)
    except Exception:
        return False
    return True


# ---- a failed look ----

def test_a_look_that_failed_serves_no_one(tmp_path: Path) -> None:
    """The coordination alone, on a clock the test moves: a look that began at 5 is held and
    then fails; a caller that asked for a look at 3 must not take the failed one for a look
    that began after it asked — it looks itself (its own refresh of the metadata)."""
    now = [5.0]
    meta = FaultyMetadataStore(ManifestMetadataStore(
        ObjectStore.from_url(f"memory://gate-{tmp_path.name}"), node_id="a"))
    registered = meta.register_node("a")
    config = Config(path=str(tmp_path), lease_ms=0)
    node_ = Node(node_id="a", node_epoch=registered.node_epoch, config=config, meta=meta,
                 cache=MessageCache(1 << 20), scope="gate", objects_url="memory://",
                 backlog=Backlog(1 << 20, 1.0), clock=lambda: now[0])
    coordination = SharedCoordination(node_)
    state = StreamState(meta.create_stream("s"))
    done = Ticket()
    done.position = 0  # durable at position 0
    state.inflight.append(Inflight(RecordBatch(b"x", count=1).with_offset(0), done, now[0]))
    failing = Gate()  # the first caller's look: held, then it fails
    meta.inject("refresh", StorageUnavailable, thread="first", gate=failing)
    first_error: list[BaseException] = []

    def first() -> None:
        try:
            coordination.look([state])
        except BaseException as error:
            first_error.append(error)

    looker = threading.Thread(target=first, name="first")
    looker.start()
    assert failing.wait_reached(1, 10)
    now[0] = 3.0  # the second caller asks "before" the held look began
    answers: list[float | None] = []
    second = threading.Thread(target=lambda: answers.append(coordination.look([state])),
                              name="second")
    own = meta.inject("refresh", thread="second", times=None)  # counts its own looks
    second.start()
    failing.release()
    looker.join(10)
    second.join(10)
    assert first_error and isinstance(first_error[0], StorageUnavailable)
    assert own.hits == 1, "the second caller took a failed look for its own"
    assert answers and answers[0] is not None and not math.isinf(answers[0])
