"""The store at its edges (docs/store.md): an append
acknowledged while a round trims the WAL, records after a recovery gap, a record as big as
half the WAL, a new WAL below the node's committed position, a stream destroyed during a
round, a cancelled append future, the object WAL's memory bound, a commit of unknown outcome,
two processes on one node, a fenced node. Every test asserts what a user sees: which appends
are acknowledged, what fetch returns after a crash or a reopen, which errors are raised."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import fsspec
import pytest
from waits import blocked_in, wait_for

import streamlib
from streamlib import (
    AppendResult,
    CorruptDataError,
    FencedError,
    NodeLockedError,
    RecordBatch,
    Stream,
    StreamNotFound,
    StreamStore,
    WalFullError,
)
from streamlib.meta.local import SQLiteMetadataStore
from streamlib.testing.faults import Call, FaultyFileSystem, FaultyMetadataStore, internal_error
from streamlib.wal._format import HEADER_SIZE
from streamlib.wal.file import FileWal

NEVER = 3_600_000
"""upload_interval_ms for tests that decide themselves when data is uploaded (flush, close)."""

WAL_BYTES = "8MiB"  # a small block ring: quick to create


def open_store(path: Path, **overrides: Any) -> StreamStore:
    """A local store in ``path`` whose uploads happen only on flush() and close()."""
    overrides.setdefault("upload_interval_ms", NEVER)
    overrides.setdefault("wal_bytes", WAL_BYTES)
    return streamlib.open(path, **overrides)


def values(stream: Stream, start: int = 0) -> list[bytes]:
    return [r.value for _, r in stream.fetch(start, max_bytes=1 << 24).records()]


def faulty_store(path: Path, **overrides: Any) -> tuple[StreamStore, FaultyFileSystem]:
    """A store whose objects (and object WAL) go to memory through a fault injector; reopen
    it with :func:`reopen` (the same objects, no faults)."""
    faulty = FaultyFileSystem(fsspec.filesystem("memory"))
    overrides.setdefault("upload_interval_ms", NEVER)
    store = streamlib.open(path, filesystem=faulty, objects_url=objects_url(path),
                           **overrides)
    return store, faulty


def objects_url(path: Path) -> str:
    return f"memory://{path.name}-{abs(hash(str(path)))}"


def reopen(path: Path, **overrides: Any) -> StreamStore:
    overrides.setdefault("upload_interval_ms", NEVER)
    return streamlib.open(path, objects_url=objects_url(path), **overrides)


def is_data(key: str) -> bool:
    return "/data/" in key


def is_wal_record(key: str) -> bool:
    return key.endswith(".wal")


def run_child(code: str, *args: object) -> str:
    """Run ``code`` in a child Python (it ends itself with os._exit: a crash, no close)."""
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---- a round meets an append inside its WAL call ----

# Stream b's record is in the WAL, but b's append has not yet recorded it as in flight (held
# right there, in Inflight's constructor). Stream a's next append writes it (a's record comes
# after it in the same WAL) and is acknowledged, and a round runs: it must not trim the WAL past
# b's record, which only the WAL holds. Then the process dies before any later round.
SUBMIT_WINDOW_CHILD = """
import os, sys, threading
import streamlib
import streamlib.write as write_module

path, wal = sys.argv[1], sys.argv[2]
store = streamlib.open(path, upload_interval_ms=3_600_000, wal=wal, wal_bytes="8MiB")
a = store.create_stream("a")
b = store.create_stream("b")
a.append([b"a0"])
store.flush()
original = write_module.Inflight
entered, gate = threading.Event(), threading.Event()

class Held(original):
    __slots__ = ()

    def __init__(self, batch, wal, started):
        if threading.current_thread().name == "b-writer":
            entered.set()  # b's record is in the WAL ...
            gate.wait()  # ... and b's stream does not know of it yet
        super().__init__(batch, wal, started)

