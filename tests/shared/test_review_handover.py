"""Regression tests from a second review of the hand-over and fencing protocol between nodes
sharing one bucket (after tests/shared/test_shared_edges.py). Each failed before its fix; the
docstring says the sequence and what went wrong."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import fsspec
import pytest
from nodes import (
    HELD,
    crash,
    eventually_read,
    faulty_pair,
    flush_outcome,
    hand_over_during_an_append,
    node,
    values,
    wait_for,
)

import streamlib
from streamlib.errors import FencedError, HandOverPending, StorageUnavailable
from streamlib.testing.faults import FaultyFileSystem, access_denied

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once


# ---- a restarted node never hands over the streams it still owns ----

def test_a_node_restarted_after_a_crash_hands_over_the_streams_it_owned(
        tmp_path: Path) -> None:
    """A writes s, uploads everything, and crashes (no close, so no release: the manifest
    still says owner A). A restarts: its WAL holds nothing of s beyond the committed end, so
    ``_recover`` leaves ``written_here`` False, and ``_scan_fences`` only looks at streams
    written here. B opens s: a hand-over from A that the live A never notices and never
    releases — B's appends fail with HandOverPending for ever (A is alive: nobody takes it
    over). Even A's clean close does not release s (``_release_all`` skips it too)."""
    a = node(tmp_path, "a", **HELD)
    a.create_stream("s").append([b"1"])
    a.flush()
    crash(a)
    a = node(tmp_path, "a", **HELD)  # restarted (a deploy): alive and well
    b = node(tmp_path, "b", **HELD, append_timeout_ms=3000)
    try:
        taken = b.open_stream("s")
        try:
            taken.append([b"2"])
        except HandOverPending:
            a.close()  # does a clean close of A release it?
            after_close = "fails too"
            with contextlib.suppress(HandOverPending):
                taken.append([b"2"])
                after_close = "works"
            pytest.fail(f"the live, restarted A never releases s: B's append fails with "
                        f"HandOverPending (after A's close it {after_close})")
        b.flush()
        assert values(b.open_stream("s", read_only=True)) == [b"1", b"2"]
    finally:
        a.close()
        b.close()


# ---- a node re-opening a stream while its own release is on the way ----

