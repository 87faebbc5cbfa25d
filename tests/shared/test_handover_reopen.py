"""A stream opened again during its hand-over (docs/shared-stores.md): by the node handing it
over, while its own look or release is on the way; by the new owner after the release. Each
test holds the metadata calls whose order makes the race (FaultyMetadataStore gates) instead of
hoping the machine's timing produces it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from nodes import HELD, eventually_read, faulty_node, flush_outcome, looks, node, wait_for

import streamlib
from streamlib.errors import FencedError
from streamlib.testing import FaultyMetadataStore
from streamlib.testing.faults import Call

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once


def owner(store: streamlib.StreamStore, name: str) -> str | None:
    """The stream's owner in the newest metadata ``store`` can read."""
    meta = store.metadata
    meta.refresh()
    return meta.get_stream(meta.get_stream_by_name(name).id).owner


def reopen_while_a_look_reads_the_hand_over(a: streamlib.StreamStore, faulty: FaultyMetadataStore,
                                            b: streamlib.StreamStore,
                                            name: str) -> streamlib.Stream:
    """B opens ``name`` (a hand-over from A) while A's fence thread is held before its next
    look; A opens it again, and A's open is held before it reaches the metadata until A's look
    has read B's open and looked the stream up, so that the fence decision about the stream
    and A's open cross."""
    held = faulty.pause("refresh", thread="streamlib-fences")  # A's next look waits
    assert held.wait_reached(1, 10), "A's fence thread never looked"
    sid = b.open_stream(name).id
    inner = faulty.store

    def reads_the_hand_over(call: Call) -> bool:  # A's look has read B's open
        return call.args["stream_id"] == sid and inner.get_stream(sid).owner == "b"

    opening = faulty.pause("open_stream", thread="reopen")
    lookup = faulty.pause("get_stream", after=True, thread="streamlib-fences",
                          match=reads_the_hand_over)
    reopened: list[streamlib.Stream] = []
    opener = threading.Thread(target=lambda: reopened.append(a.open_stream(name)),
                              name="reopen")
    opener.start()
    assert opening.wait_reached(1, 10), "A's open never came"
    held.release()  # A's look reads B's open
    assert lookup.wait_reached(1, 10), "A's fence thread never looked the stream up"
    lookup.release()  # the fence decision waits for A's open (the stream's opening lock)
    opening.release()
    opener.join(10)
    assert reopened, "A's open did not return"
    return reopened[0]


def test_a_look_that_read_the_hand_over_before_a_reopen_does_not_fence_it(
        tmp_path: Path) -> None:
    """A acknowledged a1 (not committed). A's fence thread reads B's open while A's own open
    of the stream is on its way. The open lands after (A handing over opens it again: its time
    as owner goes on) and must keep A's acknowledged offsets: A's next append goes after a1,
    and both are committed."""
    a, faulty = faulty_node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        old = a.create_stream("s")
        old.append([b"a1"])  # acknowledged, in A's log only
        mine = reopen_while_a_look_reads_the_hand_over(a, faulty, b, "s")
        result = mine.append([b"a2"])
        assert (result.base_offset, flush_outcome(a)) == (1, "ok")
        assert eventually_read(b, "s", 2) == [b"a1", b"a2"]
    finally:
        faulty.clear()
        a.close()
        b.close()


@pytest.mark.usefixtures("without_lease")
def test_a_reopen_crossing_a_look_keeps_the_stream_and_hands_it_over_later(
        tmp_path: Path) -> None:
    """The same crossing with nothing left to commit (a1 is committed): A keeps the stream
    (no release under it, owner A), acknowledges a2; C then opens the stream, which hands it
    over from A: A refuses appends after C's open, C's append lands after a2."""
    a, faulty = faulty_node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    c = node(tmp_path, "c", **HELD, append_timeout_ms=10_000)
    try:
        old = a.create_stream("s")
        old.append([b"a1"])
        a.flush()
        mine = reopen_while_a_look_reads_the_hand_over(a, faulty, b, "s")
        assert owner(a, "s") == "a"
        mine.append([b"a2"])  # acknowledged
        taken = c.open_stream("s")  # must hand s over from A
        with pytest.raises(FencedError):
            mine.append([b"a3"])  # after C's open
        taken.append([b"c1"])
        assert flush_outcome(c) == "ok"
        assert eventually_read(c, "s", 3) == [b"a1", b"a2", b"c1"]
    finally:
        faulty.clear()
        for store in (a, b, c):
            store.close()


