"""Regression tests from a third review of the hand-over and fencing protocol between nodes
sharing one bucket (after tests/shared/test_review_handover.py). Each docstring says the
sequence and what goes wrong."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from nodes import HELD, flush_outcome, node, values, wait_for

import streamlib
from streamlib.errors import FencedError, HandOverPending

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once

def fresh_values(store: streamlib.StreamStore, name: str, count: int) -> list[bytes]:
    """What ``store`` reads of ``name`` once it has ``count`` records, or after 2 s."""
    with contextlib.suppress(AssertionError):
        wait_for(lambda: store.get(name).next_offset >= count, timeout=2.0)
    return values(store.open_stream(name, read_only=True))


# ---- the new owner re-opens the stream after the old owner released it ----

def test_the_new_owner_reopening_after_the_release_appends_after_the_old_owners_tail(
        tmp_path: Path) -> None:
    """A acknowledged a1 (committed) and a2 (not committed yet). B opens s: B's ends are the
    committed end, 1, and B waits for A's release. A commits a2 and releases. B opens s again
    before any sync or append of B adopted A's last commit: the open clears
    ``state.handover_from`` (the manifest shows no hand-over any more) but, as the stream is
    ``written_here`` and was not handed away, keeps B's stale ends. B's next append does not
    wait for (nor adopt) anything and takes offset 1 — the offset of A's a2. The append is
    acknowledged; its commit can never apply (CommitConflict: the range does not start at the
    committed end 2): acknowledged data never committed, B's uploads wedged."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD, append_timeout_ms=3000)
    try:
        old = a.create_stream("s")
        old.append([b"a1"])
        a.flush()
        old.append([b"a2"])  # acknowledged, in A's log only
        state = old._state
        b.open_stream("s")  # hand-over from A; B's ends: 1
        wait_for(lambda: state.released, what="A to commit a2 and release s")
        again = b.open_stream("s")  # B opens it again (no sync of B ran meanwhile)
        result = again.append([b"b1"])
        flushed = flush_outcome(b)
        got = fresh_values(a, "s", 3)
        assert (result.base_offset, flushed, got) == (2, "ok", [b"a1", b"a2", b"b1"])
    finally:
        a.close()
        b.close()


# ---- the fence thread scans while this node opens the stream again ----

def test_a_fence_seen_while_the_old_owner_reopens_keeps_its_acknowledged_offsets(
        tmp_path: Path) -> None:
    """A acknowledged a1 (not committed). B opens s (a hand-over from A). A opens s again; its
    open passed the wait for a release (A has not seen the fence yet) and is on its way to the
    manifest when A's fence thread looks: it reads the version with B's open and, A's state
    still having its old epoch, fences s. A's open then lands (A is ``handover_from``: its time
    as owner goes on, its a1 stays its to commit), but ``_open_state`` takes the fence for a
    finished hand-over (``handed_away``) and resets the ends to the committed end 0: A's next
    append a2 gets offset 0 again, over a1 (two records at one offset; a commit that can
    never apply)."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    real_open = a._meta.open_stream
    try:
        old = a.create_stream("s")
        old.append([b"a1"])  # acknowledged, in A's log only
        b.open_stream("s")

        def open_while_the_fence_thread_looks(*args: Any, **kwargs: Any) -> Any:
            # The open's PUT is slow; meanwhile the fence thread does its periodic looks (every
            # 0.1 s) and reads B's open (before the fix it fenced s here).
            time.sleep(0.3)
            return real_open(*args, **kwargs)

        a._meta.open_stream = open_while_the_fence_thread_looks  # type: ignore[method-assign]
        mine = a.open_stream("s")
        a._meta.open_stream = real_open  # type: ignore[method-assign]
        result = mine.append([b"a2"])
        flushed = flush_outcome(a)
        got = fresh_values(b, "s", 2)
        assert (result.base_offset, flushed, got) == (1, "ok", [b"a1", b"a2"])
    finally:
        a._meta.open_stream = real_open  # type: ignore[method-assign]
        a.close()
        b.close()


# ---- a node taken over while alive ----

def test_a_node_taken_over_cannot_take_another_nodes_stream(tmp_path: Path) -> None:
    """B takes A over while A runs. A opens y for write — a stream B owns that A never wrote:
    ``_open_state`` only refuses opens of streams A wrote (its wait for a release), and the
    manifest's ``open_stream`` does not check the node epoch. So the fenced A becomes y's
    owner: B's handle is fenced, and B's next open must wait for a release from A, which A can
    never write (it is fenced): B's appends fail with HandOverPending for ever."""
    a = node(tmp_path, "a", wal="object", **HELD)
    b = node(tmp_path, "b", wal="object", append_timeout_ms=2000, **HELD)
    try:
        a.create_stream("s").append([b"1"])  # A's WAL exists
        y = b.create_stream("y")
        y.append([b"y1"])
        b.flush()
        b.take_over("a", wal="object")
        mine = b.open_stream("y")
        opened = "opened"
        try:
            a.open_stream("y")
        except FencedError:
            opened = "FencedError"
        if opened == "opened":  # B's fence thread sees A's open, B hands y over to A
            wait_for(lambda: mine._state.released, what="B to hand y over")
        appended = "ok"
        try:
            b.open_stream("y").append([b"y2"])
        except HandOverPending:
            appended = "HandOverPending"
        except FencedError:
            appended = "FencedError"
        assert (opened, appended) == ("FencedError", "ok")
    finally:
        a.close()
        b.close()


# ---- the manifest's open without a node ----