write_module.Inflight = Held
acked = []
writer = threading.Thread(target=lambda: acked.append(b.append([b"b-acked"])), name="b-writer")
writer.start()
entered.wait()
a.append([b"a1"])  # written after b's record, and acknowledged: the frontier passes b's
store.flush()  # a round commits a1 and trims the WAL
gate.set()
writer.join()
print(acked[0].base_offset, acked[0].count, flush=True)
os._exit(0)  # a crash: no round after
"""


@pytest.mark.once
@pytest.mark.parametrize("wal", ["file", "block", "object"])
def test_an_append_acknowledged_while_a_round_trims_survives_a_crash(tmp_path: Path,
                                                                      wal: str) -> None:
    path = tmp_path / "data"
    assert run_child(SUBMIT_WINDOW_CHILD, path, wal).split() == ["0", "1"]  # b's ack: offset 0
    with open_store(path, wal=wal) as store:
        b = store.open_stream("b")
        assert b.next_offset == 1
        assert values(b) == [b"b-acked"]
        assert values(store.open_stream("a")) == [b"a0", b"a1"]


# ---- records after a recovery gap ----

GAP_CHILD = """
import os, sys
import streamlib

store = streamlib.open(sys.argv[1], upload_interval_ms=3_600_000)
s = store.create_stream("s")
t = store.create_stream("t")
for i in range(3):
    s.append([b"r%d" % i])