def test_reopening_while_the_release_is_being_written_keeps_the_new_ownership(
        tmp_path: Path) -> None:
    """A hands s over to B: A's release is being written (held) when A opens s again. The open
    waits for the release, then takes the stream back from B; the release must not undo it.
    A appends a2; C's open then hands s over from A, and C's append lands after a2."""
    a, faulty = faulty_node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    c = node(tmp_path, "c", **HELD, append_timeout_ms=10_000)
    try:
        old = a.create_stream("s")
        old.append([b"a1"])
        release = faulty.pause("release_streams")
        b.open_stream("s")  # hand-over: A commits a1 and releases
        assert release.wait_reached(1, 10), "A never released s"
        reopened: list[streamlib.Stream] = []
        opener = threading.Thread(target=lambda: reopened.append(a.open_stream("s")))
        opener.start()
        release.release()  # the release lands, then A's open
        opener.join(10)
        assert reopened and owner(a, "s") == "a"
        reopened[0].append([b"a2"])
        taken = c.open_stream("s")
        taken.append([b"c1"])
        assert flush_outcome(c) == "ok" and flush_outcome(a) == "ok"
        assert eventually_read(c, "s", 3) == [b"a1", b"a2", b"c1"]
    finally:
        faulty.clear()
        for store in (a, b, c):
            store.close()


def test_the_new_owner_reopening_after_the_release_appends_after_the_old_owners_tail(
        tmp_path: Path) -> None:
    """A acknowledged a1 (committed) and a2 (not yet). B opens s and waits for A's release; A
    commits a2 and releases. B opens s again before anything of B read A's last commit: B's
    next append must take offset 2, after a2 (not a2's offset), and commit."""
    a, faulty = faulty_node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD, append_timeout_ms=10_000)
    try:
        old = a.create_stream("s")
        old.append([b"a1"])
        a.flush()
        old.append([b"a2"])  # acknowledged, in A's log only
        released = faulty.pause("release_streams", after=True)
        b.open_stream("s")  # hand-over from A; B's ends: 1
        assert released.wait_reached(1, 10), "A never released s"
        released.release()
        again = b.open_stream("s")
        result = again.append([b"b1"])
        assert (result.base_offset, flush_outcome(b)) == (2, "ok")
        assert eventually_read(a, "s", 3) == [b"a1", b"a2", b"b1"]
    finally:
        faulty.clear()
        a.close()
        b.close()


def test_a_reader_on_the_node_that_lost_the_stream_back_sees_the_old_owners_commits(
        tmp_path: Path) -> None:
    """A commits a1; B opens s; A, before it has looked, opens s again (B's open is void: A's
    time as owner goes on) and commits a2. B reads s while it still waits for a release, then
    finds it lost the stream and releases it (writing nothing new). B's readers must then see
    a2, though the metadata's version did not move after B's last sync."""
    a, fa = faulty_node(tmp_path, "a", **HELD)
    b, fb = faulty_node(tmp_path, "b", sync_interval_ms=0, **HELD)
    try:
        old = a.create_stream("s")
        old.append([b"a1"])
        a.flush()
        a_looks = fa.pause("refresh", thread="streamlib-fences")
        b_looks = fb.pause("refresh", thread="streamlib-fences")
        b.open_stream("s")
        mine = a.open_stream("s")  # A has not seen B's open: it keeps s
        a_looks.release()
        mine.append([b"a2"])
        a.flush()
        b.get("s")  # a sync on B while B still waits for A's release
        released = fb.pause("release_streams", after=True)
        b_looks.release()
        assert released.wait_reached(1, 10), "B never gave s up"
        released.release()
        wait_for(lambda: b.get("s").next_offset >= 2, what="B to read a2")
    finally:
        fa.clear()
        fb.clear()
        a.close()
        b.close()


def test_a_tailing_reader_on_the_new_owner_sees_the_old_owners_last_commits(
        tmp_path: Path) -> None:
    """B opens A's stream for write (A still holds acknowledged, unuploaded records); a reader
    on B tails the stream from its committed end. A commits and releases: B's reader sees the
    records without any other call on B."""
    a = node(tmp_path, "a", **HELD)
    b, faulty = faulty_node(tmp_path, "b", **HELD)
    try:
        a.create_stream("s").append([b"1", b"2"])
        taken = b.open_stream("s")
        got: list[bytes] = []
        polls = looks(faulty, thread="tail")

        def tail() -> None:
            for batch in taken.read(0, idle_timeout=10):
                got.extend(r.value for r in batch.records())
                if len(got) >= 2:
                    return

        reader = threading.Thread(target=tail, name="tail")
        reader.start()
        wait_for(lambda: polls.hits >= 1, what="the reader to wait at the tail")
        a.flush()  # A commits 1, 2 and releases s
        reader.join(15)
        assert got == [b"1", b"2"], "B's tailing reader never sees what A committed"
    finally:
        faulty.clear()
        a.close()
        b.close()