def test_reopening_a_stream_while_its_release_is_in_flight_keeps_the_new_ownership(
        tmp_path: Path) -> None:
    """A hands s over to B. ``_maybe_release`` sets ``state.released`` *before* its
    ``release_streams`` call; ``_open_state`` waits only for that flag. So A's re-open of s can
    run while the release is still on its way (a PUT to S3): the open lands first (A is
    ``handover_from``: it becomes the owner again), then the release lands and clears A's
    ownership, and ``_maybe_release`` then sets ``written_here = False`` on the stream A has
    just opened. A now writes a stream the manifest says nobody owns and that its fence scan
    ignores: C opens it with no hand-over and appends at once over A's acknowledged records;
    A's commit is refused (and the stream-level FencedError fails the whole node A)."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    c = node(tmp_path, "c", **HELD, append_timeout_ms=5000)
    real_release = a._meta.release_streams

    def slow_release(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.5)  # a slow PUT
        real_release(*args, **kwargs)

    try:
        old = a.create_stream("s")
        old.append([b"a1"])
        state = old._state
        a._meta.release_streams = slow_release  # type: ignore[method-assign]
        b.open_stream("s")  # hand-over: A commits a1 and releases (slowly)
        wait_for(lambda: state.released, what="A to start its release")
        mine = a.open_stream("s")  # A takes it back while the release is on its way
        time.sleep(1.0)  # the release lands
        a._meta.release_streams = real_release  # type: ignore[method-assign]
        a._meta.refresh()
        owner, written_here = a._meta.get_stream(state.id).owner, state.written_here
        mine.append([b"a2"])  # acknowledged
        taken = c.open_stream("s")  # must hand s over from A
        taken.append([b"c1"])  # must land after a2
        c.flush()
        flushed = flush_outcome(a)
        time.sleep(0.3)
        c.get("s")
        got = values(c.open_stream("s", read_only=True))
        assert (owner, written_here, flushed, got) == ("a", True, "ok", [b"a1", b"a2", b"c1"])
    finally:
        a._meta.release_streams = real_release  # type: ignore[method-assign]
        for store in (a, b, c):
            store.close()


# ---- a stream destroyed while its old owner hands it over ----

def test_destroying_a_stream_being_handed_over_does_not_wedge_the_old_owners_uploads(
        tmp_path: Path) -> None:
    """A has acknowledged, not yet uploaded appends in s and t. B opens s (A fences s and must
    commit its data before releasing) and destroys it before A's upload. ``_scan_fences``
    forgets destroyed streams only among those not fenced, and nothing else on A (no reader
    calls ``get``/``streams``, which would sync) drops s: every upload round of A commits s's
    batches and fails with StreamNotFound — t's data is never committed, A's WAL never trimmed,
    B never sees t."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    a, b, _ = faulty_pair(tmp_path, faulty)
    try:
        s, t = a.create_stream("s"), a.create_stream("t")
        s.append([b"s1"])
        t.append([b"t1"])
        # A's uploads of data objects fail for now: s stays in A's log cache.
        faulty.inject("put", access_denied, times=None, match=lambda p: "/data/" in p)
        b.open_stream("s")
        wait_for(lambda: s._state.fenced is not None, what="A to see the hand-over")
        b.destroy_stream("s")
        time.sleep(0.3)  # A's fence thread looks a few times
        faulty.clear()
        deadline = time.monotonic() + 3
        while True:
            try:
                a.flush()
                break
            except Exception as error:
                if time.monotonic() > deadline:
                    pytest.fail(f"A's uploads stay wedged: {error!r}")
                time.sleep(0.3)
        assert eventually_read(b, "t", 1) == [b"t1"]
    finally:
        faulty.clear()
        a.close()
        b.close()


# ---- close() answers parked appends before it knows their fate ----

def test_a_parked_append_answered_at_close_never_shows_after_a_restart(
        tmp_path: Path) -> None:
    """A hands s over to B with an acknowledged append not yet uploaded (its uploads fail for
    now) and an append X parked (durable, seen after the fence). ``close()`` answers the parked
    X with FencedError *before* its last upload and release; the upload fails, so s is not
    released and X stays in A's WAL. A restarts: s is still A's to hand over, ``_recover``
    replays X (its epoch is within A's held epochs) and commits it — an append answered with
    FencedError is visible."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    a, b, options = faulty_pair(tmp_path, faulty)
    try:
        stream, _, future = hand_over_during_an_append(
            a, b, faulty, lambda p: "/data/" in p or p.endswith("/TRIM"), before=[b"acked"],
            upload_before=False)
        refused = stream.name
        assert refused is not None
        time.sleep(0.3)  # X is parked: A cannot release s (its upload fails)
        assert not future.done()
        a.close()
        try:
            future.result(timeout=1)
            answered = "acknowledged"
        except FencedError:
            answered = "FencedError"
        except Exception as error:
            answered = repr(error)
        faulty.clear()
        a = streamlib.open(tmp_path / "node-a", **options)  # restarted, its WAL replayed
        eventually_read(b, refused, 1)
        time.sleep(0.3)  # A's recovered upload
        b.get(refused)
        got = values(b.open_stream(refused, read_only=True))
        assert not (answered == "FencedError" and b"X" in got), (
            f"an append answered with FencedError is visible: {got}")
    finally:
        faulty.clear()
        a.close()
        b.close()


# ---- the acknowledgement's look at the manifest ----

class WatcherGate:
    """Steers the fence thread of ``store`` through its looks at the manifest: the first look
    after :meth:`arm` is held until :meth:`pass_first` (so that appends made meanwhile are
    all waiting for the next look), the second is held, *after* it read the manifest, until
    :meth:`pass_second`."""

    def __init__(self, store: streamlib.StreamStore) -> None:
        self.store = store
        self.meta = store._meta
        self.real = self.meta.refresh
        self.phase = -1
        self.first_held = threading.Event()
        self.first_go = threading.Event()
        self.second_held = threading.Event()
        self.second_go = threading.Event()
        self.meta.refresh = self._refresh  # type: ignore[method-assign]

    def arm(self) -> None:
        self.phase = 0

    def _refresh(self) -> int:
        if threading.current_thread().name != "streamlib-fences" or self.phase < 0:
            return self.real()
        if self.phase == 0:
            self.phase = 1
            self.first_held.set()
            self.first_go.wait(10)
            return self.real()
        if self.phase == 1:
            self.phase = 2
            moved = self.real()
            self.second_held.set()
            self.second_go.wait(10)
            return moved
        return self.real()

    def pass_first(self) -> None:
        self.first_go.set()

    def pass_second(self) -> None:
        self.second_go.set()

    def look_read_before(self, stream: streamlib.Stream) -> Future[Any]:
        """Append W to ``stream`` and let the fence thread's look for it read the manifest,
        then hold it there (until :meth:`pass_second`). Returns W's future."""
        self.arm()
        assert self.first_held.wait(5)  # the fence thread is held in an idle look
        w = stream.append_future([b"W"])
        wait_for(lambda: durable(stream, 1) and stream._state in self.store._ack_pending,
                 what="W durable")
        self.pass_first()
        assert self.second_held.wait(5)  # the look for W has read the manifest
        return w

    def restore(self) -> None:
        self.phase = 3
        self.first_go.set()
        self.second_go.set()
        self.meta.refresh = self.real  # type: ignore[method-assign]


