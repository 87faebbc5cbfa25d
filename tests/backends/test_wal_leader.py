"""The leaders of the local WALs' group commit (streamlib/wal/_group.py): a thread that appends
and then leads writes its own record when no write is under way, in its own thread; appends
that come while a write is under way are the next group, written by the writer thread; close
waits for a leader's group. On both local backends, each held at its write by a gate."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from streamlib.testing.wal import make_record, recover_all
from streamlib.wal._group import GroupCommitWal, Pending
from streamlib.wal.block import BlockWal
from streamlib.wal.file import FileWal


def in_thread(call: Callable[[], object]) -> Future[object]:
    """``call`` on a thread of its own (named ``leader``); its outcome."""
    outcome: Future[object] = Future()

    def run() -> None:
        try:
            outcome.set_result(call())
        except BaseException as error:
            outcome.set_exception(error)

    threading.Thread(target=run, name="leader").start()
    return outcome


class Held:
    """Makes a WAL's writes wait at a gate when asked: ``hold()`` the next one, see it
    ``reached``, ``release()`` it. Counts the groups written and their sizes."""

    def __init__(self, wal: GroupCommitWal) -> None:
        self.groups: list[tuple[int, str]] = []  # (records, writing thread's name)
        self.reached = threading.Event()
        self._gate: threading.Event | None = None
        write = wal._write_group

        def held(group: list[Pending], start: int) -> tuple[list[int], int]:
            gate, self._gate = self._gate, None
            if gate is not None:
                self.reached.set()
                assert gate.wait(30), "a held write was never released"
            self.groups.append((len(group), threading.current_thread().name))
            return write(group, start)

        wal._write_group = held  # type: ignore[method-assign]

    def hold(self) -> None:
        self.reached.clear()
        self._gate = threading.Event()
        self._release = self._gate

    def release(self) -> None:
        self._release.set()


def completed_in(future: Future[int]) -> list[str]:
    """The names of the threads the future's callbacks ran in (one, once it completes)."""
    names: list[str] = []
    future.add_done_callback(lambda _: names.append(threading.current_thread().name))
    return names


def test_an_idle_wal_is_written_by_the_appending_thread(wal: GroupCommitWal) -> None:
    writes = Held(wal)
    future = wal.append(make_record(1, 0))
    names = completed_in(future)
    wal.lead()
    assert future.done() and future.result() >= 0  # written, synced, completed: no waiting
    me = threading.current_thread().name
    assert names == [me] and writes.groups == [(1, me)]
    wal.lead()  # nothing queued: nothing written
    assert writes.groups == [(1, me)]


def test_appends_during_a_write_are_the_next_group_of_the_writer_thread(
        wal: GroupCommitWal) -> None:
    writes = Held(wal)
    writes.hold()
    first = wal.append(make_record(1, 0))
    leader = in_thread(wal.lead)  # leads, and is held at its write
    assert writes.reached.wait(30)
    later = [wal.append(make_record(1, n)) for n in range(1, 6)]
    wal.lead()  # a write is under way: this thread does not lead
    assert not any(f.done() for f in later)
    writes.release()
    leader.result(timeout=30)
    positions = [f.result(timeout=30) for f in [first, *later]]
    assert positions == sorted(positions)
    assert [size for size, _ in writes.groups] == [1, 5]  # the five: one write, one sync
    assert writes.groups[1][1] == f"streamlib-{type(wal).__name__}"  # by the writer thread


def test_close_waits_for_a_leaders_group(wal: GroupCommitWal, tmp_path: Path) -> None:
    writes = Held(wal)
    writes.hold()
    future = wal.append(make_record(1, 0, size=1000))
    leader = in_thread(wal.lead)
    assert writes.reached.wait(30)
    closing = in_thread(wal.close)
    writes.release()
    closing.result(timeout=30)
    leader.result(timeout=30)
    position = future.result(timeout=0)  # written before the WAL let go of its files
    again = FileWal(tmp_path / "wal") if isinstance(wal, FileWal) else \
        BlockWal(tmp_path / "ring", direct_io=False)
    try:
        assert [e.position for e in recover_all(again)] == [position]
    finally:
        again.close()


def test_a_wal_with_a_linger_never_leads(tmp_path: Path) -> None:
    """A linger asks the writer thread to gather: an appending thread leaves it the group."""
    wal = FileWal(tmp_path / "wal", linger=0.001)
    recover_all(wal)
    try:
        writes = Held(wal)
        future = wal.append(make_record(1, 0))
        wal.lead()
        future.result(timeout=30)
        assert writes.groups == [(1, "streamlib-FileWal")]
    finally:
        wal.close()
