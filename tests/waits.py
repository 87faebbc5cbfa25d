"""Waiting for what another thread does: on a condition that shows it happened, with a timeout
generous enough for a loaded machine, never for a fixed time that only usually suffices."""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``condition()`` holds (looking every 10 ms), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


def _frames() -> dict[int, FrameType]:
    """``sys._current_frames()`` with the garbage collector held off: on CPython up to 3.11 a
    collection inside it can free a ``threading.local`` (every ObjectStore has one), whose
    finalizer waits for the runtime lock the call holds — a deadlock (CPython gh-106883)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()


def blocked_in(thread: threading.Thread, function: Callable[..., object]) -> bool:
    """Whether ``thread`` is waiting on a condition (``Condition.wait``, which ``Event.wait``
    uses too) inside a call of ``function`` (a function or method object: its code is looked
    for on the thread's stack). For the waits nothing else shows — an append waiting for room,
    a reader waiting at the tail — where a fixed sleep would only hope the thread got there.
    Once this is true, whatever wakes the wait must take the condition's lock, which the
    waiter gave up only once it was registered: it cannot miss the wake-up."""
    frame = _frames().get(thread.ident)  # type: ignore[arg-type]
    if frame is None or (frame.f_code.co_filename, frame.f_code.co_name) != (
            threading.__file__, "wait"):
        return False
    code = getattr(function, "__code__", None)
    assert code is not None, f"not a Python function: {function!r}"
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """``call`` on a thread of its own; the list gets its result or its exception."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome
