"""Streams across the nodes of one bucket, at the edges of a hand-over or a take-over: a stream
destroyed by another node, a tailing reader on the node that handed its stream over, appends
refused at a hand-over staying refused through a restart or a take-over, the taker reading what
it took over, the answers a node taken over while alive gives, a take-over given the wrong WAL
backend, a trim on a stale view, idle async readers of another node's stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import fsspec
import pytest
from nodes import (
    HELD,
    faulty_node,
    faulty_pair,
    gone,
    hand_over_during_an_append,
    node,
    values,
    wait_for,
)
from test_shared_store import run_until_killed

import streamlib
from streamlib.errors import CacheMiss, FencedError, StorageUnavailable, StreamNotFound
from streamlib.io import ObjectStore
from streamlib.meta.manifest import ManifestMetadataStore
from streamlib.testing.faults import FaultyFileSystem

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once


# ---- a stream this node writes, destroyed by another node ----

def test_a_remote_destroy_does_not_wedge_the_writers_uploads(tmp_path: Path) -> None:
    """A writes streams x and y; B destroys x. A drops x at its next look, so that its upload
    rounds (which would otherwise commit x's batches and fail with StreamNotFound for ever)
    commit y's data: B reads it."""
    a, b = node(tmp_path, "a", **HELD), node(tmp_path, "b", **HELD)
    try:
        x, y = a.create_stream("x"), a.create_stream("y")
        x.append([b"x1"])
        y.append([b"y1"])
        b.destroy_stream("x")
        wait_for(lambda: gone(x), what="A to drop x")
        y.append([b"y2"])
        with contextlib.suppress(StreamNotFound):  # one failed round is fine if the next
            a.flush()                               # leaves x out
        a.flush()
        wait_for(lambda: b.get("y").next_offset == 2, what="B to see A's commit")
    finally:
        a.close()
        b.close()


# ---- a reader on the node that handed its stream over ----

def test_a_tailing_reader_follows_the_stream_after_a_hand_over(tmp_path: Path) -> None:
    """A reader of A's own stream waits at its end (A writes it: nothing to poll); B opens the
    stream for write (a hand-over) and appends. Once A has handed the stream over, the reader
    must follow it like another node's stream: it sees B's append."""
    a, faulty = faulty_node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        stream = a.create_stream("x")
        stream.append([b"a"])
        a.flush()
        got: list[bytes] = []
        held = faulty.pause("refresh", thread="streamlib-fences")  # A learns nothing yet
        assert held.wait_reached(1, 10)
        reading = threading.Event()

        def tail() -> None:
            reading.set()
            for batch in stream.read(1, idle_timeout=10):
                got.extend(r.value for r in batch.records())
                return

        reader = threading.Thread(target=tail)
        reader.start()
        assert reading.wait(10)  # the reader waits while A still writes the stream
        taken = b.open_stream("x")
        held.release()  # A learns of the hand-over, and releases the stream
        taken.append([b"b"])
        b.flush()
        reader.join(15)
        assert got == [b"b"], "A's tailing reader never sees B's append"
    finally:
        faulty.clear()
        a.close()
        b.close()


# ---- take-over ----

@pytest.mark.usefixtures("without_lease")
def test_a_take_over_does_not_commit_an_append_answered_with_fenced_error(
        tmp_path: Path) -> None:
    """A hands stream s over to B: A's append X, durable in A's WAL after the hand-over, is
    parked and then answered with FencedError once A released s. B closes cleanly (s has no
    owner now). A dies before its WAL was trimmed past X (here: its TRIM marker cannot be
    written). C takes A over: take_over counts a stream with owner None as A's
    (``m.owner in (node, None)``) and commits X — an append its writer was told failed."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    a, b, options = faulty_pair(tmp_path, faulty)
    c = streamlib.open(tmp_path / "node-c", **{**options, "node_id": "c"})
    try:
        stream, _, future = hand_over_during_an_append(
            a, b, faulty, lambda p: p.endswith("/TRIM"), before=[b"acked"])  # A's WAL keeps X
        with pytest.raises(FencedError):
            future.result(timeout=10)  # answered after A's release
        refused = stream.id
        b.close()  # a clean close: s has no owner now
        result = c.take_over("a", wal="object")
        got = values(c.open_stream(refused, read_only=True))
        assert b"X" not in got, f"an append answered with FencedError shows: {result}"
    finally:
        faulty.clear()
        for store in (a, b, c):
            store.close()


@pytest.mark.usefixtures("without_lease")
def test_a_restarted_node_does_not_commit_its_refused_appends_into_the_new_owners_stream(
        tmp_path: Path) -> None:
    """As above, but A just restarts (a deploy) instead of being taken over, and B still owns
    the stream: ``_recover`` replays every WAL record beyond the committed end, whoever owns
    the stream now, and commits it with the stream's current epoch (B's): X, answered with
    FencedError, lands in B's stream, and B's own appends then conflict."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    a, b, options = faulty_pair(tmp_path, faulty)
    try:
        stream, taken, future = hand_over_during_an_append(
            a, b, faulty, lambda p: p.endswith("/TRIM"), before=[b"acked"])
        with pytest.raises(FencedError):
            future.result(timeout=10)
        refused = stream.id
        a.close()
        faulty.clear()
        a = streamlib.open(tmp_path / "node-a", **options)  # restarted, its WAL replayed
        a.flush()
        taken.append([b"b"])
        b.flush()
        got = values(b.open_stream(refused, read_only=True))
        assert got == [b"acked", b"b"]
    finally:
        faulty.clear()
        a.close()
        b.close()


def test_the_taking_node_reads_what_it_took_over_on_a_stream_it_opened(tmp_path: Path) -> None:
    """B opened A's stream for write (its appends wait for A's release: HandOverPending), A is
    dead, B takes A over: the recovered records are committed, but B's own view of the stream
    stays at the old end (``_catch_up_streams`` -> ``_sync`` skips streams written here), so
    B's readers and ``get`` miss them until B appends."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    config = {"path": str(tmp_path / "node-a"), "node_id": "a", "metadata": "manifest",
              "objects_url": f"file://{bucket}", "wal": "object", **HELD}
    run_until_killed(config, dict(os.environ), tmp_path / "acks", 20)
    with node(tmp_path, "b", wal="object") as b:
        b.open_stream("s")  # for write: the hand-over from the dead A never completes
        result = b.take_over("a")
        ((_, end),) = result.streams.values()
        assert end > 0
        assert b.get("s").next_offset == end
        assert len(values(b.open_stream("s", read_only=True))) == end


def test_appends_of_a_node_taken_over_while_alive_are_answered(tmp_path: Path) -> None:
    """C takes A over while A still appends (a take-over racing a writer that is not dead).
    A's appends durable after the fence are parked until A releases the stream, but A's
    release is refused (its node epoch is fenced): ``_maybe_release`` fails with FencedError at
    every look, and the parked futures are never completed — ``append()`` hangs for ever, even
    after ``close()``."""
    a = node(tmp_path, "a", wal="object", **HELD)
    c = node(tmp_path, "c", wal="object", **HELD)
    futures: list[Any] = []
    stop = threading.Event()

    def write(stream: streamlib.Stream) -> None:
        n = 0
        while not stop.is_set():
            try:
                futures.append(stream.append_future([str(n).encode()]))
            except (FencedError, streamlib.StreamClosed):
                return
            n += 1
            if len(futures) > 8:
                try:
                    futures[-8].result(timeout=2)
                except Exception:
                    return

    try:
        stream = a.create_stream("s")
        writer = threading.Thread(target=write, args=(stream,))
        writer.start()
        wait_for(lambda: len(futures) > 8 and futures[0].done(), what="A to be appending")
        c.take_over("a", wal="object")
        stop.set()
        writer.join(10)
        with contextlib.suppress(AssertionError):  # the assertion below says what is left
            wait_for(lambda: all(f.done() for f in futures))
    finally:
        a.close()
        c.close()
    hanging = sum(not f.done() for f in futures)
    assert hanging == 0, f"{hanging} of A's appends are never answered, even after close()"


def test_take_over_with_the_wrong_wal_backend_refuses_instead_of_releasing(
        tmp_path: Path) -> None:
    """A (file WAL) is killed with acknowledged appends only in its WAL. B's own WAL is the
    object WAL, so ``b.take_over("a")`` looks for an object WAL of A: ``_wal_of(create=False)``
    checks that a file or block WAL exists but creates an empty object WAL, recovers nothing,
    and releases A's streams — A's acknowledged appends are abandoned (the stream moves on
    without them) instead of the call failing like it does for a missing file WAL path."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    config = {"path": str(tmp_path / "node-a"), "node_id": "a", "metadata": "manifest",
              "objects_url": f"file://{bucket}", **HELD}
    run_until_killed(config, dict(os.environ), tmp_path / "acks", 20)
    with node(tmp_path, "b", wal="object") as b, pytest.raises(streamlib.ConfigError):
        b.take_over("a")  # A had no object WAL: nothing there to take over


# ---- the manifest against the metadata contract ----

def test_a_trim_on_a_stale_manifest_handle_of_a_destroyed_stream_raises(tmp_path: Path) -> None:
    """The contract: an operation on a destroyed stream raises StreamNotFound (SQLite does,
    from any connection). ``trim_stream``'s "moves nothing: writes nothing" shortcut answers
    from the handle's local copy without catching up, so a handle that has not seen another
    node's destroy returns the stream as live."""
    store = ObjectStore.from_url(f"file://{tmp_path / 'bucket'}")
    one = ManifestMetadataStore(store, node_id="a")
    two = ManifestMetadataStore(store, node_id="b")
    try:
        stream = one.create_stream("s")
        two.refresh()
        two.destroy_stream(stream.id)
        with pytest.raises(StreamNotFound):
            one.trim_stream(stream.id, 0)
    finally:
        one.close()
        two.close()


# ---- readers of another node's stream ----

def test_an_idle_async_reader_of_a_remote_stream_does_not_pile_up_waiters(
        tmp_path: Path) -> None:
    """``read_async`` on another node's stream adds a future to ``state.async_waiters`` every
    POLL (0.1 s) and, when ``wait_for`` times out, leaves the cancelled one in the list: an idle
    tail grows it by ten entries a second until something wakes the readers."""
    a, b = node(tmp_path, "a", **HELD), node(tmp_path, "b", **HELD)
    try:
        a.create_stream("x").append([b"1"])
        a.flush()
        remote = b.open_stream("x", read_only=True)

        async def tail() -> None:
            async for _ in remote.read_async(1, idle_timeout=1.5):
                pass

        asyncio.run(tail())
        assert len(remote._state.async_waiters) <= 1
    finally:
        a.close()
        b.close()


# ---- found by the three-node model (tests/shared/test_shared_model.py) ----

@pytest.mark.usefixtures("without_lease")
def test_a_hand_over_read_by_another_thread_still_fences(tmp_path: Path) -> None:
    """B opens A's stream; on A a sync (``streams()``) reads that change from the manifest
    before the fence thread does. The fence check scanned only when its own refresh found
    something new: A never learned it was fenced, acknowledged its next append and committed
    it as the old owner's — an append after the fence became visible."""
    a, b = node(tmp_path, "a", **HELD), node(tmp_path, "b", **HELD)
    try:
        old = a.create_stream("s")
        old.append([b"kept"])
        for _ in range(20):  # the watcher looks every 0.1 s: most rounds, the sync is first
            new = b.open_stream("s")
            a.streams()
            with pytest.raises(FencedError):
                old.append([b"after the fence"])
            old = a.open_stream("s")  # back to A (after its release) for the next round
            with pytest.raises(FencedError):
                new.append([b"refused"])
        a.flush()
        assert values(b.open_stream("s", read_only=True)) == [b"kept"]
    finally:
        a.close()
        b.close()


def test_the_new_owner_sees_what_the_old_one_commits_before_appending(
        tmp_path: Path) -> None:
    """B opens A's stream; A commits what it acknowledged and releases. B's reads followed the
    manifest only once B appended (a stream written here skipped the sync)."""
    a, b = node(tmp_path, "a", **HELD), node(tmp_path, "b", **HELD)
    try:
        a.create_stream("s").append([b"1", b"2"])
        b.open_stream("s")
        a.flush()
        wait_for(lambda: b.get("s").next_offset == 2, what="B to follow A's commit")
        assert values(b.open_stream("s", read_only=True)) == [b"1", b"2"]
    finally:
        a.close()
        b.close()


@pytest.mark.usefixtures("without_lease")  # X is refused only if it waits for a look
@pytest.mark.parametrize("after", ["take-over", "restart"])
def test_an_append_refused_at_a_hand_over_stays_refused_when_the_stream_comes_back(
        tmp_path: Path, after: str) -> None:
    """A's append X is refused at a hand-over to B (and stays in A's WAL); B hands the
    stream back to A; A dies. The take-over of A (or A's own restart) kept every record of a
    stream A owned beyond the committed end, whatever its epoch: X, answered with
    FencedError, became visible. Only records of A's current time as owner are A's."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    a, b, options = faulty_pair(tmp_path, faulty)
    try:
        stream, _, future = hand_over_during_an_append(  # A's WAL keeps X, uploads nothing
            a, b, faulty, lambda p: p.endswith("/TRIM") or "/data/" in p)
        with pytest.raises(FencedError):
            future.result(timeout=10)
        refused = stream.id
        back = a.open_stream(refused)  # B wrote nothing and releases at once
        back.append([b"kept"])  # acknowledged, not uploaded (uploads by flush only)
        a._uploader.stop()  # A dies: nothing more uploaded, nothing released
        a._release()
        faulty.clear()
        if after == "take-over":
            result = b.take_over("a")
            assert result.records == 1, result
            reader = b
        else:
            a = reader = streamlib.open(tmp_path / "node-a", **options)
            reader.flush()
        wait_for(lambda: reader.get(refused).next_offset >= 1, what="the reader to see it")
        assert values(reader.open_stream(refused, read_only=True)) == [b"kept"]
    finally:
        faulty.clear()
        a.close()
        b.close()


# ---- cache-only reads of another node's stream ----

def test_a_cache_only_fetch_of_another_nodes_stream_never_reads_the_metadata(
        tmp_path: Path) -> None:
    """At the tail of a stream another node writes, ``fetch(cache_only=True)`` answers from
    this node's view — no look at the manifest, which may be slow or down — and the fence
    thread's next look brings the other node's commits into that view."""
    writer = node(tmp_path, "w")
    reader, faulty = faulty_node(tmp_path, "r", fence_poll_ms=20)
    try:
        stream = writer.create_stream("s")
        stream.append([b"a"])
        writer.flush()
        tail = reader.open_stream("s", read_only=True)
        wait_for(lambda: tail.next_offset == 1, what="the reader to see the first commit")
        # Any read of the manifest by this thread fails the test.
        faulty.inject("refresh", StorageUnavailable("the manifest is down"), times=None,
                      thread=threading.current_thread().name)
        assert not tail.fetch(1, cache_only=True).batches  # nothing new: no look, no wait
        stream.append([b"b"])
        writer.flush()

        def polled() -> bool:  # a cache-only poller; the fence thread's looks move its view
            with contextlib.suppress(CacheMiss):  # the new batch is in an object, not cached
                tail.fetch(1, cache_only=True)
            return tail.next_offset == 2

        wait_for(polled, what="the fence thread to bring the second commit")
        faulty.clear()
        assert [r.value for b in tail.fetch(1) for r in b.records()] == [b"b"]
    finally:
        faulty.clear()
        reader.close()
        writer.close()
