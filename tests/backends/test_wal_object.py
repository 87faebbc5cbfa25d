"""The object WAL: the contract suite on memory://, file://, moto and SeaweedFS, plus what only
the object WAL has (pipelined PUTs released in order, retries, failure, gaps, epochs)."""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import fsspec
import pytest
from waits import wait_for

from streamlib.errors import StorageUnavailable, WalFullError
from streamlib.io import ObjectStore, RetryPolicy
from streamlib.testing import faults
from streamlib.testing.faults import FaultyFileSystem
from streamlib.testing.s3 import S3Endpoint, fresh_bucket
from streamlib.testing.wal import WalContract, make_record
from streamlib.wal import Damage, Recovery, Wal, WalEntry, WalRecord
from streamlib.wal._format import record_size
from streamlib.wal.object import ObjectWal


class TestObjectWalMemory(WalContract):
    bounded = False

    @pytest.fixture(autouse=True)
    def _root(self) -> Iterator[None]:
        self.url = f"memory://wal-{uuid.uuid4().hex}"
        yield
        fs = fsspec.filesystem("memory")
        with contextlib.suppress(FileNotFoundError):
            fs.rm(fs._strip_protocol(self.url), recursive=True)

    def open_wal(self, location: Path, **options: object) -> Wal:
        return ObjectWal(self.url, "node-1", **options)  # type: ignore[arg-type]


class TestObjectWalFile(WalContract):
    bounded = False

    def open_wal(self, location: Path, **options: object) -> Wal:
        return ObjectWal(f"file://{location}", "node-1", **options)  # type: ignore[arg-type]


class _S3Contract(WalContract):
    """A fresh bucket per test, made only when the test opens a WAL (skipped tests cost
    nothing)."""

    bounded = False
    server = ""

    @pytest.fixture(autouse=True)
    def _buckets(self, request: pytest.FixtureRequest) -> Iterator[None]:
        self._endpoint: S3Endpoint = request.getfixturevalue(self.server)
        self._store: ObjectStore | None = None
        with contextlib.ExitStack() as stack:
            self._stack = stack
            yield

    def open_wal(self, location: Path, **options: object) -> Wal:
        if self._store is None:
            bucket = self._stack.enter_context(fresh_bucket(self._endpoint))
            self._store = bucket.store("data")
        return ObjectWal(self._store, "node-1", **options)  # type: ignore[arg-type]


class TestObjectWalMoto(_S3Contract):
    server = "moto_s3"


class TestObjectWalSeaweedFS(_S3Contract):
    server = "seaweedfs_s3"


# ---- what only the object WAL has ----

NODE_KEY = re.compile(r"wal/node-1/(\d{20})/(\d{20})-(\d{20})-(\d{20})\.wal")


@pytest.fixture
def faulty() -> Iterator[tuple[FaultyFileSystem, ObjectStore]]:
    """A memory store behind a fault-injecting wrapper, with quick retries."""
    fs = FaultyFileSystem(fsspec.filesystem("memory"))
    root = f"/wal-faults-{uuid.uuid4().hex}"
    yield fs, ObjectStore(fs, root, retry=RetryPolicy(initial=0.005, cap=0.02, timeout=2.0))
    with contextlib.suppress(FileNotFoundError):
        fs.fs.rm(root, recursive=True)


_opened: list[ObjectWal] = []


@pytest.fixture(autouse=True)
def _close_every_wal() -> Iterator[None]:
    """Every WAL a test below opens is closed, whatever the test did."""
    yield
    while _opened:
        _opened.pop().close()


def opened(store: ObjectStore | str, node: str | int = "node-1", **options: Any
           ) -> tuple[ObjectWal, Recovery, list[WalEntry]]:
    wal = ObjectWal(store, node, **options)
    _opened.append(wal)
    recovery = wal.recover()
    return wal, recovery, recovery.entries()


def data_keys(store: ObjectStore) -> list[str]:
    return [i.key for i in store.list("wal/node-1/") if i.key.endswith(".wal")]


def is_data(path: str) -> bool:
    return path.endswith(".wal")