def durable(stream: streamlib.Stream, count: int) -> bool:
    """Whether the stream's first ``count`` appends in flight are durable in the WAL."""
    state = stream._state
    with state.lock:
        flight = list(state.inflight)
    return len(flight) >= count and all(item.wal_future.done() for item in flight[:count])


def test_an_append_durable_after_the_look_started_is_not_acknowledged_after_a_hand_over(
        tmp_path: Path) -> None:
    """The fence thread takes the streams with durable appends, starts its look at the
    manifest (which does not show a hand-over yet), then ``_acknowledge(checked=True)`` drains
    *every* append durable by now — also X, durable only after the look had read the manifest
    and after B opened the stream. X is acknowledged after the hand-over (docs: "A
    acknowledges nothing after the hand-over"; a look must start after the append was durable),
    and A then commits it as the old owner: an append made after the fence is visible."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    gate = WatcherGate(a)
    try:
        old = a.create_stream("s")
        old.append([b"before"])
        w = gate.look_read_before(old)
        b.open_stream("s")  # the hand-over
        x = old.append_future([b"X"])  # A has not seen it: X goes to the WAL
        wait_for(lambda: durable(old, 2), what="X durable")
        gate.pass_second()
        w.result(timeout=5)
        with pytest.raises(FencedError):
            x.result(timeout=5)  # durable after the hand-over: must not be acknowledged
    finally:
        gate.restore()
        a.close()
        b.close()


def test_an_append_acknowledged_by_a_node_being_taken_over_is_not_lost(
        tmp_path: Path) -> None:
    """The same race with a take-over: A's look for W read the manifest before C took A
    over; C recovers A's (object) WAL and commits what it holds; then A's append X becomes
    durable in A's old WAL epoch (superseded: no recovery will ever read it) and the fence
    thread acknowledges it with W. X is acknowledged and lost: A's commit of it is refused
    (A is fenced) and C never saw it."""
    a = node(tmp_path, "a", wal="object", **HELD)
    c = node(tmp_path, "c", wal="object", **HELD)
    gate = WatcherGate(a)
    try:
        old = a.create_stream("s")
        old.append([b"before"])
        w = gate.look_read_before(old)
        c.take_over("a", wal="object")  # recovers W (durable), commits, releases
        x = old.append_future([b"X"])
        wait_for(lambda: durable(old, 2), what="X durable")
        gate.pass_second()
        w.result(timeout=5)
        try:
            x.result(timeout=5)
        except Exception:
            return  # not acknowledged: fine
        with contextlib.suppress(Exception):
            a.flush()
        eventually_read(c, "s", 2)
        time.sleep(0.3)
        got = values(c.open_stream("s", read_only=True))
        assert b"X" in got, f"X was acknowledged by A but is lost: {got}"
    finally:
        gate.restore()
        a.close()
        c.close()


# ---- a node taken over while alive ----

def test_an_append_answered_with_fenced_error_by_a_node_taken_over_never_shows(
        tmp_path: Path) -> None:
    """A's append W is durable in its (object) WAL; before A's fence thread looks, C takes A
    over: C recovers W from A's WAL and commits it. A's look then finds its node fenced, parks
    W and, since A can no longer release anything, ``_maybe_release`` answers it with
    FencedError ("outcome unknown"). W — answered with FencedError — is visible on C."""
    a = node(tmp_path, "a", wal="object", **HELD)
    c = node(tmp_path, "c", wal="object", **HELD)
    gate = WatcherGate(a)
    try:
        old = a.create_stream("s")
        old.append([b"before"])
        gate.arm()
        assert gate.first_held.wait(5)  # A's fence thread is held before reading
        w = old.append_future([b"W"])
        wait_for(lambda: durable(old, 1), what="W durable")
        c.take_over("a", wal="object")  # recovers W, commits it
        gate.restore()  # A's look now finds itself taken over
        try:
            w.result(timeout=5)
            answered = "acknowledged"
        except FencedError:
            answered = "FencedError"
        except Exception as error:  # another answer (an unknown outcome) is fine
            answered = repr(error)
        got = eventually_read(c, "s", 1)
        time.sleep(0.3)
        got = values(c.open_stream("s", read_only=True))
        assert not (answered == "FencedError" and b"W" in got), (
            f"W was answered with FencedError and is visible: {got}")
    finally:
        gate.restore()
        a.close()
        c.close()


# ---- a look at the manifest that failed serves as a look ----

def test_a_failed_look_at_the_manifest_does_not_let_appends_be_acknowledged(
        tmp_path: Path) -> None:
    """``_fence_check`` records ``_check_started`` in its ``finally``: a look whose
    ``refresh`` raised (a 503 from S3) counts as done for every thread waiting on it. The
    uploader thread (``flush`` -> ``_take`` -> ``_acknowledge``) asks for a look; the fence
    thread's next look starts after that and fails; the uploader then drains and acknowledges
    an append durable after B's hand-over, without any look having read the manifest, and
    commits it as the old owner: an append made after the fence is visible."""
    import inspect
    import sys

    from streamlib.store import StreamStore

    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    meta = a._meta
    real = meta.refresh
    hold = threading.Event()
    failing = threading.Event()
    failures: list[float] = []

    def refresh() -> int:
        if threading.current_thread().name == "streamlib-fences":
            if hold.is_set():
                failing.wait(10)  # held, then fails
            if failing.is_set():
                failures.append(time.monotonic())
                raise StorageUnavailable("the manifest store did not answer (503)")
        return real()

    lines, first = inspect.getsourcelines(StreamStore._fence_check)
    asked_line = first + next(i for i, line in enumerate(lines)
                              if "with self._check_done:" in line)
    paused, resume = threading.Event(), threading.Event()
    asked: list[float] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not StreamStore._fence_check.__code__:
            return None

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and frame.f_lineno == asked_line and not paused.is_set():
                asked.append(frame.f_locals["asked"])
                paused.set()  # ``asked`` is taken: hold here
                resume.wait(10)
            return local

        return local

    outcome: list[object] = []

    def flush() -> None:
        sys.settrace(tracer)
        try:
            a.flush()
            outcome.append("flushed")
        except Exception as error:
            outcome.append(error)
        finally:
            sys.settrace(None)

    meta.refresh = refresh  # type: ignore[method-assign]
    try:
        old = a.create_stream("s")
        old.append([b"before"])
        hold.set()  # A's fence thread: its next look is held
        time.sleep(0.3)
        b.open_stream("s")  # the hand-over, unseen by A for now
        x = old.append_future([b"X"])
        wait_for(lambda: durable(old, 1), what="X durable")
        uploader = threading.Thread(target=flush)
        uploader.start()
        assert paused.wait(5)  # the uploader asked for a look (its ``asked`` is taken)
        failing.set()  # the fence thread's held look fails, and so do its next ones
        # ... until one that started after the uploader asked has failed: the held look
        # (started before) fails first, the next one starts after it ended
        wait_for(lambda: len(failures) >= 2, what="a failed look")
        resume.set()
        uploader.join(10)
        with pytest.raises(FencedError):
            x.result(timeout=5)  # durable after the hand-over, never looked for
    finally:
        resume.set()
        failing.set()
        meta.refresh = real  # type: ignore[method-assign]
        a.close()
        b.close()


# ---- a reader on the new owner while the old one commits ----

def test_a_tailing_reader_on_the_new_owner_sees_the_old_owners_last_commits(
        tmp_path: Path) -> None:
    """B opens A's stream for write (A still holds acknowledged, unuploaded records); a reader
    on B tails the stream from its committed end. ``_wait_for_append`` waits on the local
    condition without polling (``_remote`` is False: B writes the stream), and nothing on an
    idle B syncs: A commits and releases, but B's reader sees nothing until B appends or
    someone calls ``get``."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        a.create_stream("s").append([b"1", b"2"])
        taken = b.open_stream("s")
        got: list[bytes] = []

        def tail() -> None:
            for batch in taken.read(0, idle_timeout=4):
                got.extend(r.value for r in batch.records())
                if len(got) >= 2:
                    return

        reader = threading.Thread(target=tail)
        reader.start()
        time.sleep(0.2)
        a.flush()  # A commits 1, 2 and releases s
        reader.join(10)
        assert got == [b"1", b"2"], "B's tailing reader never sees what A committed"
    finally:
        a.close()
        b.close()


