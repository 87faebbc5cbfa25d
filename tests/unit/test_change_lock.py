"""``Node.changes`` (streamlib.node.ChangeLock): opens share it, a commit holds it alone, and a
commit waiting for it goes before opens that come after it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from waits import wait_for

from streamlib.node import ChangeLock

pytestmark = pytest.mark.once  # a lock, not bytes: the C pass runs it (conftest.py)


def test_sharers_hold_it_together() -> None:
    lock = ChangeLock()
    inside = threading.Barrier(3, timeout=10)  # all three inside at once, or it breaks
    with ThreadPoolExecutor(3) as pool:
        def share() -> None:
            with lock.shared():
                inside.wait()
        for future in [pool.submit(share) for _ in range(3)]:
            future.result(timeout=10)


def test_one_alone_waits_for_the_sharers_and_goes_before_later_ones() -> None:
    lock = ChangeLock()
    order: list[str] = []
    first_in, let_first_go = threading.Event(), threading.Event()

    def early_sharer() -> None:
        with lock.shared():
            first_in.set()
            let_first_go.wait(10)
            order.append("early sharer")

    def alone() -> None:
        with lock:
            order.append("alone")

    def late_sharer() -> None:
        with lock.shared():
            order.append("late sharer")

    with ThreadPoolExecutor(3) as pool:
        early = pool.submit(early_sharer)
        assert first_in.wait(10)
        commit = pool.submit(alone)
        wait_for(lambda: lock._waiting_alone == 1, what="the commit to wait")
        late = pool.submit(late_sharer)
        assert not commit.done() and not late.done()
        let_first_go.set()
        for future in (early, commit, late):
            future.result(timeout=10)
    assert order == ["early sharer", "alone", "late sharer"]


def test_alone_means_alone() -> None:
    lock = ChangeLock()
    holders = 0
    guard = threading.Lock()

    def hold(shared: bool) -> None:
        nonlocal holders
        with lock.shared() if shared else lock:
            with guard:
                holders += 1
                assert shared or holders == 1, "a commit held it with others"
            with guard:
                holders -= 1

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(hold, n % 3 != 0) for n in range(300)]:
            future.result(timeout=30)