def append_alone(fs: FaultyFileSystem, wal: ObjectWal, record: WalRecord) -> Future[int]:
    """Append ``record`` and wait until its object is sealed and its PUT has begun: an object
    of its own (a fixed pause past the linger only makes that likely)."""
    puts = fs.calls.get("put", 0)
    future = wal.append(record)
    wait_for(lambda: fs.calls.get("put", 0) > puts, what="the record's PUT")
    return future


def test_completions_stay_in_order_while_puts_finish_out_of_order(
        faulty: tuple[FaultyFileSystem, ObjectStore]) -> None:
    fs, store = faulty
    wal, _, _ = opened(store)
    gate = threading.Event()
    fs.inject("put", gate=gate, match=is_data, times=1)  # the first object's PUT is held
    done: list[int] = []
    futures = []
    for i in range(20):
        future = append_alone(fs, wal, make_record(1, i))  # objects of one record
        future.add_done_callback(lambda _, i=i: done.append(i))
        futures.append(future)
    # Later PUTs land...
    wait_for(lambda: sum(op == "put" and is_data(path) for op, path, _ in fs.events) >= 3)
    assert not any(f.done() for f in futures)  # ...but their appends wait for the first
    gate.set()
    positions = [f.result(timeout=5) for f in futures]
    assert done == list(range(20)) and positions == sorted(positions)
    puts = [path for op, path, ok in fs.events if op == "put" and is_data(path)]
    assert len(puts) > 2 and puts[-1] == min(puts)  # the first object's PUT finished last


def test_puts_are_pipelined_up_to_max_inflight(faulty: tuple[FaultyFileSystem, ObjectStore]
                                               ) -> None:
    fs, store = faulty
    wal, _, _ = opened(store, max_inflight=4)
    gate = threading.Event()
    fs.inject("put", gate=gate, match=is_data, times=None)
    records = [make_record(2, i, size=300) for i in range(60)]
    futures = [append_alone(fs, wal, record) for record in records[:4]]  # one a slot
    futures += [wal.append(record) for record in records[4:30]]
    wait_for(lambda: fs.running_puts == 4)
    futures += [wal.append(record) for record in records[30:]]  # gather while slots are busy
    time.sleep(0.05)  # a chance for a fifth PUT to start wrongly: no event says it did not
    assert fs.max_concurrent_puts == 4
    gate.set()
    for f in futures:
        f.result(timeout=10)
    assert len(data_keys(store)) < len(records)
    wal.close()
    _, _, entries = opened(store)
    assert [e.record for e in entries] == records


def test_transient_errors_are_retried_and_not_fatal(faulty: tuple[FaultyFileSystem, ObjectStore]
                                                    ) -> None:
    fs, store = faulty
    wal, _, _ = opened(store)
    rule = fs.inject("put", faults.slow_down, match=is_data, times=3)
    fs.inject("put", faults.connection_reset, match=is_data, times=2)
    records = [make_record(1, i) for i in range(10)]
    futures = [wal.append(r) for r in records]
    positions = [f.result(timeout=10) for f in futures]
    assert rule.hits == 3
    later = make_record(1, 10)
    positions.append(wal.append(later).result(timeout=10))  # the WAL still takes appends
    wal.close()
    _, recovery, entries = opened(store)
    assert [e.record for e in entries] == [*records, later]
    assert [e.position for e in entries] == positions and recovery.dropped == []


def test_a_failed_put_fails_its_appends_and_every_later_one(
        faulty: tuple[FaultyFileSystem, ObjectStore]) -> None:
    fs, store = faulty
    wal, _, _ = opened(store)
    durable = [make_record(1, i) for i in range(3)]
    for record in durable:
        wal.append(record).result(timeout=5)
    gate = threading.Event()  # every append is in before the first PUT fails
    fs.inject("put", faults.access_denied, gate=gate, match=is_data, times=None)
    failed_order: list[int] = []
    futures = []
    for i in range(3, 10):
        future = wal.append(make_record(1, i))
        future.add_done_callback(lambda _, i=i: failed_order.append(i))
        futures.append(future)
    gate.set()
    for future in futures:
        with pytest.raises(StorageUnavailable, match="WAL flush failed"):
            future.result(timeout=5)
    assert failed_order == list(range(3, 10))
    assert isinstance(futures[0].exception().__cause__, PermissionError)  # type: ignore[union-attr]
    with pytest.raises(StorageUnavailable, match="accepts no appends"):
        wal.append(make_record(1, 10))
    wal.close()
    fs.clear()
    _, recovery, entries = opened(store)
    assert [e.record for e in entries] == durable and recovery.dropped == []


