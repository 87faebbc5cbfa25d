"""Watching an event loop for what would stall it: calls to blocking primitives made by
streamlib's code on the loop's thread (found structurally, whatever the machine's load), and
the loop's stalls as a ticker sees them, with the share the machine's load explains taken out.

- :class:`BlockingCalls` installs a profile hook (``sys.setprofile``) on the loop's thread: it
  notes every call of a primitive that can wait — a condition's, event's or semaphore's wait,
  an explicit lock ``acquire`` (unless ``blocking=False``), ``Future.result``, a thread's
  ``join``, a queue's ``get``/``put``, ``time.sleep``, file and socket I/O, ``os.fsync``, the
  filesystem's metadata calls, any SQLite call, fsspec's ``sync`` — made while a frame of
  streamlib's code is on the stack. A ``with lock:`` is not seen (a profile hook sees calls,
  not ``__enter__``): streamlib holds those briefly, never across I/O (each module's lock
  order says so). Starting a thread waits for it to run (``Thread.start``): allowed, it is not
  I/O, and ``open_async`` and ``aclose`` start one each.
- :class:`Ticker` runs a task that sleeps 5 ms at a time and notes how late each tick came.
  Each tick also reads the run-queue delay of every thread of this process
  (``/proc/self/task/*/schedstat``: time runnable but not running, i.e. waiting for a CPU): a
  stall is charged to the code only for the part that no thread's wait for a CPU explains,
  nor the garbage collector (which stops every thread). Where the kernel does not give the
  waits, only the collector's time is taken out. :class:`SlowSteps` does the same for
  asyncio's debug-mode reports, and takes out the other threads' time on a CPU too (see it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import io
import logging
import os
import queue
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import fsspec.asyn

import streamlib

PACKAGE = str(Path(streamlib.__file__).parent) + os.sep

WAITS: dict[CodeType, str] = {
    code.__code__: name for name, code in [
        ("Condition.wait", threading.Condition.wait),
        ("Condition.wait_for", threading.Condition.wait_for),
        ("Event.wait", threading.Event.wait),
        ("Semaphore.acquire", threading.Semaphore.acquire),
        ("Barrier.wait", threading.Barrier.wait),
        ("Thread.join", threading.Thread.join),
        ("Future.result", concurrent.futures.Future.result),
        ("Future.exception", concurrent.futures.Future.exception),
        ("concurrent.futures.wait", concurrent.futures.wait),
        ("Queue.get", queue.Queue.get),
        ("Queue.put", queue.Queue.put),
        ("fsspec sync", fsspec.asyn.sync),
    ]}
"""Python functions that wait, by their code."""

C_FUNCTIONS = {time.sleep, os.fsync, os.fdatasync, os.read, os.write, os.pread, os.pwrite,
               os.open, os.stat, os.lstat, os.listdir, os.scandir, os.statvfs, os.replace,
               os.rename, os.unlink, os.remove, os.mkdir, os.rmdir, os.truncate, os.ftruncate,
               io.open, socket.getaddrinfo, socket.create_connection}
"""Built-in functions that do I/O or wait."""

C_METHODS: dict[type, set[str] | None] = {
    type(threading.Lock()): {"acquire"},
    type(threading.RLock()): {"acquire"},
    sqlite3.Connection: None,  # every call: the file, its locks
    sqlite3.Cursor: None,
    io.FileIO: {"read", "readinto", "readall", "write", "flush"},
    io.BufferedReader: {"read", "read1", "readinto", "peek", "flush"},
    io.BufferedWriter: {"write", "flush"},
    io.BufferedRandom: {"read", "read1", "readinto", "write", "flush"},
    io.TextIOWrapper: {"read", "readline", "write", "flush"},
    socket.socket: {"recv", "recv_into", "send", "sendall", "connect", "accept"},
}
"""Methods of built-in types that do I/O or wait (None: all of them)."""


def _streamlib_frame(frame: FrameType | None) -> FrameType | None:
    """The nearest frame of streamlib's code on the stack — None if there is none, or if a
    thread's start comes first (its wait for the new thread to run is allowed)."""
    while frame is not None:
        code = frame.f_code
        if code is _THREAD_START:
            return None
        if code.co_filename.startswith(PACKAGE):
            return frame
        frame = frame.f_back
    return None


_THREAD_START = threading.Thread.start.__code__


def _nonblocking(frame: FrameType, arg: Any) -> bool:
    """A call that cannot wait whatever it is: a lock acquired with ``blocking=False``, a
    socket in non-blocking mode (the event loop's own wake-up pipe)."""
    owner = getattr(arg, "__self__", None)
    if isinstance(owner, socket.socket):
        return owner.gettimeout() == 0.0
    if getattr(arg, "__name__", "") == "acquire":
        import linecache

        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        return "blocking=False" in line or "acquire(False" in line
    return False


