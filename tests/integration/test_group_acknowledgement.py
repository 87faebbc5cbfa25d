"""Appends that the WAL wrote as one group are acknowledged as one: when the first of them is
answered, the whole group is readable already (one drain of the stream, one wake-up of its
readers), their futures complete in offset order, and all are done when the group's last one
is. The WAL's writes are held at a gate (white-box: the store's WAL), so that the group is
known."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

import streamlib
from streamlib.records import AppendResult
from streamlib.wal._group import GroupCommitWal, Pending


@pytest.mark.parametrize("wal", ["file", "block"])
def test_a_group_is_acknowledged_whole_and_in_order(tmp_path: Path, wal: str) -> None:
    with streamlib.open(tmp_path / "data", wal=wal) as store:
        stream = store.create_stream("s")
        log = store._wal
        assert isinstance(log, GroupCommitWal)
        write = log._write_group
        reached, gate = threading.Event(), threading.Event()
        groups: list[int] = []

        def held(group: list[Pending], start: int) -> tuple[list[int], int]:
            if not groups:  # the first write waits while the next appends queue
                reached.set()
                assert gate.wait(30), "the held write was never released"
            groups.append(len(group))
            return write(group, start)

        log._write_group = held  # type: ignore[method-assign]
        first = stream.append_future([b"first"])
        assert reached.wait(30)
        seen: list[tuple[int, int, list[bool]]] = []  # (base offset, next_offset, all done)
        futures: list[Future[AppendResult]] = []

        def answered(future: Future[AppendResult]) -> None:
            seen.append((future.result().base_offset, stream.next_offset,
                         [f.done() for f in futures]))

        for n in range(5):
            futures.append(stream.append_future([b"v%d" % n]))
        for future in futures:
            future.add_done_callback(answered)
        gate.set()
        results = [future.result(timeout=30) for future in futures]
        assert first.result(timeout=30).base_offset == 0
        assert [r.base_offset for r in results] == [1, 2, 3, 4, 5]
        assert groups == [1, 5]  # the five queued during the first write: one group
        assert [base for base, _, _ in seen] == [1, 2, 3, 4, 5]  # in offset order
        assert all(end == 6 for _, end, _ in seen)  # the whole group readable at the first
        assert seen[-1][2] == [True] * 5  # all done when the group's last one is
