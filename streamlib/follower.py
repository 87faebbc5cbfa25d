"""Many streams followed by one task (docs/asyncio.md, "Following many streams").

``async for stream, batch in Follower({orders: 0, payments: 120})`` yields each stream's
batches as they are acknowledged, in offset order within a stream, streams taking turns. A
consumer of a thousand partitions needs one task, not a thousand:

- an idle stream costs a future of the loop in its ``async_waiters`` (resolved by the
  acknowledgement, as a long-poll fetch's is), a reader in the message cache and a few small
  objects — no task, no thread, no timer, and nothing runs while it is idle;
- a woken stream goes on a ready queue and the iterating task reads it: what the log cache
  holds on the loop, what needs the object store on the store's threads, at most ``reads`` at
  once (a catch-up of many streams), each answer queuing its stream again.

The follower is used from its event loop only (``add``, ``remove``, iterating); it is an async
iterator and an async context manager. Leave it with ``aclose()`` or ``async with``: that
withdraws its waits and releases its readers (a follower collected unclosed releases its
readers; its waits go with the streams' next appends).

Lock order: it takes ``StreamState.lock`` alone and briefly, through :class:`~streamlib.aio.Tail`.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from streamlib.config import LONGEST_WAIT
from streamlib.records import INT64_MAX, check_int
from streamlib.stream import DEFAULT_FETCH_BYTES, Stream

if TYPE_CHECKING:
    from streamlib.aio import Tail
    from streamlib.records import FetchResult, PlacedBatch


class _Followed:
    """One stream of a follower: its handle, its place, its wait, its read in flight."""

    __slots__ = ("queued", "reading", "stream", "tail", "waiter")

    def __init__(self, stream: Stream, tail: Tail) -> None:
        self.stream = stream
        self.tail = tail
        self.waiter: asyncio.Future[Any] | None = None  # registered in the stream's waiters
        self.reading: asyncio.Future[FetchResult] | None = None  # a read on a store thread
        self.queued = False  # on the ready queue


class Follower:
    """Follow several streams at once: ``async for stream, batch in follower`` (see the module
    docstring). ``positions``: each stream handle and the offset to read it from.
    ``max_bytes``: of each read of one stream; ``idle_timeout``: end after that many seconds
    with nothing to give (None: never); ``reads``: reads of the object store at once.

    A stream leaves the follower when its handle or its store closes; one that fails (a
    destroyed stream's StreamNotFound, a read's error) leaves it with its error raised by
    ``__anext__``, and iterating again goes on with the others. The iteration ends once no
    stream is left, after ``idle_timeout``, or at ``aclose()``."""

    def __init__(self, positions: Mapping[Stream, int] | Iterable[tuple[Stream, int]] = (), *,
                 max_bytes: int = DEFAULT_FETCH_BYTES, idle_timeout: float | None = None,
                 reads: int = 4) -> None:
        self._max_bytes = check_int(max_bytes, "max_bytes", 0, INT64_MAX)
        self._idle = _seconds(idle_timeout, "idle_timeout")
        self._max_reads = check_int(reads, "reads", 1, 1024)
        self._followed: dict[Stream, _Followed] = {}
        self._ready: deque[_Followed] = deque()
        self._queued_reads: deque[_Followed] = deque()  # ready for a read: none free
        self._reads = 0  # reads on store threads now
        self._remote: set[_Followed] = set()  # waited on, written by another node: polled
        self._out: deque[tuple[Stream, PlacedBatch]] = deque()  # one read's batches, to give
        self._wake: asyncio.Future[None] | None = None  # the iterating task waits on it
        self._closed = False
        pairs = positions.items() if isinstance(positions, Mapping) else positions
        try:
            for stream, offset in pairs:
                self.add(stream, offset)
        except BaseException:
            self._release()
            raise

    def __repr__(self) -> str:
        return (f"<Follower streams={len(self._followed)} ready={len(self._ready)} "
                f"reads={self._reads}>")

    # ---- the streams ----

    def add(self, stream: Stream, offset: int) -> None:
        """Follow ``stream`` from ``offset`` too."""
        if not isinstance(stream, Stream):
            raise TypeError(f"a Follower follows Stream handles, not {type(stream).__name__}")
        if self._closed:
            raise RuntimeError("this follower is closed")
        if stream in self._followed:
            raise ValueError(f"the follower follows this stream already: stream=`{stream.id}`")
        followed = self._followed[stream] = _Followed(stream, stream.tail(offset))
        self._mark(followed)

    def remove(self, stream: Stream) -> None:
        """Stop following ``stream`` (its reader and its wait are released)."""
        followed = self._followed.get(stream)
        if followed is not None:
            self._drop(followed)

    @property
    def positions(self) -> dict[Stream, int]:
        """Where each stream is read next. Batches read but not given out yet count as read:
        to commit a consumer's offsets, use the ``next_offset`` of the batches it handled."""
        return {stream: followed.tail.offset for stream, followed in self._followed.items()}

    def __len__(self) -> int:
        return len(self._followed)

    # ---- iterating ----

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> tuple[Stream, PlacedBatch]:
        if self._out:
            return self._out.popleft()
        loop = asyncio.get_running_loop()
        until = None if self._idle is None else loop.time() + self._idle
        while True:
            if not self._closed and self._step(loop):
                return self._out.popleft()
            if self._closed or not self._followed:  # closed, or every stream has left
                self._release()
                raise StopAsyncIteration
            if until is not None and loop.time() >= until:
                self._release()
                raise StopAsyncIteration
            await self._sleep(loop, until)

    def _step(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Go through the ready streams until one gives batches (True) or none is left."""
        while self._ready:
            followed = self._ready.popleft()
            followed.queued = False
            if self._followed.get(followed.stream) is not followed:
                continue  # removed meanwhile
            if followed.reading is not None:
                if followed.reading.done() and self._took(followed):
                    return True
                continue
            tail = followed.tail
            if tail.ended():
                self._drop(followed)
                continue
            try:
                tail.check()  # a destroyed stream: StreamNotFound
                if not tail.has_data():
                    self._watch(loop, followed)
                    continue
                result = tail.fetch_now(self._max_bytes)
            except BaseException:
                self._drop(followed)
                raise
            if result is None:
                self._queued_reads.append(followed)
                self._start_reads()
            elif self._give(followed, result):
                return True
        return False

    def _give(self, followed: _Followed, result: FetchResult) -> bool:
        stream = followed.stream
        self._out.extend((stream, batch) for batch in result.batches)
        self._mark(followed)  # there may be more: its turn comes again
        return bool(result.batches)

    def _watch(self, loop: asyncio.AbstractEventLoop, followed: _Followed) -> None:
        waiter = followed.tail.watch(loop)
        if waiter is None:  # data (or an end) came meanwhile
            self._mark(followed)
            return
        followed.waiter = waiter
        if followed.tail.remote():
            self._remote.add(followed)
        waiter.add_done_callback(functools.partial(_woken, weakref.ref(self), followed))

    def _start_reads(self) -> None:
        while self._queued_reads and self._reads < self._max_reads:
            followed = self._queued_reads.popleft()
            if self._followed.get(followed.stream) is not followed or followed.reading:
                continue
            job = followed.tail.fetch_later(self._max_bytes)
            reading = followed.reading = asyncio.wrap_future(job)
            self._reads += 1
            reading.add_done_callback(functools.partial(_woken, weakref.ref(self), followed))

    def _took(self, followed: _Followed) -> bool:
        """A read on a store thread ended: give its batches, or raise its error."""
        reading, followed.reading = followed.reading, None
        assert reading is not None
        self._reads -= 1
        self._start_reads()
        try:
            result = reading.result()
        except BaseException:
            self._drop(followed)
            raise
        followed.tail.advance(result)
        return self._give(followed, result)

    def _mark(self, followed: _Followed) -> None:
        """``followed`` has something to look at: queue it, wake the iterating task."""
        if not followed.queued:
            followed.queued = True
            self._ready.append(followed)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, until: float | None) -> None:
        """Until a stream is marked; at most until ``until``, or a remote stream's poll."""
        polls = list(self._remote)
        timeout = None if until is None else max(0.0, until - loop.time())
        if polls:
            poll = min(f.tail.poll_interval() for f in polls)
            timeout = poll if timeout is None else min(timeout, poll)
        wake = self._wake = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _set, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()
        if polls and not self._ready:
            await self._look(loop, polls)

    async def _look(self, loop: asyncio.AbstractEventLoop, polls: list[_Followed]) -> None:
        """Another node's streams wake nobody here: read each store's shared metadata (one
        look a store, on its threads), then look at those streams again."""
        looked: set[int] = set()
        for followed in polls:
            key = followed.tail.store_key()
            if key not in looked:
                looked.add(key)
                await followed.tail.look()
        for followed in polls:
            if followed.waiter is not None and self._followed.get(followed.stream) is followed:
                followed.tail.unwatch(loop, followed.waiter)
                followed.waiter = None
                self._remote.discard(followed)
                self._mark(followed)

    # ---- the end ----

    def _drop(self, followed: _Followed) -> None:
        if self._followed.get(followed.stream) is followed:
            del self._followed[followed.stream]
        self._remote.discard(followed)
        if followed.waiter is not None:
            waiter, followed.waiter = followed.waiter, None
            followed.tail.unwatch(waiter.get_loop(), waiter)
        if followed.reading is not None:
            reading, followed.reading = followed.reading, None
            reading.cancel()  # a read not started yet never starts
            self._reads -= 1
        followed.tail.close()  # its reader: at once, or when its read in flight ends

    def _release(self) -> None:
        for followed in list(self._followed.values()):
            self._drop(followed)
        self._ready.clear()
        self._queued_reads.clear()
        self._remote.clear()

    async def aclose(self) -> None:
        """Stop following every stream: waits withdrawn, readers released; an iteration in
        another task ends."""
        self._closed = True
        self._release()
        self._out.clear()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def __aenter__(self) -> Follower:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        for followed in getattr(self, "_followed", {}).values():
            followed.tail.close()  # never waits: the cache drops readers without its lock


def _woken(ref: weakref.ref[Follower], followed: _Followed, future: asyncio.Future[Any]) -> None:
    """A stream's waiter or read is done (on the loop): queue the stream."""
    follower = ref()
    if follower is None or future.cancelled():
        return
    if followed.waiter is future:
        followed.waiter = None
        follower._remote.discard(followed)
    follower._mark(followed)


def _seconds(value: object, what: str) -> float | None:
    """A wait in seconds: None, or a non-negative number (``inf``: no bound)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds or None, "
                        f"not {type(value).__name__}")
    if value != value or value < 0:
        raise ValueError(f"{what} must be a non-negative number of seconds: {what}=`{value}`")
    return min(float(value), LONGEST_WAIT)


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["Follower"]