def test_an_open_without_a_node_keeps_a_pending_hand_over(tmp_path: Path) -> None:
    """``ManifestMetadataStore.open_stream`` without ``node_id`` (the metadata API; the
    contract suite calls it so) used to keep a pending hand-over; since owner_since it writes
    ``from: None``: the old owner's commits of what it acknowledged are then refused (its
    epoch is neither the stream's nor the hand-over's) — acknowledged data lost."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        s = a.create_stream("s")
        b.open_stream("s")  # hand-over from A
        meta = b._meta
        meta.open_stream(s.id)  # no node: an epoch + 1, nothing else
        assert meta.get_stream(s.id).handover_from == "a"
    finally:
        with contextlib.suppress(Exception):
            a.close()
        b.close()


# ---- a reader on the node that lost the stream back to its old owner ----

class FenceThreadGate:
    """Holds the fence thread of ``store`` before its next look at the manifest until
    :meth:`open`."""

    def __init__(self, store: streamlib.StreamStore) -> None:
        self.meta = store._meta
        self.real = self.meta.refresh
        self.go = threading.Event()
        self.meta.refresh = self._refresh  # type: ignore[method-assign]

    def _refresh(self) -> int:
        if threading.current_thread().name == "streamlib-fences":
            self.go.wait(10)
        return self.real()

    def open(self) -> None:
        self.go.set()
        self.meta.refresh = self.real  # type: ignore[method-assign]


def test_a_reader_on_the_new_owner_sees_the_old_owners_commits_after_it_took_the_stream_back(
        tmp_path: Path) -> None:
    """A commits a1; B opens s (a hand-over from A); A opens s again before it noticed (its
    time as owner goes on: B's open is void) and commits a2. A read on B syncs: s is being
    handed over to B (``handover_from`` A, not fenced yet), ``_follow_handover`` sees another
    epoch and skips it — and ``_synced_version`` marks the version as read. B's fence thread
    then fences s and releases it (nothing to write: B holds nothing in the manifest), so the
    manifest version does not move: every later sync returns at once, and B's readers see s
    end at 1 until some unrelated change reaches the manifest."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    gate = FenceThreadGate(b)
    a_gate: FenceThreadGate | None = None
    try:
        old = a.create_stream("s")
        old.append([b"a1"])
        a.flush()
        a_gate = FenceThreadGate(a)
        taken = b.open_stream("s")
        mine = a.open_stream("s")  # A has not seen B's open: it keeps s
        a_gate.open()
        mine.append([b"a2"])
        a.flush()
        time.sleep(0.1)  # past SYNC_INTERVAL
        b.get("s")  # a sync while B still waits for A's release
        gate.open()
        wait_for(lambda: taken._state.released, what="B to see it lost s")
        with contextlib.suppress(AssertionError):
            wait_for(lambda: b.get("s").next_offset >= 2, timeout=1.5)
        assert b.get("s").next_offset == 2
    finally:
        gate.open()
        if a_gate is not None:
            a_gate.open()
        a.close()
        b.close()


def test_a_release_landing_after_the_old_owners_reopen_does_not_disown_it(
        tmp_path: Path) -> None:
    """The same race with nothing left to commit: A's fence thread fences s (it read the
    version with B's open) while A's open is on its way, and releases s at once; the release
    (a slow PUT) lands after A's open, which made A the owner again (its time goes on). The
    release clears A's new ownership (owner None) and sets ``written_here = False`` on the
    stream A has just opened, so A's fence scans ignore s from then on. C opens s: no hand-over
    (no owner), C appends at once; A's acknowledged a2 is never committed (its epoch is
    stale) — acknowledged and lost — and A goes on acknowledging appends after C's open."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    c = node(tmp_path, "c", **HELD, append_timeout_ms=3000)
    real_open = a._meta.open_stream
    real_release = a._meta.release_streams
    try:
        old = a.create_stream("s")
        old.append([b"a1"])
        a.flush()
        state = old._state

        def slow_release(*args: Any, **kwargs: Any) -> None:
            time.sleep(0.3)  # a slow PUT
            real_release(*args, **kwargs)

        def open_while_the_fence_thread_looks(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.3)  # as above: the fence thread reads B's open meanwhile
            return real_open(*args, **kwargs)

        a._meta.release_streams = slow_release  # type: ignore[method-assign]
        a._meta.open_stream = open_while_the_fence_thread_looks  # type: ignore[method-assign]
        b.open_stream("s")
        mine = a.open_stream("s")
        a._meta.open_stream = real_open  # type: ignore[method-assign]
        time.sleep(0.5)  # the release lands
        a._meta.release_streams = real_release  # type: ignore[method-assign]
        a._meta.refresh()
        owner = a._meta.get_stream(state.id).owner
        mine.append([b"a2"])  # acknowledged
        taken = c.open_stream("s")  # must hand s over from A
        late = "acknowledged"
        try:
            mine.append([b"a3"])  # after C's open: must fail
        except FencedError:
            late = "FencedError"
        appended = "ok"
        try:
            taken.append([b"c1"])
        except Exception as error:
            appended = repr(error)
        with contextlib.suppress(Exception):
            a.flush()
        with contextlib.suppress(Exception):
            c.flush()
        got = fresh_values(c, "s", 3)
        assert (owner, late, appended, got) == ("a", "FencedError", "ok", [b"a1", b"a2", b"c1"])
    finally:
        a._meta.open_stream = real_open  # type: ignore[method-assign]
        a._meta.release_streams = real_release  # type: ignore[method-assign]
        for store in (a, b, c):
            store.close()