def test_a_failure_takes_back_the_later_objects_that_landed(
        faulty: tuple[FaultyFileSystem, ObjectStore]) -> None:
    fs, store = faulty
    wal, _, _ = opened(store)
    wal.append(make_record(1, 0)).result(timeout=5)
    # The next object's PUT is held, then fails for good; the ones after it land meanwhile.
    gate = threading.Event()
    fs.inject("put", faults.access_denied, gate=gate, match=is_data, times=1)
    futures = [append_alone(fs, wal, make_record(1, i)) for i in range(1, 8)]
    # Three objects landed (the first and two after the held one), counted from the finished
    # PUTs: a memory store is not listed while PUTs write to it.
    wait_for(lambda: sum(op == "put" and is_data(path) and ok
                         for op, path, ok in list(fs.events)) >= 3, what="two later objects")
    gate.set()
    for future in futures:
        with pytest.raises(StorageUnavailable):
            future.result(timeout=5)
    wal.close()  # waits for the clean-up
    assert len(data_keys(store)) == 1  # only the acknowledged object is left
    _, recovery, entries = opened(store)
    assert [e.record.base_offset for e in entries] == [0] and recovery.dropped == []


@pytest.mark.parametrize("where", ["file", "moto"])
def test_a_missing_object_is_reported_as_a_gap(request: pytest.FixtureRequest, tmp_path: Path,
                                               where: str) -> None:
    store = (ObjectStore.from_url(f"file://{tmp_path}") if where == "file"
             else request.getfixturevalue("moto_bucket").store("gap"))
    wal, _, _ = opened(store)
    records = [make_record(1, i, size=200) for i in range(6)]
    positions = [wal.append(r).result(timeout=5) for r in records]  # one object each
    wal.close()
    keys = data_keys(store)
    assert len(keys) == 6
    store.delete([keys[2]])
    wal, recovery, entries = opened(store)
    assert [e.record for e in entries] == records[:2] + records[3:]
    assert recovery.dropped == [Damage(positions[2], positions[3], "missing WAL object")]
    assert wal.end_position == positions[5] + record_size(records[5])
    wal.close()


def rekey_acked(store: ObjectStore, key: str, acked: int) -> None:
    """Give an object the ACKED its key would carry had its PUT been issued earlier."""
    match = NODE_KEY.fullmatch(key)
    assert match is not None
    epoch, start, end, _ = match.groups()
    store.put(f"wal/node-1/{epoch}/{start}-{end}-{acked:020d}.wal", store.get(key))
    store.delete([key])


def test_an_in_flight_tail_is_dropped_not_returned(tmp_path: Path) -> None:
    """A crash with PUTs in flight: object 3 never landed, 4 and 5 did, but their PUTs were
    issued before 3 was acknowledged (ACKED at 3's start), so none of 3, 4, 5 was acked."""
    store = ObjectStore.from_url(f"file://{tmp_path}")
    wal, _, _ = opened(store)
    records = [make_record(1, i, size=200) for i in range(6)]
    positions = [wal.append(r).result(timeout=5) for r in records]  # one object each
    end = wal.end_position
    wal.close()
    keys = data_keys(store)
    store.delete([keys[3]])
    for key in keys[4:]:
        rekey_acked(store, key, positions[3])
    wal, recovery, entries = opened(store)
    assert [e.record for e in entries] == records[:3]
    (torn,) = recovery.dropped
    assert (torn.start, torn.end) == (positions[3], end) and "torn tail" in torn.reason
    assert wal.end_position == end  # positions of the dropped tail are never used again
    again = make_record(1, 3, size=200)
    assert wal.append(again).result(timeout=5) == end
    wal.close()
    _, recovery, entries = opened(store)  # the verdict stands: the tail is superseded now
    assert [e.record for e in entries] == [*records[:3], again]
    assert all("superseded" in d.reason for d in recovery.dropped)
    assert {(d.start, d.end) for d in recovery.dropped} == {(positions[4], positions[5]),
                                                            (positions[5], end)}
    _, recovery, entries = opened(store)  # ...and was deleted once reported
    assert [e.record for e in entries] == [*records[:3], again] and recovery.dropped == []


