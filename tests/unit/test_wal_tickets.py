"""A group WAL's tickets (``Wal.submit``): a group's tickets are all set before the first of
their callbacks runs, callbacks run in submission order, one that raises stops none of the
others; a submission that its caller will lead wakes no writer thread, one that nobody leads
is written by the writer thread. On both local backends."""

from __future__ import annotations

import threading

from streamlib.testing.wal import make_record
from streamlib.wal import Ticket
from streamlib.wal._group import GroupCommitWal


class Seen(Ticket):
    """Notes, at its callback, the thread and which tickets of ``group`` were done."""

    __slots__ = ("called", "done_then", "group", "raises", "thread")

    def __init__(self, group: list[Seen], called: list[Seen], *, raises: bool = False) -> None:
        super().__init__()
        self.group = group
        self.called = called
        self.raises = raises
        self.done_then: list[bool] = []
        self.thread = ""
        group.append(self)

    def completed(self) -> None:
        self.thread = threading.current_thread().name
        self.done_then = [ticket.done for ticket in self.group]
        self.called.append(self)
        if self.raises:
            raise RuntimeError("a callback that fails")


def test_a_group_sets_every_ticket_before_its_first_callback(wal: GroupCommitWal) -> None:
    group: list[Seen] = []
    called: list[Seen] = []
    for n in range(5):
        wal.submit(make_record(1, n), Seen(group, called), lead=True)  # nobody else writes
    assert not any(ticket.done for ticket in group)
    wal.lead()  # one group: all five, written in this thread
    assert called == group  # in submission order
    assert all(ticket.done_then == [True] * 5 for ticket in group)
    positions = [ticket.position for ticket in group]
    assert None not in positions and positions == sorted(positions)
    me = threading.current_thread().name
    assert {ticket.thread for ticket in group} == {me}


def test_a_callback_that_raises_stops_none_of_the_others(wal: GroupCommitWal) -> None:
    group: list[Seen] = []
    called: list[Seen] = []
    wal.submit(make_record(1, 0), Seen(group, called, raises=True), lead=True)
    wal.submit(make_record(1, 1), Seen(group, called), lead=True)
    wal.lead()
    assert called == group
    later = wal.append(make_record(1, 2))  # the WAL goes on
    assert later.result(timeout=30) > (group[1].position or 0)


def test_a_submission_nobody_leads_is_written_by_the_writer_thread(
        wal: GroupCommitWal) -> None:
    done = threading.Event()

    class Signal(Ticket):
        __slots__ = ("thread",)

        def completed(self) -> None:
            self.thread = threading.current_thread().name
            done.set()

    ticket = Signal()
    wal.submit(make_record(1, 0), ticket)
    assert done.wait(30)
    assert ticket.position is not None and ticket.thread == f"streamlib-{type(wal).__name__}"