@dataclass
class BlockingCalls:
    """Calls to blocking primitives made on this thread by streamlib's code, while installed
    (``with BlockingCalls() as found:``; then ``found.calls``)."""

    calls: list[str] = field(default_factory=list)
    _previous: Any = None

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            name = WAITS.get(frame.f_code)
            if name is not None:
                self._note(name, frame.f_back)
        elif event == "c_call":
            if arg in C_FUNCTIONS:
                self._note(f"{getattr(arg, '__module__', '')}.{arg.__name__}", frame)
                return
            owner = getattr(arg, "__self__", None)
            if owner is None or isinstance(owner, type):
                return
            for kind, names in C_METHODS.items():
                if isinstance(owner, kind) and (names is None or arg.__name__ in names):
                    if not _nonblocking(frame, arg):
                        self._note(f"{kind.__name__}.{arg.__name__}", frame)
                    return

    def _note(self, name: str, frame: FrameType | None) -> None:
        ours = _streamlib_frame(frame)
        if ours is not None:
            where = f"{ours.f_code.co_filename.removeprefix(PACKAGE)}:{ours.f_lineno}"
            self.calls.append(f"{name} from streamlib/{where} ({ours.f_code.co_name})")

    def __enter__(self) -> BlockingCalls:
        self._previous = sys.getprofile()
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(self._previous)


class _Collections:
    """Seconds spent in the garbage collector so far, on any thread (it holds the GIL)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


COLLECTIONS = _Collections()
"""Counting while a :class:`Ticker` runs."""

Reading = dict[int, tuple[int, int]]
"""Per thread (native id): nanoseconds on a CPU and waiting for one so far; under key 0, the
garbage collector's nanoseconds (as waiting: it stops every thread)."""


def read_threads() -> Reading:
    """This process's threads now (none but the collector where the kernel does not say)."""
    found: Reading = {0: (0, int(COLLECTIONS.seconds * 1e9))}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as stat:
                on_cpu, waiting = stat.read().split()[:2]
        except (OSError, ValueError):
            continue  # ended meanwhile
        found[int(tid)] = (int(on_cpu), int(waiting))
    return found


def explained(before: Reading | None, after: Reading, *, besides: int | None = None) -> float:
    """Seconds between two readings that the machine's load explains: the threads' waits for
    a CPU and the collector's time (a thread started meanwhile counts whole, one that ended
    is left out) — and, with ``besides`` (a thread's id), the other threads' time on a CPU,
    in which they may have held the GIL that thread waited for."""
    if before is None:
        return 0.0
    total = 0
    for tid, (on_cpu, waiting) in after.items():
        was_on, was_waiting = before.get(tid, (0, 0))
        total += max(0, waiting - was_waiting)
        if besides is not None and tid not in (0, besides):
            total += max(0, on_cpu - was_on)
    return total / 1e9


@dataclass
class Ticker:
    """A task ticking every ``period`` seconds on the running loop; ``stalls``: for each tick,
    how late it came (seconds) and how much of that the threads' waits for a CPU and the
    collector leave unexplained. ``reading``: the threads at the last tick, ``thread`` the
    loop's (for :class:`SlowSteps`)."""

    period: float = 0.005
    stalls: list[tuple[float, float]] = field(default_factory=list)
    reading: Reading | None = None
    thread: int = 0
    _task: asyncio.Task[None] | None = None
    _running: bool = False

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        before = loop.time()
        self.thread = threading.get_native_id()
        self.reading = read_threads()
        while self._running:
            await asyncio.sleep(self.period)
            now, reading = loop.time(), read_threads()
            late = max(0.0, now - before - self.period)
            load = explained(self.reading, reading)
            self.stalls.append((late, max(0.0, late - load)))
            before, self.reading = now, reading

    def start(self) -> None:
        gc.callbacks.append(COLLECTIONS)
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        self._running = False
        try:
            if self._task is not None:
                await self._task
        finally:
            gc.callbacks.remove(COLLECTIONS)

    @property
    def worst(self) -> float:
        return max((late for late, _ in self.stalls), default=0.0)

    @property
    def worst_unexplained(self) -> float:
        return max((left for _, left in self.stalls), default=0.0)


class SlowSteps(logging.Handler):
    """The event loop's own reports (debug mode) of callbacks that ran longer than its
    ``slow_callback_duration``, while installed: ``(what, seconds, unexplained)`` each — the
    part of the time that the load leaves unexplained since ``ticker``'s last tick (which came
    before the callback began): the threads' waits for a CPU, the collector, and the other
    threads' time on a CPU — debug mode makes a step release and take the GIL again at every
    future it makes (a stack captured, its files stat-ed), each time waiting for a thread that
    holds it; a step waiting on I/O, or computing on the loop's thread, stays unexplained."""

    def __init__(self, ticker: Ticker) -> None:
        super().__init__()
        self.ticker = ticker
        self.found: list[tuple[str, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.msg.startswith("Executing") and isinstance(args, tuple) and len(args) == 2:
            took = float(args[1])  # type: ignore[arg-type]
            load = explained(self.ticker.reading, read_threads(), besides=self.ticker.thread)
            self.found.append((str(args[0]), took, max(0.0, took - load)))

    def __enter__(self) -> SlowSteps:
        logging.getLogger("asyncio").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("asyncio").removeHandler(self)