def test_a_late_put_of_a_dead_writer_is_superseded(tmp_path: Path) -> None:
    """A writer dies with a PUT in flight; its successor recovers and acknowledges records at
    the same positions; then the dead writer's PUT lands. It must not replace them."""
    store = ObjectStore.from_url(f"file://{tmp_path}")
    wal, _, _ = opened(store)
    first = [make_record(1, i) for i in range(3)]
    positions = [wal.append(r).result(timeout=5) for r in first]
    end = wal.end_position
    wal.close()
    keys = data_keys(store)
    late_key, late_data = keys[2], store.get(keys[2])
    store.delete([late_key])  # "in flight" while the successor recovers
    wal, _, entries = opened(store)
    assert [e.record for e in entries] == first[:2]
    successor = make_record(1, 2, size=50)
    assert wal.append(successor).result(timeout=5) == positions[2]
    wal.close()
    store.put(late_key, late_data)  # the dead writer's PUT lands now
    _, recovery, entries = opened(store)
    assert [e.record for e in entries] == [*first[:2], successor]
    assert [(d.start, d.end) for d in recovery.dropped] == [(positions[2], end)]
    assert "superseded" in recovery.dropped[0].reason


def test_a_gap_a_later_flush_acknowledged_is_damage(tmp_path: Path) -> None:
    """Object 4's PUT was issued after 3 was acknowledged (ACKED past 3): 3 went missing
    after the fact, and 4 and 5 are returned."""
    store = ObjectStore.from_url(f"file://{tmp_path}")
    wal, _, _ = opened(store)
    records = [make_record(1, i, size=200) for i in range(6)]
    positions = [wal.append(r).result(timeout=5) for r in records]
    wal.close()
    store.delete([data_keys(store)[3]])
    _, recovery, entries = opened(store)
    assert [e.record for e in entries] == records[:3] + records[4:]
    assert recovery.dropped == [Damage(positions[3], positions[4], "missing WAL object")]


def test_a_missing_first_object_of_an_epoch_is_a_gap_too(tmp_path: Path) -> None:
    store = ObjectStore.from_url(f"file://{tmp_path}")
    wal, _, _ = opened(store)
    first = [wal.append(make_record(1, i)).result(timeout=5) for i in range(2)]
    wal.close()
    wal, _, _ = opened(store)  # a new epoch, starting where the first ended
    second = [make_record(2, i) for i in range(3)]
    positions = [wal.append(r).result(timeout=5) for r in second]
    wal.close()
    keys = data_keys(store)
    store.delete([keys[2]])  # the new epoch's first object; the next two claim it acked
    _, recovery, entries = opened(store)
    assert [e.position for e in entries] == first + positions[1:]
    assert recovery.dropped == [Damage(positions[0], positions[1], "missing WAL object")]


@pytest.mark.parametrize("damaged", [0, 1, 2])
def test_a_damaged_object_reports_its_damaged_part(
        faulty: tuple[FaultyFileSystem, ObjectStore], damaged: int) -> None:
    fs, store = faulty
    records = [make_record(1, i, size=300) for i in range(3)]
    size = record_size(records[0])
    wal, _, _ = opened(store, flush_bytes=3 * size, linger=60.0)  # three records an object
    gate = threading.Event()
    held = fs.inject("put", gate=gate, match=is_data, times=1)
    lone = make_record(2, 0)
    first = wal.append(lone)  # no PUT running: an object of its own, its PUT held
    wait_for(lambda: held.hits == 1, what="the first object's PUT")
    futures = [wal.append(r) for r in [*records, make_record(1, 3)]]  # gathered meanwhile
    gate.set()
    wal.close()  # flushes the last, alone
    positions = [f.result(timeout=10) for f in futures]
    assert first.result(timeout=0) < positions[0]
    keys = data_keys(store)
    assert len(keys) == 3
    data = bytearray(store.get(keys[1]))
    data[positions[damaged] - positions[0] + 100] ^= 0x40  # a bit flips in a payload
    store.put(keys[1], data)
    _, recovery, entries = opened(store)
    kept = [r for i, r in enumerate(records) if i != damaged]
    assert [e.record for e in entries] == [lone, *kept, make_record(1, 3)]
    reason = "damaged end of a WAL object" if damaged == 2 else \
        "damaged bytes between valid records"
    assert recovery.dropped == [Damage(positions[damaged], positions[damaged + 1], reason)]