t.append([b"t0"])  # another stream's record after the gap
os._exit(0)  # a crash: everything is in the WAL only
"""


def damage_second_record(wal_dir: Path) -> None:
    """Flip a bit in the body of the second record of the last file-WAL segment: damage in
    the middle of the log, not a torn tail."""
    segment = sorted(wal_dir.glob("*.wal"))[-1]
    data = bytearray(segment.read_bytes())
    first = HEADER_SIZE + struct.unpack_from("<I", data, 16)[0]  # body length at byte 16
    second = HEADER_SIZE + struct.unpack_from("<I", data, first + 16)[0]
    data[first + second - 2] ^= 0xFF
    segment.write_bytes(bytes(data))


@pytest.mark.once
def test_a_stream_with_a_recovery_gap_stays_read_only_at_every_open(tmp_path: Path) -> None:
    path = tmp_path / "data"
    run_child(GAP_CHILD, path)
    damage_second_record(path / "wal")
    for _ in range(3):  # each open (and its final round at close) keeps the records after it
        with open_store(path) as store:
            s = store.open_stream("s")
            assert (s.start_offset, s.next_offset) == (0, 1)  # r0; r1 is lost, r2 after it
            assert values(s) == [b"r0"]
            with pytest.raises(CorruptDataError, match="gap"):
                s.append([b"would reuse offset 1 or 2"])
            assert s.next_offset == 1
            t = store.open_stream("t")  # other streams are not held back
            assert values(t) == [b"t0"]
            store.flush()
    with open_store(path) as store:
        t = store.open_stream("t")
        assert t.append([b"t1"]) == AppendResult(1, 1)
    with open_store(path) as store:
        assert values(store.open_stream("t")) == [b"t0", b"t1"]
        with pytest.raises(CorruptDataError):
            store.open_stream("s").append([b"x"])


# ---- a record as big as half the WAL ----

def test_a_round_with_nothing_in_flight_empties_the_wal(tmp_path: Path) -> None:
    # Records of 60% of the WAL: each fits only once the one before is trimmed away, which a
    # round must do although no later append moves the frontier past it.
    with open_store(tmp_path / "data", wal_bytes="1MiB", append_timeout_ms=1000) as store:
        s = store.create_stream()
        assert s.append(RecordBatch(b"x" * 600_000, count=1)) == AppendResult(0, 1)
        store.flush()
        assert store.stats()["wal_usage_bytes"] == 0
        assert store.stats()["pending_upload_bytes"] == 0
        assert s.append(RecordBatch(b"y" * 600_000, count=1)) == AppendResult(1, 1)
        store.flush()
        assert s.append(RecordBatch(b"z" * 600_000, count=1)) == AppendResult(2, 1)
    with open_store(tmp_path / "data", wal_bytes="1MiB") as again:
        got = again.open_stream(s.id).fetch(0, max_bytes=1 << 22)
        assert [b.payload[:1] for b in got] == [b"x", b"y", b"z"]


def test_a_round_frees_the_room_an_append_is_waiting_for(tmp_path: Path) -> None:
    # As above, but the second append is already waiting for room when the round runs (another
    # writer, or the background uploader a moment late): nothing is in flight in any stream.
    with open_store(tmp_path / "data", wal_bytes="1MiB", append_timeout_ms=1000) as store:
        s = store.create_stream()
        assert s.append(RecordBatch(b"x" * 500_000, count=1)) == AppendResult(0, 1)
        future: Future[AppendResult] = Future()

        def waiting_append() -> None:
            try:
                future.set_result(s.append(RecordBatch(b"y" * 600_000, count=1)))
            except BaseException as error:
                future.set_exception(error)

        writer = threading.Thread(target=waiting_append)
        writer.start()
        # The append waits for room in the WAL: 500 KB + 600 KB > 1 MiB.
        wait_for(lambda: blocked_in(writer, FileWal.submit), what="the append to wait for room")
        store.flush()
        try:
            assert future.result(timeout=5) == AppendResult(1, 1)
        finally:
            writer.join()


# ---- a new WAL below the node's committed WAL position ----

@pytest.mark.parametrize("change", ["wal removed", "wal switched"])
def test_a_new_wal_below_the_node_position_commits_and_reopens(tmp_path: Path,
                                                               change: str) -> None:
    path = tmp_path / "data"
    with open_store(path) as store:  # the node's committed WAL position: ~110 KB
        s = store.create_stream("s")
        for _ in range(100):
            s.append([b"x" * 1000])
    overrides: dict[str, Any] = {}
    if change == "wal removed":  # after a clean close, nothing in it was needed
        shutil.rmtree(path / "wal")
    else:
        overrides["wal"] = "object"
    for n in range(3):
        with open_store(path, **overrides) as store:
            s = store.open_stream("s")
            assert s.append([b"after-%d" % n]) == AppendResult(100 + 3 * n, 1)
            store.flush()
            assert store.stats()["upload_failures"] == 0
            assert store.stats()["pending_upload_bytes"] == 0
            s.append([b"at-close-%d" % n])  # uploaded by close
            s.append([b"again-%d" % n])
    with open_store(path, **overrides) as store:
        got = values(store.open_stream("s"))
        assert got[:100] == [b"x" * 1000] * 100
        assert got[100:] == [v for n in range(3)
                             for v in (b"after-%d" % n, b"at-close-%d" % n, b"again-%d" % n)]
        assert store.stats()["upload_failures"] == 0


# ---- a stream destroyed during a round ----

@pytest.mark.parametrize("call", ["flush", "trim"])
def test_a_stream_destroyed_during_a_round_does_not_fail_another_caller(tmp_path: Path,
                                                                         call: str) -> None:
    store, faulty = faulty_store(tmp_path)
    with store:
        a, b = store.create_stream(), store.create_stream()
        a.append([b"a0"])
        b.append([b"b0"])
        gate = threading.Event()
        held = faulty.inject("put", gate=gate, match=is_data)  # the round's PUT waits
        outcome: list[BaseException | None] = []

        def caller() -> None:
            try:
                store.flush() if call == "flush" else a.trim(1)
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)

        thread = threading.Thread(target=caller)
        thread.start()
        try:
            wait_for(lambda: held.hits == 1)
            store.destroy_stream(b.id)  # b's range is in the round's object
        finally:
            gate.set()
            thread.join()
        assert outcome == [None]  # a caller that never touched b
        assert store.stats()["upload_failures"] == 0
        assert store.stats()["pending_upload_bytes"] == 0
        assert a.start_offset == (1 if call == "trim" else 0)
    with reopen(tmp_path) as again:
        a_again = again.open_stream(a.id)
        assert (a_again.start_offset, a_again.next_offset) == (1 if call == "trim" else 0, 1)
        assert values(a_again, a_again.start_offset) == ([] if call == "trim" else [b"a0"])
        with pytest.raises(StreamNotFound):
            again.open_stream(b.id)


# ---- a cancelled append future ----

def test_a_cancelled_append_does_not_stop_later_appends(tmp_path: Path) -> None:
    # The object WAL acknowledges after its PUT: holding the PUT keeps an append in flight.
    store, faulty = faulty_store(tmp_path, wal="object")
    gate = threading.Event()
    try:
        s = store.create_stream()
        faulty.inject("put", gate=gate, match=is_wal_record)

        async def timed_out() -> None:  # a caller-side timeout cancels the append's future
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(s.append_async([b"x"]), timeout=0.05)

        asyncio.run(timed_out())
        gate.set()
        assert s.append_future([b"y"]).result(timeout=3) == AppendResult(1, 1)

        gate2 = threading.Event()
        faulty.inject("put", gate=gate2, match=is_wal_record)
        future: Future[AppendResult] = s.append_future([b"z"])
        assert not future.cancel()  # the append goes on whatever the caller does
        assert not future.cancelled()
        gate2.set()
        assert future.result(timeout=3) == AppendResult(2, 1)
        assert s.append([b"w"]) == AppendResult(3, 1)
        assert values(s) == [b"x", b"y", b"z", b"w"]  # the timed-out append was written
    finally:
        gate.set()
        store.close()
    with reopen(tmp_path, wal="object") as again:
        assert values(again.open_stream(s.id)) == [b"x", b"y", b"z", b"w"]


# ---- the object WAL's memory bound ----

def test_the_object_wal_bounds_data_waiting_for_upload_by_wal_bytes(tmp_path: Path) -> None:
    store, faulty = faulty_store(tmp_path, wal="object", wal_bytes="1MiB", upload_interval_ms=20,
                                 retry_timeout_ms=50, append_timeout_ms=300)
    with store:
        faulty.inject("put", internal_error, times=None, match=is_data)  # uploads fail
        s = store.create_stream()
        acked = 0
        with pytest.raises(WalFullError, match="wal_bytes"):
            for n in range(40):  # 4 MB: four times wal_bytes
                s.append(RecordBatch(b"x" * 100_000, count=1))
                acked = n + 1
        assert 5 <= acked <= 10
        assert store.stats()["pending_upload_bytes"] <= 1 << 20  # type: ignore[operator]
        faulty.clear()  # back up: the uploader's next try goes through
        wait_for(lambda: store.stats()["pending_upload_bytes"] == 0)
        assert s.append(RecordBatch(b"y" * 100_000, count=1)) == AppendResult(acked, 1)
    with reopen(tmp_path, wal="object") as again:
        got = again.open_stream(s.id).fetch(0, max_bytes=1 << 24)
        assert [b.payload[:1] for b in got] == [b"x"] * acked + [b"y"]


# ---- a commit of unknown outcome ----

def test_a_commit_of_unknown_outcome_does_not_wedge_the_uploader(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.mkdir()
    faulty = FaultyMetadataStore(SQLiteMetadataStore(path / "meta.sqlite"))
    with open_store(path, wal_bytes="1MiB", append_timeout_ms=1000,
                    metadata_store=faulty) as store:
        s = store.create_stream()

        def applied_then_lost(call: Call) -> BaseException:  # the reply is lost after it applied
            return ConnectionResetError("connection reset after the commit (injected)")

        def not_applied(call: Call) -> BaseException:
            return ConnectionResetError("connection reset before the commit (injected)")

        s.append([b"a"])
        faulty.inject("commit", applied_then_lost, after=True, times=None)
        with pytest.raises(ConnectionResetError):
            store.flush()
        faulty.clear()
        store.flush()  # was: CommitConflict, at every round from then on
        assert store.stats()["wal_usage_bytes"] == 0
        assert values(s) == [b"a"]

        s.append([b"b"])
        faulty.inject("commit", not_applied, times=None)
        with pytest.raises(ConnectionResetError):
            store.flush()
        faulty.clear()
        store.flush()
        assert values(s) == [b"a", b"b"]
        for _ in range(20):  # 2 MB through a 1 MiB WAL: it is trimmed round after round
            s.append(RecordBatch(b"c" * 100_000, count=1))
            store.flush()
        assert store.stats()["wal_usage_bytes"] == 0
        assert store.stats()["upload_failures"] == 2
    with open_store(path, wal_bytes="1MiB") as again:
        got = again.open_stream(s.id)
        assert got.next_offset == 22
        assert [r.value for _, r in got.fetch(0, 2).records()] == [b"a", b"b"]
        batches = got.fetch(2, max_bytes=1 << 24).batches
        assert [(b.base_offset, b.payload[:1]) for b in batches] == [(n, b"c")
                                                                    for n in range(2, 22)]


# ---- two processes on one node ----

SECOND_OPENER_CHILD = """
import sys
import streamlib

