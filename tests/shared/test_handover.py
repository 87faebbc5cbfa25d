"""Two writers of one stream on a shared manifest: opening it for write on node B while node A
appends hands it over — A's next appends fail with FencedError, nothing A appended after the
fence becomes visible, everything A acknowledged stays, B appends after it, the stream stays
dense. A dead A is taken over instead. In one process (two stores) and with real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

import fsspec
import pytest
from nodes import (
    HELD,
    crash,
    eventually_read,
    faulty_pair,
    gone,
    hand_over_during_an_append,
    lines_in,
    node,
    reap,
    values,
    wait_for,
)
from test_shared_store import CHILD, acknowledged, run_until_killed, shared_config

import streamlib
from streamlib import AppendResult, FencedError, HandOverPending
from streamlib.testing import FaultyFileSystem
from streamlib.testing.faults import access_denied
from streamlib.testing.s3 import S3Endpoint

# The hand-over protocol does not depend on the codec: the C pass runs it (conftest.py).
pytestmark = pytest.mark.once


def payload(who: str, n: int) -> list[bytes]:
    return [f"{who}:{n}:{i}".encode() for i in range(10)]


def check_stream(got: list[bytes], acked: dict[int, int], refused: set[int],
                 b_batches: int, b_base: int) -> None:
    """Dense; A's acknowledged batches where they were acknowledged; none of A's refused ones;
    B's after A's last acknowledged batch."""
    assert len(got) == b_base + 10 * b_batches
    for base, n in acked.items():
        assert got[base:base + 10] == payload("s", n)
    assert b_base >= max(acked) + 10
    a_part = {bytes(v) for v in got[:b_base]}
    for n in refused:
        assert not set(payload("s", n)) & a_part, f"refused batch {n} is visible"
    assert got[b_base:] == [v for n in range(b_batches) for v in payload("b", n)]


def test_opening_a_stream_on_another_node_hands_it_over(tmp_path: Path) -> None:
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        stream = a.create_stream("s")
        for n in range(20):
            stream.append(payload("s", n))
        a.flush()  # some uploaded, the rest only in A's WAL and log cache
        acked: dict[int, int] = {}
        refused: set[int] = set()
        started = threading.Event()

        def write() -> None:
            flight: deque[tuple[int, Future[AppendResult]]] = deque()
            n = 20
            while True:
                try:
                    flight.append((n, stream.append_future(payload("s", n))))
                    n += 1
                except FencedError:
                    break
                if len(flight) >= 8:
                    started.set()
                    done, future = flight.popleft()
                    try:
                        acked[future.result().base_offset] = done
                    except FencedError:
                        refused.add(done)
            for done, future in flight:
                try:
                    acked[future.result().base_offset] = done
                except FencedError:
                    refused.add(done)

        for n in range(20):
            acked[10 * n] = n
        writer = threading.Thread(target=write)
        writer.start()
        assert started.wait(30)
        wait_for(lambda: len(acked) >= 28, what="A to acknowledge appends in flight")
        taken = b.open_stream("s")  # the hand-over starts: A is fenced
        writer.join(timeout=60)
        assert not writer.is_alive()
        with pytest.raises(FencedError):
            stream.append(payload("s", 10**6))  # A's next append
        first = taken.append(payload("b", 0))  # waits for A's release
        for n in range(1, 5):
            taken.append(payload("b", n))
        b.flush()
        got = values(b.open_stream("s", read_only=True))
        check_stream(got, acked, refused, 5, first.base_offset)
        assert a.stats()["upload_failures"] == 0  # A's last commits went through
    finally:
        a.close()
        b.close()


def test_a_dead_writer_must_be_taken_over_before_its_stream_moves(tmp_path: Path) -> None:
    """A is killed while it owns the stream: B's appends wait for a release that never comes
    (HandOverPending); after take_over, they land after every record A acknowledged."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    config = {"path": str(tmp_path / "node-a"), "node_id": "a", "metadata": "manifest",
              "objects_url": f"file://{bucket}", "wal": "object", **HELD}
    acklog = tmp_path / "acks"
    run_until_killed(config, dict(os.environ), acklog, 50)
    acked = acknowledged(acklog)
    with node(tmp_path, "b", wal="object") as b:
        stream = b.open_stream("s")
        with pytest.raises(HandOverPending, match="take it over"):
            stream.append(payload("b", 0), timeout=0.5)
        b.take_over("a")
        first = stream.append(payload("b", 0))
        got = values(b.open_stream("s", read_only=True))
        check_stream(got, {base: n for base, n in acked.items()}, set(), 1, first.base_offset)


