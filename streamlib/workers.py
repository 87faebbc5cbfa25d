"""The store's own threads for the calls of its asyncio face that may wait (docs/asyncio.md).

An event loop must never wait on a GET, an fsync, a metadata write, room in a full WAL, or a
lock held across one of these. Each call of the asyncio face that may wait runs here instead,
its answer handed back to the caller's loop:

- ``calls``: a pool of at most ``Config.async_threads`` threads (``streamlib-async-<n>``) for
  reads from the object store, flushes, metadata changes, key-value calls;
- ``appends``: one thread (``streamlib-async-append-<n>``) that hands appends to the write
  path one after another, in the order they were made — so that their offsets follow the
  order of the ``append_async`` calls, and an append waiting for room (back-pressure) holds up
  the appends behind it, as it would in one thread, and never a read.

They are the store's, not the loop's default executor: sized and named for it, and ended by
``close()`` once the calls they run have answered (most answer StreamClosed at once then).

A thread starts when a call comes and none is idle, on the caller's thread — and starting a
thread waits until the system has run it, a fraction of a millisecond. So ``open_async``
starts them all in its opening thread (:meth:`Workers.start`), and an event loop using a store
opened that way never waits for one; a store opened with ``open()`` starts each on first need,
once in its life. A call queued and not yet started can be cancelled (it never runs); a call
running cannot, and its answer is dropped.

Lock order: each ``Pool._lock`` (and its condition) and ``Lane._lock`` is a leaf, never held
while a call runs or a thread starts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from streamlib.errors import StreamClosed

T = TypeVar("T")

log = logging.getLogger(__name__)

THREAD_PREFIX = "streamlib-async-"
"""How the names of the asyncio face's threads begin."""

_NUMBERS = itertools.count(1)


class Pool:
    """At most ``size`` threads running calls in the order they came (one thread: one after
    another), started as calls come and ended by :meth:`stop`."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one thread: size=`{size}`")
        self.size = size
        self._name = name
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # a call came, or the pool stops
        self._jobs: deque[tuple[Future[Any], Callable[[], Any]]] = deque()  # GUARDED_BY(_lock)
        self._threads: list[threading.Thread] = []  # GUARDED_BY(_lock): started or starting
        self._idle = 0  # GUARDED_BY(_lock): threads waiting for a call and not yet woken
        self._stopping = False  # GUARDED_BY(_lock)

    def __repr__(self) -> str:
        return (f"<Pool {self._name} threads={len(self._threads)}/{self.size} "
                f"queued={len(self._jobs)}>")

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Run ``call()`` on one of the pool's threads: a future of its answer, which can be
        cancelled until the call starts. :class:`~streamlib.errors.StreamClosed` once the
        store closed."""
        future: Future[T] = Future()
        self._queue(future, call)
        return future

    def _queue(self, future: Future[Any], call: Callable[[], Any]) -> None:
        with self._lock:
            if self._stopping:
                raise StreamClosed("the store is closed")
            self._jobs.append((future, call))
            start = self._wake_or_grow()
        if start is not None:
            self._begin(start)

    def start(self) -> None:
        """Start every thread now (off the event loop)."""
        with self._lock:
            new = [] if self._stopping else [self._new_thread()
                                             for _ in range(self.size - len(self._threads))]
        for thread in new:
            self._begin(thread)

    def stop(self) -> None:
        """Refuse new calls, let the queued ones run, and wait until every thread but the
        caller's has ended."""
        with self._lock:
            self._stopping = True
            self._idle = 0
            self._work.notify_all()
            threads = list(self._threads)
        me = threading.current_thread()
        for thread in threads:
            if thread is not me and thread.ident is not None:  # one still starting ends at once
                thread.join()

    def _wake_or_grow(self) -> threading.Thread | None:
        """For a call just queued: wake an idle thread, or make a new one (returned, to start
        outside the lock) if the pool may grow. Caller holds ``_lock``."""
        if self._idle:
            self._idle -= 1  # that thread is taken: the next call wakes another
            self._work.notify()
            return None
        if len(self._threads) >= self.size:
            return None
        return self._new_thread()

    def _new_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._serve, name=f"{self._name}{next(_NUMBERS)}",
                                  daemon=True)
        self._threads.append(thread)  # counted from now: the pool never grows past size
        return thread

    def _begin(self, thread: threading.Thread) -> None:
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._threads.remove(thread)
            raise

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._stopping:
                    self._idle += 1  # taken off again by whoever wakes this thread
                    self._work.wait()
                if not self._jobs:
                    return  # stopping, and nothing left to answer
                future, call = self._jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued: never run
            try:
                result = call()
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(result)


class Lane:
    """One thread running calls one after another, in the order they came, answering nobody
    (each call hands its own outcome on). Fed through a ``queue.SimpleQueue``, whose ``put``
    never waits: the many small calls of a busy event loop (an append each) cost it little.
    Started at the first call (or by :meth:`start`), ended by :meth:`stop`."""

    _END = object()

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], object] | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None  # GUARDED_BY(_lock); read alone: set once
        self._stopping = False  # GUARDED_BY(_lock)

    def __repr__(self) -> str:
        return f"<Lane {self._name} queued={self._queue.qsize()}>"

    def post(self, call: Callable[[], object]) -> None:
        """Run ``call()`` on the lane's thread after the calls posted before. It must not
        raise. StreamClosed once the store closed."""
        if self._thread is None:
            self.start()
        with self._lock:  # a call posted before stop() runs; one after is refused
            if self._stopping:
                raise StreamClosed("the store is closed")
            self._queue.put(call)

    def start(self) -> None:
        """Start the thread now (off the event loop), unless it runs."""
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            thread = self._thread = threading.Thread(
                target=self._serve, name=f"{self._name}{next(_NUMBERS)}", daemon=True)
        thread.start()

    def stop(self) -> None:
        """Refuse new calls, run the queued ones, and wait until the thread has ended (unless
        it is the caller's)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._queue.put(self._END)
        if thread is not None and thread is not threading.current_thread() and thread.ident:
            thread.join()

    def _serve(self) -> None:
        while True:
            call = self._queue.get()
            if call is self._END:
                return
            try:
                call()  # type: ignore[operator]
            except BaseException:  # each call hands its outcome on: never lost here
                log.exception("a call of the asyncio face's appending thread failed")


class Workers:
    """One store's threads for its asyncio face: ``calls`` (a pool of ``size``) and
    ``appends`` (one thread, in order)."""

    def __init__(self, size: int) -> None:
        self.calls = Pool(size, THREAD_PREFIX)
        self.appends = Lane(f"{THREAD_PREFIX}append-")

    def __repr__(self) -> str:
        return f"<Workers {self.calls!r} {self.appends!r}>"

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """``call()`` on the pool of calls (see :meth:`Pool.submit`)."""
        return self.calls.submit(call)

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on the pool of calls, awaited: cancelling the await cancels the call if
        it has not started yet (else it runs to its end and its answer is dropped)."""
        return await asyncio.wrap_future(self.calls.submit(call))

    def start(self) -> None:
        """Start every thread now, off the event loop (``open_async`` does, in its opening
        thread)."""
        self.calls.start()
        self.appends.start()

    def stop(self) -> None:
        """The store closed: the threads end once the calls queued have answered."""
        self.appends.stop()
        self.calls.stop()


__all__ = ["THREAD_PREFIX", "Lane", "Pool", "Workers"]
