"""The hand-over's state machine (docs/shared-stores.md): the legal moves, and nothing else."""

from __future__ import annotations

import threading

import pytest

from streamlib.errors import FencedError
from streamlib.shared.handover import (
    TRANSITIONS,
    WRITTEN_HERE,
    HandOver,
    IllegalTransition,
    Ownership,
)

pytestmark = pytest.mark.once  # a state machine, not bytes: the C pass runs it (conftest.py)

Own = Ownership
FENCE = FencedError("opened for write on node b")


def at(state: Ownership) -> HandOver:
    """A hand-over in ``state`` (reached by legal moves from READER)."""
    to_released = [Own.OWNED, Own.FENCED, Own.RELEASING, Own.RELEASED]
    path = {Own.READER: [], Own.OWNED: to_released[:1], Own.WAITING: [Own.WAITING],
            Own.FENCED: to_released[:2], Own.RELEASING: to_released[:3],
            Own.RELEASED: to_released}[state]
    handover = HandOver(threading.Condition())
    with handover.changed:
        for step in path:
            handover.move(step, reason=FENCE if step is Own.FENCED else None,
                          source="a" if step is Own.WAITING else None)
    assert handover.state is state
    return handover


@pytest.mark.parametrize("start", list(Own), ids=lambda s: s.value)
def test_only_the_moves_of_the_table_are_legal(start: Ownership) -> None:
    for to in Own:
        handover = at(start)
        with handover.changed:
            if to in TRANSITIONS[start]:
                handover.move(to, reason=FENCE, source="a")
                assert handover.state is to
            else:
                with pytest.raises(IllegalTransition, match=f"{start.value} -> {to.value}"):
                    handover.move(to, reason=FENCE, source="a")
                assert handover.state is start


def test_a_fence_keeps_its_reason_until_the_stream_is_opened_here_again() -> None:
    handover = at(Own.RELEASED)
    assert handover.fenced and handover.reason is FENCE and not handover.written_here
    with handover.changed:
        handover.move(Own.WAITING, source="b")
    assert not handover.fenced and handover.source == "b" and handover.written_here
    with handover.changed:
        handover.move(Own.OWNED)
    assert handover.source is None and handover.state in WRITTEN_HERE


def test_every_move_wakes_the_waiters() -> None:
    handover = at(Own.FENCED)
    waiting, woken = threading.Event(), threading.Event()

    def waiter() -> None:
        with handover.changed:
            waiting.set()  # the lock is given up only inside wait_for: the move comes after
            if handover.changed.wait_for(lambda: handover.state is Own.RELEASING, 60):
                woken.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(10)
    with handover.changed:
        handover.move(Own.RELEASING)
    assert woken.wait(10), "the move did not wake the waiter"
    thread.join(10)
