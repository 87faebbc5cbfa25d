"""First come, first served: appends that wait for room keep their order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from streamlib.errors import WalFullError


class Admission:
    """Tickets for appends that may have to wait for room.

    Every method is called with ``cond``'s lock held. A ticket is admitted only after every
    earlier one has been admitted or has given up, so waiting appends keep their order; the
    waiting is on ``cond``, which whoever frees room (a trim, a released flush) notifies."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._tickets = 0
        self._admitted = 0

    def wait(self, fits: Callable[[], bool], deadline: float, full: Callable[[], str],
             check_open: Callable[[], None]) -> None:
        """Return once it is this caller's turn and ``fits()``; raise WalFullError with the
        message ``full()`` at ``deadline`` (``time.monotonic()``); ``check_open`` after every
        wake-up (it raises if the WAL was closed or failed meanwhile)."""
        ticket = self._tickets
        self._tickets += 1
        try:
            while ticket != self._admitted or not fits():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WalFullError(full())
                self._cond.wait(left)
                check_open()
        finally:
            self._admitted += 1  # admitted or given up: the next ticket may go
            self._cond.notify_all()