def test_a_trim_inside_an_object_recovers_the_rest_of_it(
        faulty: tuple[FaultyFileSystem, ObjectStore]) -> None:
    """Recovery reads an object from the trim position on: the records there belong to a group
    that began before what was read, at the object's start, and are no damage for it."""
    fs, store = faulty
    records = [make_record(1, i, size=300) for i in range(4)]
    wal, _, _ = opened(store, flush_bytes=3 * record_size(records[1]), linger=60.0)
    gate = threading.Event()
    held = fs.inject("put", gate=gate, match=is_data, times=1)
    first = wal.append(records[0])  # no PUT running: an object of its own, its PUT held
    wait_for(lambda: held.hits == 1, what="the first object's PUT")
    rest = [wal.append(r) for r in records[1:]]  # gathered while it runs: one object
    gate.set()
    positions = [f.result(timeout=10) for f in [first, *rest]]
    assert len(data_keys(store)) == 2  # two objects, two groups
    wal.trim(positions[2])
    wal.close()
    _, recovery, entries = opened(store)
    assert [e.record for e in entries] == records[2:] and recovery.dropped == []


def test_a_truncated_object_is_reported(tmp_path: Path) -> None:
    store = ObjectStore.from_url(f"file://{tmp_path}")
    wal, _, _ = opened(store)
    positions = [wal.append(make_record(1, i, size=500)).result(timeout=5) for i in range(2)]
    end = wal.end_position
    wal.close()
    _, second = data_keys(store)
    store.put(second, store.get(second)[:100])
    _, recovery, entries = opened(store)
    assert [e.position for e in entries] == positions[:1]
    assert [(d.start, d.end) for d in recovery.dropped] == [(positions[1], positions[1] + 100),
                                                           (positions[1] + 100, end)]


def test_each_open_takes_a_new_epoch_and_keys_sort(tmp_path: Path) -> None:
    store = ObjectStore.from_url(f"file://{tmp_path}")
    positions = []
    for _ in range(3):
        wal, _, entries = opened(store)
        positions += [wal.append(make_record(1, len(positions) + i)).result(timeout=5)
                      for i in range(2)]
        wal.close()
    wal, _, _ = opened(store)  # writes nothing...
    wal.close()
    wal, _, entries = opened(store)  # ...but still holds its epoch
    assert wal.epoch == 5
    assert [e.position for e in entries] == positions
    keys = data_keys(store)
    parsed = [tuple(int(g) for g in NODE_KEY.fullmatch(k).groups()) for k in keys]  # type: ignore[union-attr]
    assert [p[0] for p in parsed] == [1, 1, 2, 2, 3, 3]
    assert keys == sorted(keys) and parsed == sorted(parsed)
    assert [p[1] for p in parsed] == positions
    assert all(a[2] == b[1] for a, b in itertools.pairwise(parsed))  # END of one is START of next
    markers = [i.key for i in store.list("wal/node-1/") if i.key.endswith("/OPEN")]
    assert len(markers) == 5
    wal.close()


def test_trim_deletes_objects_and_old_epochs(tmp_path: Path) -> None:
    store = ObjectStore.from_url(f"file://{tmp_path}")
    positions = []
    for _ in range(2):
        wal, _, _ = opened(store)
        positions += [wal.append(make_record(1, len(positions) + i)).result(timeout=5)
                      for i in range(3)]
        wal.close()
    wal, _, _ = opened(store)
    wal.trim(positions[4])
    assert len(data_keys(store)) == 2  # the object holding positions[4] and the one after
    wal.trim(wal.end_position)
    left = [i.key for i in store.list("wal/node-1/")]
    assert left == [f"wal/node-1/{wal.epoch:020d}/OPEN", "wal/node-1/TRIM"]
    assert store.get("wal/node-1/TRIM") == str(wal.end_position).encode()
    wal.close()
    wal, _, entries = opened(store)
    assert entries == [] and wal.usage == 0 and wal.epoch == 4
    wal.close()