try:
    streamlib.open(sys.argv[1], wal="object", upload_interval_ms=3_600_000).close()
    print("opened")
except streamlib.NodeLockedError:
    print("NodeLockedError")
"""


def test_a_second_opener_of_a_node_is_refused_with_the_object_wal(tmp_path: Path) -> None:
    path = tmp_path / "data"
    with open_store(path, wal="object") as store:
        s = store.create_stream()
        assert s.append([b"before"]) == AppendResult(0, 1)
        store.flush()
        assert run_child(SECOND_OPENER_CHILD, path).split() == ["NodeLockedError"]
        second: StreamStore | None = None
        try:
            with pytest.raises(NodeLockedError, match="node"):
                second = open_store(path, wal="object")
        finally:
            if second is not None:
                second.close()
        with open_store(path, wal="object", node_id="1"):  # another node of the store: fine
            pass
        assert s.append([b"after"]) == AppendResult(1, 1)  # the first opener is unharmed
        store.flush()
    assert run_child(SECOND_OPENER_CHILD, path).split() == ["opened"]  # closed: free again
    with open_store(path, wal="object") as again:
        assert values(again.open_stream(s.id)) == [b"before", b"after"]


@pytest.mark.parametrize("wal", ["file", "object"])
def test_a_fenced_commit_stops_the_store_from_acknowledging_appends(tmp_path: Path,
                                                                     wal: str) -> None:
    path = tmp_path / "data"
    store = open_store(path, wal=wal)
    try:
        s = store.create_stream()
        s.append([b"before"])
        store.flush()
        # Another process takes the node over (a new node epoch), as open does.
        other = SQLiteMetadataStore(path / "meta.sqlite")
        try:
            other.register_node(store.node_id)
        finally:
            other.close()
        s.append([b"in flight at the takeover"])  # nothing has told this store yet
        with pytest.raises(FencedError):
            store.flush()
        with pytest.raises(FencedError, match="took over"):
            s.append([b"never acknowledged"])
        with pytest.raises(FencedError):  # and a fenced node creates nothing
            store.create_stream()
        assert values(s) == [b"before", b"in flight at the takeover"]
    finally:
        store.close()
    with open_store(path, wal=wal) as again:  # what was acknowledged is in the WAL still
        assert values(again.open_stream(s.id)) == [b"before", b"in flight at the takeover"]
        assert [info.id for info in again.streams()] == [s.id]
