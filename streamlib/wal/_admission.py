"""First come, first served: appends that wait for room keep their order.

Lock order: no lock of its own. Every method runs under the lock of the WAL's condition it is
given (``GroupCommitWal._cond``, ``ObjectWal._lock``), and so do the callables it is passed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

from streamlib.errors import WalFullError


class Admission:
    """A queue of appends waiting for room.

    Every method is called with ``cond``'s lock held. Only the oldest live waiter may be
    admitted, so waiting appends keep their order; a waiter that gives up (timeout, closed WAL)
    leaves the queue without holding up the ones behind it, nor taking their turn. The waiting
    is on ``cond``, which whoever frees room (a trim, a released flush) notifies."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._numbers = itertools.count()  # GUARDED_BY(cond)
        self._waiting: deque[int] = deque()  # GUARDED_BY(cond): the waiters' numbers, oldest first

    @property
    def waiting(self) -> int:
        """Appends waiting for room now (caller holds ``cond``'s lock)."""
        return len(self._waiting)

    def wait(self, fits: Callable[[], bool], deadline: float, full: Callable[[], str],
             check_open: Callable[[], None]) -> None:
        """Return once this caller is the oldest waiter and ``fits()``; raise WalFullError with
        the message ``full()`` at ``deadline`` (``time.monotonic()``); ``check_open`` after
        every wake-up (it raises if the WAL was closed or failed meanwhile)."""
        if not self._waiting and fits():  # nobody waits and there is room: no queue, no wake
            return
        me = next(self._numbers)
        self._waiting.append(me)
        try:
            while self._waiting[0] != me or not fits():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WalFullError(full())
                self._cond.wait(left)
                check_open()
        finally:
            self._waiting.remove(me)
            self._cond.notify_all()  # the next waiter may be first now