def test_appends_wait_for_room_and_completions_make_it(
        faulty: tuple[FaultyFileSystem, ObjectStore]) -> None:
    fs, store = faulty
    size = record_size(make_record(1, 0, size=1000))
    wal, _, _ = opened(store, max_pending_bytes=3 * size, linger=0)
    gate = threading.Event()
    fs.inject("put", gate=gate, match=is_data, times=None)
    first = [wal.append(make_record(1, i, size=1000)) for i in range(3)]
    started = time.monotonic()
    with pytest.raises(WalFullError, match="max_pending_bytes"):
        wal.append(make_record(1, 3, size=1000), timeout=0.05)
    assert time.monotonic() - started < 5
    fourth: list[Future[int]] = []
    waiter = threading.Thread(target=lambda: fourth.append(
        wal.append(make_record(1, 3, size=1000))))
    waiter.start()
    wait_for(lambda: wal.waiting_appends == 1, what="the append to wait for room")
    assert waiter.is_alive()  # still waiting for room
    gate.set()  # PUTs complete, releases make room
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    for f in [*first, *fourth]:
        f.result(timeout=5)
    big = wal.append(make_record(1, 4, size=5000))  # larger than the bound: goes alone
    big.result(timeout=5)


def test_flush_bytes_seals_objects(faulty: tuple[FaultyFileSystem, ObjectStore]) -> None:
    """With no PUT running an object is sealed at once; while one runs, appends gather: an
    object is sealed by size without waiting out the linger, and the rest lingers — until no
    PUT runs any more, when it is sealed at once."""
    fs, store = faulty
    wal, _, _ = opened(store, flush_bytes=4096, linger=60.0)
    size = record_size(make_record(1, 0, size=1000))
    per_object = -(-4096 // size)
    gate = threading.Event()
    held = fs.inject("put", gate=gate, match=lambda path: path.endswith(".wal"))
    try:
        first = wal.append(make_record(1, 0, size=1000))  # no PUT running: sealed at once
        wait_for(lambda: held.hits == 1, what="the first object's PUT")
        futures = [wal.append(make_record(1, i, size=1000))
                   for i in range(1, 3 * per_object + 2)]

        def written() -> list[int]:  # listed only while no PUT writes to the memory store
            return [i.size for i in store.list("wal/node-1/") if i.key.endswith(".wal")]

        def finished_puts() -> int:
            return sum(op == "put" and path.endswith(".wal") and ok
                       for op, path, ok in list(fs.events))

        wait_for(lambda: finished_puts() == 3, what="three objects sealed by size")
        assert not futures[-1].done() and len(written()) == 3  # the last one lingers
        gate.set()  # the first PUT ends: nothing runs, the lingering object goes at once
        for future in [first, *futures]:
            future.result(timeout=10)
    finally:
        gate.set()
        wal.close()
    sizes = written()
    assert len(sizes) == 5 and all(4096 <= s < 4096 + size + 8 for s in sizes[1:4]), sizes


def test_nodes_have_their_own_logs(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    one, _, _ = opened(url, "node-1")
    two, _, _ = opened(url, 7, prefix="logs/wal")
    one.append(make_record(1, 0)).result(timeout=5)
    two.append(make_record(2, 0)).result(timeout=5)
    one.close()
    two.close()
    assert two.prefix == "logs/wal/7/"
    assert [e.record.stream_id for e in opened(url, "node-1")[2]] == [1]
    assert [e.record.stream_id for e in opened(url, 7, prefix="logs/wal")[2]] == [2]


def test_declares_shared_storage_and_no_capacity(tmp_path: Path) -> None:
    wal, _, _ = opened(f"file://{tmp_path}")
    assert wal.capabilities.shared_storage and wal.capacity is None


def test_bad_options_are_refused(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    for node in ["a/b", "", "..", True]:
        with pytest.raises(ValueError, match="node_id"):
            ObjectWal(url, node)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flush_bytes"):
        ObjectWal(url, "n", flush_bytes=0)
    with pytest.raises(ValueError, match="prefix"):
        ObjectWal(url, "n", prefix="a//b")
    with pytest.raises(ValueError, match="storage_options"):
        ObjectWal(ObjectStore.from_url(url), "n", storage_options={"x": 1})
    with pytest.raises(TypeError, match="ObjectStore"):
        ObjectWal(42, "n")  # type: ignore[arg-type]