# ---- a fenced handle's other writes ----

def test_a_fenced_handle_cannot_trim_the_new_owners_stream(tmp_path: Path) -> None:
    """A hands s over to B (A has seen it and released). A's old handle still passes
    ``_check_writer`` (A's state keeps its old epoch until a sync), and ``_trim`` checks
    neither ``state.fenced`` nor the epoch, nor does the manifest's ``trim_stream``: the fenced
    writer trims records the new owner acknowledged."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        old = a.create_stream("s")
        old.append([b"1", b"2"])
        a.flush()
        taken = b.open_stream("s")
        taken.append([b"3", b"4"])
        b.flush()
        with pytest.raises(FencedError):
            old.append([b"late"])
        with pytest.raises(FencedError):
            old.trim(2)
    finally:
        a.close()
        b.close()


def test_a_node_taken_over_while_alive_cannot_open_streams_again(tmp_path: Path) -> None:
    """C takes A over while A runs; A's next open for write waited for a release that can
    never come (A can release nothing) and raised HandOverPending after the append timeout,
    instead of FencedError at once."""
    a = node(tmp_path, "a", wal="object", append_timeout_ms=10_000, **HELD)
    c = node(tmp_path, "c", wal="object", **HELD)
    try:
        a.create_stream("s").append([b"1"])
        c.take_over("a", wal="object")
        wait_for(lambda: a._failure is not None, what="A to see it was taken over")
        started = time.monotonic()
        with pytest.raises(FencedError, match="took over"):
            a.open_stream("s")
        assert time.monotonic() - started < 2
        assert values(c.open_stream("s", read_only=True)) == [b"1"]
    finally:
        a.close()
        c.close()