@pytest.mark.once
@pytest.mark.parametrize("server", ["moto_s3", "seaweedfs_s3"])
def test_two_writer_processes_of_one_stream(server: str, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    """Process A appends to a stream without pause; this process (node B) opens it for write:
    A's appends are refused from then on and it exits; B's appends land after everything A
    acknowledged."""
    endpoint: S3Endpoint = request.getfixturevalue(server)
    bucket = endpoint.create_bucket()
    options = endpoint.storage_options()
    env = {**os.environ, "S3_STORAGE_OPTIONS": json.dumps(options)}
    acklog = tmp_path / "acks"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(shared_config(bucket, tmp_path, "a", **HELD)),
         "s", "0", str(acklog)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        wait_for(lambda: lines_in(acklog) >= 100 or child.poll() is not None, timeout=60,
                 what="the writer process to acknowledge 100 appends")
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        with streamlib.open(shared_config(bucket, tmp_path, "b"),
                            storage_options=options) as b:
            stream = b.open_stream("s")
            first = stream.append(payload("b", 0))
            for n in range(1, 3):
                stream.append(payload("b", n))
            assert child.wait(timeout=60) == 0, child.stderr.read() if child.stderr else ""
            lines = acklog.read_text().splitlines()
            assert lines[-1] == "end"
            refused = {int(line.split()[1]) for line in lines if line.startswith("F ")}
            b.flush()
            got = values(b.open_stream("s", read_only=True))
            check_stream(got, acknowledged(acklog), refused, 3, first.base_offset)
    finally:
        reap(child)
        endpoint.delete_bucket(bucket)


def test_an_idle_owner_hands_over_too(tmp_path: Path) -> None:
    """A wrote and went quiet (nothing in flight to look at the manifest for): it still sees
    the hand-over within a fraction of a second, commits, releases; ownership moves back and
    forth."""
    a = node(tmp_path, "a", **HELD)
    b = node(tmp_path, "b", **HELD)
    try:
        stream_id = a.create_stream("s").id
        expected: list[bytes] = []
        for turn in range(4):
            writer = (a, b)[turn % 2]
            started = time.monotonic()
            handle = writer.open_stream(stream_id)
            for n in range(3):
                handle.append(payload(f"t{turn}", n))
                expected += payload(f"t{turn}", n)
            assert time.monotonic() - started < 5
        a.flush()
        b.flush()
        wait_for(lambda: a.get(stream_id).next_offset >= len(expected),
                 what="A to see B's last commit")
        assert values(a.open_stream(stream_id, read_only=True)) == expected
        assert values(b.open_stream(stream_id, read_only=True)) == expected
    finally:
        a.close()
        b.close()


def test_a_node_restarted_after_a_crash_hands_over_the_streams_it_owned(
        tmp_path: Path) -> None:
    """A writes s, uploads everything and crashes (no release: the metadata still says owner
    A). A restarts with nothing of s left in its WAL; B opens s: the live A must notice and
    release it, so that B's append lands instead of waiting for ever."""
    a = node(tmp_path, "a", **HELD)
    a.create_stream("s").append([b"1"])
    a.flush()
    crash(a)
    a = node(tmp_path, "a", **HELD)  # restarted (a deploy): alive and well
    b = node(tmp_path, "b", **HELD, append_timeout_ms=10_000)
    try:
        b.open_stream("s").append([b"2"])
        b.flush()
        assert values(b.open_stream("s", read_only=True)) == [b"1", b"2"]
    finally:
        a.close()
        b.close()


def test_destroying_a_stream_being_handed_over_does_not_wedge_the_old_owners_uploads(
        tmp_path: Path) -> None:
    """A has acknowledged, not yet uploaded appends in s and t; its uploads fail for now. B
    opens s (A fences s and must commit its data before releasing) and destroys it. A must
    drop s at its next look: once uploads work again, t's data is committed and B reads it."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    a, b, _ = faulty_pair(tmp_path, faulty)
    try:
        s, t = a.create_stream("s"), a.create_stream("t")
        s.append([b"s1"])
        t.append([b"t1"])
        failing = faulty.inject("put", access_denied, times=None, match=lambda p: "/data/" in p)
        b.open_stream("s")
        wait_for(lambda: failing.hits >= 1, what="A to see the hand-over and try to upload")
        b.destroy_stream("s")
        wait_for(lambda: gone(s), what="A to drop s")
        faulty.clear()
        a.flush()
        assert eventually_read(b, "t", 1) == [b"t1"]
    finally:
        faulty.clear()
        a.close()
        b.close()


@pytest.mark.usefixtures("without_lease")
def test_a_parked_append_answered_at_close_never_shows_after_a_restart(
        tmp_path: Path) -> None:
    """A hands s over to B with an acknowledged append not yet uploaded (A's uploads fail for
    now) and an append X parked (durable after the fence). A closes: its last upload fails,
    so s is not released and X stays in A's WAL. A restarts and recovers its WAL: if X was
    answered with FencedError, it must not be in the stream."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    a, b, options = faulty_pair(tmp_path, faulty)
    try:
        stream, _, future = hand_over_during_an_append(
            a, b, faulty, lambda p: "/data/" in p or p.endswith("/TRIM"), before=[b"acked"],
            upload_before=False)
        refused = stream.name
        assert refused is not None
        failing = faulty.rules[-1]
        wait_for(lambda: failing.hits >= 1, what="A to fence s and try to upload")
        assert not future.done()  # X is parked: A cannot release s
        a.close()
        try:
            future.result(timeout=10)
            answered = "acknowledged"
        except FencedError:
            answered = "FencedError"
        except Exception as error:
            answered = repr(error)
        faulty.clear()
        a = streamlib.open(tmp_path / "node-a", **options)  # restarted: recovered, uploaded
        got = eventually_read(b, refused, 1)
        assert not (answered == "FencedError" and b"X" in got), (
            f"an append answered with FencedError is visible: {got}")
    finally:
        faulty.clear()
        a.close()
        b.close()


def test_a_fenced_handle_cannot_trim_the_new_owners_stream(tmp_path: Path) -> None:
    """A hands s over to B, which appends. A's old handle can neither append nor trim."""
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
        assert values(b.open_stream("s", read_only=True)) == [b"1", b"2", b"3", b"4"]
    finally:
        a.close()
        b.close()
