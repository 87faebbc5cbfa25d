"""The WAL contract suite: every backend's tests subclass :class:`WalContract`.

A subclass provides :meth:`WalContract.open_wal` (and, if the backend is unbounded, sets
``bounded = False``); pytest then runs every test below against it::

    class TestMyWal(WalContract):
        def open_wal(self, location, **options):
            return MyWal(location, **options)

``location`` is a fresh path per test (a ``tmp_path`` subfolder); ``options`` may carry
``capacity`` and ``full_timeout`` for the back-pressure tests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest

from streamlib.errors import StreamClosed, WalFullError
from streamlib.records import Record, RecordBatch
from streamlib.wal import Ticket, Wal, WalEntry, WalRecord
from streamlib.wal._format import record_size


def make_record(stream_id: int, offset: int, size: int = 100, *, epoch: int = 1,
                count: int = 1, opaque: bool = False) -> WalRecord:
    """A record whose bytes tell where it belongs (so that a mix-up cannot go unnoticed)."""
    marker = f"{stream_id}:{offset}:".encode()
    value = (marker * (size // len(marker) + 1))[:max(size, len(marker))]
    if opaque:
        batch = RecordBatch(value, count, base_timestamp=offset)
    else:
        batch = RecordBatch.from_records([Record(value, key=marker)] * count, timestamp=offset)
    return WalRecord(stream_id, epoch, batch.with_offset(offset))


def recover_all(wal: Wal) -> list[WalEntry]:
    return wal.recover().entries()


class WalContract:
    """The behaviour docs/wal.md promises, for any backend."""

    bounded = True

    def open_wal(self, location: Path, **options: object) -> Wal:
        raise NotImplementedError

    @pytest.fixture
    def location(self, tmp_path: Path) -> Path:
        return tmp_path / "wal"

    def reopen(self, wal: Wal, location: Path, **options: object) -> tuple[Wal, list[WalEntry]]:
        wal.close()
        again = self.open_wal(location, **options)
        return again, recover_all(again)

    # ---- appending and recovering ----

    def test_empty_wal_recovers_nothing(self, location: Path) -> None:
        wal = self.open_wal(location)
        recovery = wal.recover()
        assert recovery.entries() == [] and recovery.dropped == []
        assert wal.end_position == recovery.end == wal.trim_position
        wal.close()

    def test_appends_are_recovered_in_order_with_their_positions(self, location: Path) -> None:
        wal = self.open_wal(location)
        recover_all(wal)
        records = [make_record(i % 3, i, size=50 + 37 * i, epoch=i // 4, opaque=i % 2 == 1)
                   for i in range(40)]
        futures = [wal.append(r) for r in records]
        positions = [f.result(timeout=30) for f in futures]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        wal, entries = self.reopen(wal, location)
        assert [e.record for e in entries] == records
        assert [e.position for e in entries] == positions
        wal.close()

    def test_futures_complete_in_append_order(self, location: Path) -> None:
        wal = self.open_wal(location)
        recover_all(wal)
        done: list[int] = []
        lock = threading.Lock()

        def note(i: int) -> Callable[[Future[int]], None]:
            def callback(_: Future[int]) -> None:
                with lock:
                    done.append(i)
            return callback

        futures = []
        for i in range(200):
            future = wal.append(make_record(1, i, size=10 + i % 300))
            future.add_done_callback(note(i))
            futures.append(future)
        for f in futures:
            f.result(timeout=30)
        assert done == list(range(200))
        wal.close()

    def test_concurrent_appenders(self, location: Path) -> None:
        wal = self.open_wal(location)
        recover_all(wal)
        results: dict[tuple[int, int], int] = {}
        lock = threading.Lock()

        def producer(stream: int) -> None:
            futures = [(i, wal.append(make_record(stream, i, size=200))) for i in range(100)]
            for i, f in futures:
                position = f.result(timeout=30)
                with lock:
                    results[stream, i] = position

        threads = [threading.Thread(target=producer, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wal, entries = self.reopen(wal, location)
        assert len(entries) == 400
        found = {(e.record.stream_id, e.record.base_offset): e.position for e in entries}
        assert found == results
        for stream in range(4):  # each producer's records in its own order
            offsets = [e.record.base_offset for e in entries if e.record.stream_id == stream]
            assert offsets == list(range(100))
        wal.close()

    def test_positions_continue_across_restarts(self, location: Path) -> None:
        wal = self.open_wal(location)
        recover_all(wal)
        first = [wal.append(make_record(1, i)).result(timeout=30) for i in range(5)]
        wal, entries = self.reopen(wal, location)
        second = [wal.append(make_record(1, 5 + i)).result(timeout=30) for i in range(5)]
        assert min(second) > max(first)
        wal, entries = self.reopen(wal, location)
        assert [e.position for e in entries] == first + second
        assert [e.record.base_offset for e in entries] == list(range(10))
        wal.close()

    def test_large_record(self, location: Path) -> None:
        wal = self.open_wal(location)
        recover_all(wal)
        big = make_record(3, 0, size=3 << 20)
        small = make_record(3, 1)
        wal.append(big)
        wal.append(small).result(timeout=60)
        wal, entries = self.reopen(wal, location)
        assert [e.record for e in entries] == [big, small]
        wal.close()

    # ---- trim ----

    def test_trim_hides_records_before_it(self, location: Path) -> None:
        wal = self.open_wal(location)
        recover_all(wal)
        positions = [wal.append(make_record(1, i, size=1000)).result(timeout=30)
                     for i in range(30)]
        wal.trim(positions[20])
        assert wal.trim_position == positions[20]
        assert wal.usage == wal.end_position - positions[20]
        wal.trim(positions[10])  # trimming never goes back
        assert wal.trim_position == positions[20]
        wal, entries = self.reopen(wal, location)
        assert [e.record.base_offset for e in entries] == list(range(20, 30))
        assert wal.trim_position == positions[20]
        wal.trim(wal.end_position)
        wal, entries = self.reopen(wal, location)
        assert entries == [] and wal.usage == 0
        assert wal.append(make_record(1, 30)).result(timeout=30) >= positions[-1]
        wal.close()

    def test_recovery_counts_what_it_returns(self, location: Path) -> None:
        wal = self.open_wal(location)
        recover_all(wal)
        positions = [wal.append(make_record(1, i, size=300 + i)).result(timeout=30)
                     for i in range(10)]
        wal.trim(positions[4])
        wal.close()
        wal = self.open_wal(location)
        recovery = wal.recover()
        entries = recovery.entries()
        assert [e.record.base_offset for e in entries] == list(range(4, 10))
        assert recovery.records == 6
        assert recovery.bytes == sum(record_size(e.record) for e in entries)
        wal.close()

    def test_trim_beyond_the_end_is_refused(self, location: Path) -> None:
        wal = self.open_wal(location)
        recover_all(wal)
        wal.append(make_record(1, 0)).result(timeout=30)
        with pytest.raises(ValueError, match="beyond the end"):
            wal.trim(wal.end_position + 1)
        wal.close()

    # ---- lifecycle and bad input ----

    def test_append_needs_recovery_first_and_an_open_wal(self, location: Path) -> None:
        wal = self.open_wal(location)
        with pytest.raises(RuntimeError, match="recover"):
            wal.append(make_record(1, 0))
        recover_all(wal)
        with pytest.raises(RuntimeError, match="once"):
            wal.recover()
        with pytest.raises(TypeError, match="WalRecord"):
            wal.append(b"bytes")  # type: ignore[arg-type]  # the wrong type, on purpose
        wal.close()
        with pytest.raises(StreamClosed):
            wal.append(make_record(1, 0))
        wal.close()  # twice is fine

    def test_close_settles_every_pending_append(self, location: Path) -> None:
        wal = self.open_wal(location)
        recover_all(wal)
        futures = [wal.append(make_record(1, i, size=5000)) for i in range(100)]
        wal.close()
        settled = [f.done() for f in futures]
        assert all(settled)
        durable = sum(1 for f in futures if f.exception() is None)
        again = self.open_wal(location)
        assert len(recover_all(again)) == durable
        again.close()

    def test_wal_record_checks_its_fields(self) -> None:
        batch = RecordBatch(b"x", 1, base_timestamp=0)
        with pytest.raises(ValueError, match="base_offset"):
            WalRecord(1, 1, batch)  # type: ignore[arg-type]  # no offset, on purpose
        with pytest.raises(ValueError, match="epoch"):
            WalRecord(1, -1, batch.with_offset(0))
        with pytest.raises(TypeError, match="RecordBatch"):
            WalRecord(1, 1, b"x")  # type: ignore[arg-type]  # the wrong type, on purpose

    # ---- back-pressure (bounded backends) ----

    def test_full_wal_blocks_appends_until_a_trim(self, location: Path) -> None:
        if not self.bounded:
            pytest.skip("unbounded backend")
        capacity, total = 256 * 1024, 700  # 700 records of ~1.1 KiB: three times the capacity
        wal = self.open_wal(location, capacity=capacity, full_timeout=10.0)
        recover_all(wal)
        assert wal.capacity == capacity
        positions: list[int] = []
        finished = threading.Event()

        def producer() -> None:
            for i in range(total):
                positions.append(wal.append(make_record(1, i, size=1000)).result(timeout=30))
            finished.set()

        thread = threading.Thread(target=producer)
        thread.start()
        deadline = time.monotonic() + 30
        while wal.waiting_appends == 0 and thread.is_alive():  # it waits for room, or ends
            assert time.monotonic() < deadline, "the producer neither waits nor ends"
            thread.join(0.01)
        assert not finished.is_set(), "appends went on past the capacity"
        assert 0 < len(positions) < total and wal.usage <= capacity
        while not finished.is_set():  # trim what is durable; the producer wakes up each time
            if positions:
                wal.trim(positions[-1])
                assert wal.usage <= capacity
            finished.wait(0.05)
        thread.join()
        assert len(positions) == total and wal.usage <= capacity
        wal, entries = self.reopen(wal, location)
        assert entries[-1].record.base_offset == total - 1
        wal.close()

    def test_full_wal_times_out_with_a_clear_error(self, location: Path) -> None:
        if not self.bounded:
            pytest.skip("unbounded backend")
        wal = self.open_wal(location, capacity=64 * 1024, full_timeout=0.2)
        recover_all(wal)
        with pytest.raises(WalFullError, match="WAL full"):
            for i in range(1000):
                wal.append(make_record(1, i, size=1000))
        started = time.monotonic()
        with pytest.raises(WalFullError):
            wal.append(make_record(1, 0, size=1000), timeout=0.05)
        assert time.monotonic() - started < 1.0
        wal.close()

    def test_a_full_wal_refuses_at_once_an_append_given_no_time(self, location: Path) -> None:
        if not self.bounded:
            pytest.skip("unbounded backend")
        wal = self.open_wal(location, capacity=64 * 1024, full_timeout=10.0)
        recover_all(wal)
        last = 0
        with contextlib.suppress(WalFullError):
            for i in range(1000):
                last = wal.append(make_record(1, i, size=1000), timeout=0).result(timeout=30)
        ticket = Ticket()
        with pytest.raises(WalFullError):
            wal.submit(make_record(2, 0, size=1000), ticket, 0)
        assert not ticket.done  # nothing written, nothing to complete
        wal.trim(last)
        wal.append(make_record(2, 0, size=1000), timeout=0).result(timeout=30)
        wal.close()

    def test_a_waiter_that_gives_up_does_not_hold_up_an_earlier_one(self, location: Path) -> None:
        if not self.bounded:
            pytest.skip("unbounded backend")
        wal = self.open_wal(location, capacity=64 * 1024, full_timeout=10.0)
        recover_all(wal)
        last = 0
        with contextlib.suppress(WalFullError):
            for i in range(1000):
                last = wal.append(make_record(1, i, size=1000), timeout=0.05).result(timeout=30)
        early: list[Future[int]] = []
        first = threading.Thread(target=lambda: early.append(
            wal.append(make_record(2, 0, size=1000), timeout=10.0)))
        first.start()
        deadline = time.monotonic() + 30
        while wal.waiting_appends == 0:  # the first waiter is queued
            assert first.is_alive() and time.monotonic() < deadline, "the first never waited"
            first.join(0.01)
        # a later one gives up behind it
        with pytest.raises(WalFullError):
            wal.append(make_record(3, 0, size=1000), timeout=0.2)
        started = time.monotonic()
        wal.trim(last)  # room for everyone: the first waiter goes at once
        first.join(timeout=10)
        assert early and time.monotonic() - started < 2.0
        early[0].result(timeout=10)
        wal.close()
