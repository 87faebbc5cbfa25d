"""Failures of work that is retried until it succeeds (uploads, looks at a shared metadata
store), logged as an outage: one WARNING when it begins, one INFO when it ends — never a line
per retry (the retries are DEBUG). Each line goes to the caller's logger, with the caller's
place in the code.

Lock order: ``Outage._lock`` is a leaf, and nothing is logged while it is held.
"""

from __future__ import annotations

import logging
import threading
import time

from streamlib.errors import describe


class Outage:
    """One kind of retried work of one node: ``what`` names it in the log, ``then`` says what
    happens while it fails, ``values`` (the node) end every line. Thread-safe."""

    def __init__(self, log: logging.Logger, what: str, then: str, **values: object) -> None:
        self._log = log
        self._what = what
        self._then = then
        self._values = values
        self._lock = threading.Lock()
        self._since: float | None = None  # GUARDED_BY(_lock): when the outage began (None: none)
        self._failures = 0  # GUARDED_BY(_lock)

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException) -> None:
        """An attempt failed: the first of an outage is a WARNING, the others DEBUG."""
        with self._lock:
            first = self._since is None
            if first:
                self._since = time.monotonic()
            self._failures += 1
        if first:
            self._log.warning(describe(f"{self._what} failing: {self._then}", **self._values,
                                       error=repr(error)), stacklevel=2)
        else:
            self._log.debug(describe(f"{self._what} failed again", **self._values,
                                     error=repr(error)), stacklevel=2)

    def worked(self) -> None:
        """An attempt worked: the end of an outage, if one was under way, is an INFO."""
        if self._since is None:  # no outage: the usual case, without the lock
            return
        with self._lock:
            since, failures = self._since, self._failures
            self._since, self._failures = None, 0
        if since is not None:
            self._log.info(describe(f"{self._what} work again", **self._values,
                                    failed_for=f"{time.monotonic() - since:.1f}s",
                                    failures=failures), stacklevel=2)


__all__ = ["Outage"]
