"""Clocks for tests of the owner's lease (docs/shared-stores.md, "Clocks"): a node's lease clock
that runs at a rate of its own, and jumps forward as a suspended machine's ``CLOCK_BOOTTIME``
does::

    clock = DriftingClock(rate=0.995)     # 0.5 % slow against the clock others wait on
    use_lease_clock(store, clock)         # the store's node reads it from now on
    clock.jump(30.0)                      # the machine slept 30 s

Lock order: ``DriftingClock._lock`` is a leaf (the base clock is read under it).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamlib.node import lease_clock

if TYPE_CHECKING:
    from streamlib.store import StreamStore


class DriftingClock:
    """Seconds of ``base`` (the lease clock by default) since this clock was made, times
    ``rate``, plus every :meth:`jump`, counted from ``base``'s reading when it was made (so a
    node switched to it at once sees no step). Monotonic, also across threads: every reading
    is taken under one lock."""

    def __init__(self, rate: float = 1.0, base: Callable[[], float] = lease_clock) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"a clock's rate must be a positive number: rate=`{rate}`")
        self.rate = rate
        self._base = base
        self._lock = threading.Lock()
        self._origin = base()
        self._jumped = 0.0  # GUARDED_BY(_lock): seconds added by jumps

    def __repr__(self) -> str:
        return f"DriftingClock(rate={self.rate}, jumped={self._jumped})"

    def __call__(self) -> float:
        with self._lock:
            return self._origin + (self._base() - self._origin) * self.rate + self._jumped

    def jump(self, seconds: float) -> None:
        """Move forward by ``seconds`` at once (a suspend the clock counts)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a monotonic clock only moves forward: seconds=`{seconds}`")
        with self._lock:
            self._jumped += seconds


def use_lease_clock(store: StreamStore, clock: Callable[[], float]) -> None:
    """From now on ``store``'s node times its lease, its looks and its durable appends on
    ``clock`` (which must read no earlier than the node's clock reads now: readings taken
    before and after are compared). The one place tests reach the node's clock; an
    application has no reason to."""
    node = store._node
    if node is None:
        raise ValueError("the store is not open")
    node.clock = clock


__all__ = ["DriftingClock", "use_lease_clock"]
