"""The asyncio face of streamlib (docs/asyncio.md).

- :func:`open_async` and the store's ``_async`` methods, :meth:`~AsyncStore.aclose` and
  ``async with`` (:class:`AsyncStore`, the half of :class:`~streamlib.store.StreamStore` that
  serves asyncio: a mixin, so that ``store.py`` stays the small facade it is);
- what the handles' ``_async`` methods and :class:`~streamlib.follower.Follower` are built on:
  the wait for an append on the event loop (:func:`wait_for_append`), a fetch that reads
  memory on the loop and the object store on a store thread (:func:`fetch`), a reader's place
  in a stream (:class:`Tail`), and appends handed to the write path in order
  (:func:`append_later`).

How the loop never waits: a call that may wait (I/O, a lock held across I/O, room in a full
WAL) runs on the store's threads (:mod:`streamlib.workers`), or — opening and closing — on a
thread of its own, and its answer comes back as a future of the caller's loop. Waits for data
are futures of the loop that the acknowledgement resolves (``StreamState.wake_readers``): no
thread waits for them, and nothing polls. On the loop itself run only memory work and the brief
locks that are never held across I/O.

Lock order: this module takes ``StreamState.lock`` alone and briefly (to register or withdraw
a waiter, to see where the log cache starts); ``_Handoff._lock`` and ``_CLOSING`` are leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Generator, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from streamlib.errors import CacheMiss, StreamClosed
from streamlib.records import AppendResult, FetchResult, RecordBatch
from streamlib.workers import THREAD_PREFIX

if TYPE_CHECKING:
    import os

    from fsspec import AbstractFileSystem

    from streamlib.cache import MessageCache, Reader
    from streamlib.config import Config
    from streamlib.lifecycle.compaction import CompactionReport
    from streamlib.lifecycle.sweep import GarbageReport
    from streamlib.meta import MetadataStore, Retention
    from streamlib.shared.takeover import TakeOver
    from streamlib.state import StreamInfo, StreamState
    from streamlib.store import StreamStore
    from streamlib.stream import Stream, StreamPaths
    from streamlib.workers import Lane, Workers

T = TypeVar("T")

_CLOSING = threading.Lock()  # a leaf: who starts a store's asynchronous close


# ---- a call on a thread of its own ----


class _Handoff(Generic[T]):
    """A call's outcome, between its thread and the coroutine awaiting it, which may go away
    (cancelled) before the call ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished = False  # GUARDED_BY(_lock)
        self._abandoned = False  # GUARDED_BY(_lock)
        self.result: T | None = None  # set once, before _finished
        self.error: BaseException | None = None  # set once, before _finished

    def finish(self, result: T | None, error: BaseException | None) -> bool:
        """The call ended: whether nobody awaits it any more."""
        with self._lock:
            self.result, self.error, self._finished = result, error, True
            return self._abandoned

    def abandon(self) -> bool:
        """The awaiting coroutine was cancelled: whether the call had ended already."""
        with self._lock:
            self._abandoned = True
            return self._finished


async def in_thread(call: Callable[[], T], what: str,
                    abandoned: Callable[[T], None] | None = None) -> T:
    """``call()`` on a thread of its own (``streamlib-async-<what>``), awaited on the loop.
    Cancelled, the call goes on; ``abandoned``, if given, then gets its result (on a thread:
    the loop never waits for it)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    handoff: _Handoff[T] = _Handoff()

    def run() -> None:
        try:
            result = call()
        except BaseException as error:
            handoff.finish(None, error)
        else:
            if handoff.finish(result, None):
                if abandoned is not None:
                    abandoned(result)  # nobody awaits it: here, on this thread
                return
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_resolve, done)

    threading.Thread(target=run, name=f"{THREAD_PREFIX}{what}").start()
    try:
        await done
    except asyncio.CancelledError:
        if handoff.abandon() and handoff.error is None and abandoned is not None:
            threading.Thread(target=abandoned, args=(handoff.result,),
                             name=f"{THREAD_PREFIX}{what}").start()
        raise
    if handoff.error is not None:
        raise handoff.error
    return cast(T, handoff.result)


def _resolve(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)


# ---- opening ----


def open_async(path_or_config: str | os.PathLike[str] | Config | Mapping[str, object] | None = None,
               *, storage_options: Mapping[str, Any] | None = None,
               filesystem: AbstractFileSystem | None = None, cache: MessageCache | None = None,
               metadata_store: MetadataStore | None = None, **overrides: object) -> Opening:
    """:func:`streamlib.open` for asyncio, with the same arguments and errors:
    ``store = await streamlib.open_async("./data")``, or ``async with
    streamlib.open_async("./data") as store:`` (closed by :meth:`~AsyncStore.aclose` when the
    block ends). The open — recovery and its upload included — runs on a thread of its own,
    which also starts the store's asyncio threads. Cancelled, the open goes on in its thread,
    and the store is closed as soon as it is open (nobody holds it)."""

    def opening() -> StreamStore:
        from streamlib.store import open as open_store  # the store imports this module

        store = open_store(path_or_config, storage_options=storage_options,
                           filesystem=filesystem, cache=cache, metadata_store=metadata_store,
                           **overrides)
        try:
            store._workers().start()
        except BaseException:
            store.close()
            raise
        return store

    return Opening(opening)


class Opening(Coroutine[Any, Any, "StreamStore"]):
    """What :func:`open_async` returns: a coroutine (await it, or make it a task) whose
    result is the store, and an async context manager (``async with``: the store is closed by
    :meth:`~AsyncStore.aclose` when the block ends)."""

    def __init__(self, opening: Callable[[], StreamStore]) -> None:
        self._opening = opening
        self._running: Coroutine[Any, Any, StreamStore] | None = None
        self._store: StreamStore | None = None

    def _open(self) -> Coroutine[Any, Any, StreamStore]:
        if self._running is None:  # made when first awaited: never awaited, nothing happens
            self._running = in_thread(self._opening, "open", _close_abandoned)
        return self._running

    def send(self, value: Any) -> Any:
        return self._open().send(value)

    def throw(self, *error: Any) -> Any:
        return self._open().throw(*error)

    def close(self) -> None:
        if self._running is not None:
            self._running.close()

    def __await__(self) -> Generator[Any, None, StreamStore]:
        return self._open().__await__()

    async def __aenter__(self) -> StreamStore:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.aclose()


def _close_abandoned(store: StreamStore) -> None:
    store.close()


# ---- the store ----


class AsyncStore:
    """The asyncio half of :class:`~streamlib.store.StreamStore` (mixed into it). Each method
    has the semantics and the errors of its blocking twin, named without ``_async``; it runs
    that twin on one of the store's threads (``Config.async_threads``), so the event loop never
    waits. Cancelling one cancels the call if it has not started; a call already running goes
    on (a change may then be made or not, as when its answer is lost: look before retrying)."""

    _async_closed: Future[None] | None = None  # GUARDED_BY(_CLOSING): the close, once begun

    def _facade(self) -> StreamStore:
        return cast("StreamStore", self)  # mixed into StreamStore only

    def _workers(self) -> Workers:
        """The store's asyncio threads (StreamClosed once the store is closed)."""
        return self._facade()._live().workers

    async def _call(self, call: Callable[[], T]) -> T:
        return await self._workers().run(call)

    async def flush_async(self) -> None:
        """:meth:`~streamlib.StreamStore.flush` for asyncio. Cancelled, the upload round goes
        on: its data is committed, or stays in the WAL for a later round."""
        await self._call(self._facade().flush)

    async def create_stream_async(self, name: str | None = None, *,
                                  retention: Retention | None = None) -> Stream:
        """:meth:`~streamlib.StreamStore.create_stream` for asyncio."""
        return await self._call(functools.partial(self._facade().create_stream, name,
                                                  retention=retention))

    async def open_stream_async(self, stream: int | str, *, read_only: bool = False) -> Stream:
        """:meth:`~streamlib.StreamStore.open_stream` for asyncio (for write, the epoch goes up
        in the metadata: earlier write handles are fenced)."""
        return await self._call(functools.partial(self._facade().open_stream, stream,
                                                  read_only=read_only))

    async def get_async(self, stream: int | str) -> StreamInfo:
        """:meth:`~streamlib.StreamStore.get` for asyncio."""
        return await self._call(functools.partial(self._facade().get, stream))

    async def streams_async(self) -> list[StreamInfo]:
        """:meth:`~streamlib.StreamStore.streams` for asyncio."""
        return await self._call(self._facade().streams)

    async def destroy_stream_async(self, stream: int | str) -> None:
        """:meth:`~streamlib.StreamStore.destroy_stream` for asyncio."""
        await self._call(functools.partial(self._facade().destroy_stream, stream))

    async def take_over_async(self, node_id: str | int, *, wal: str | None = None,
                              wal_path: str = "", wal_url: str = "") -> TakeOver:
        """:meth:`~streamlib.StreamStore.take_over` for asyncio. Cancelled, the take-over goes
        on to its end (the dead node is fenced at its first step)."""
        return await self._call(functools.partial(self._facade().take_over, node_id, wal=wal,
                                                  wal_path=wal_path, wal_url=wal_url))

    async def compact_async(self, *, bytes_per_s: int = 0) -> CompactionReport:
        """:meth:`~streamlib.StreamStore.compact` for asyncio."""
        return await self._call(functools.partial(self._facade().compact,
                                                  bytes_per_s=bytes_per_s))

    async def collect_garbage_async(self, *, dry_run: bool = False) -> GarbageReport:
        """:meth:`~streamlib.StreamStore.collect_garbage` for asyncio."""
        return await self._call(functools.partial(self._facade().collect_garbage,
                                                  dry_run=dry_run))

    async def aclose(self) -> None:
        """:meth:`~streamlib.StreamStore.close` for asyncio: it waits for the appends in
        flight, uploads what is left and releases the WAL, on a thread of its own, while the
        loop runs on (appends in flight are answered meanwhile). Cancelled, the close goes on;
        a later ``aclose()`` waits for it. Closing twice is fine."""
        store = self._facade()
        with _CLOSING:
            closed = self._async_closed
            first = closed is None
            if closed is None:
                closed = self._async_closed = Future()
                closed.set_running_or_notify_cancel()  # a cancelled caller cannot cancel it

        def close() -> None:
            try:
                store.close()
            except BaseException as error:
                closed.set_exception(error)
            else:
                closed.set_result(None)

        if first:
            threading.Thread(target=close, name=f"{THREAD_PREFIX}close").start()
        await asyncio.wrap_future(closed)

    async def __aenter__(self) -> StreamStore:
        return self._facade()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ---- waiting for appends, fetching ----


async def wait_for_append(paths: StreamPaths, state: StreamState, offset: int,
                          timeout: float | None, closed: Callable[[], bool]) -> bool:
    """Wait on the event loop until the stream reaches past ``offset``: True if it did, False
    after ``timeout`` seconds (None: no bound) or once the handle (``closed()``), the stream or
    the store is gone. Woken by the acknowledgement: a future of this loop in
    ``state.async_waiters``, resolved by ``StreamState.wake_readers``. A stream another node
    writes is looked at every ``reader_poll_ms`` (the look on a store thread). Cancelled, the
    future is withdrawn: nothing is left behind."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        remote = paths.remote(state)  # changes with a hand-over
        waiter: asyncio.Future[bool | None] = loop.create_future()
        with state.lock:
            if state.acked_end > offset:
                return True
            if closed() or state.destroyed or paths.closing():
                return False
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            state.async_waiters.append((loop, waiter))  # type: ignore[arg-type]
        if remote:
            poll = paths.config.reader_poll_ms / 1000
            left = poll if left is None else min(left, poll)
        if not await woken(state, loop, waiter, left) and remote:
            await paths.workers.run(paths.sync)


async def woken(state: StreamState, loop: asyncio.AbstractEventLoop,
                waiter: asyncio.Future[bool | None], timeout: float | None) -> bool:
    """Await ``waiter`` (registered in ``state.async_waiters``): True if the stream woke it,
    False after ``timeout`` seconds. Not woken (timed out, or cancelled), it is withdrawn."""
    timer = None if timeout is None else loop.call_later(timeout, _resolve, waiter, False)
    woke = False
    try:
        woke = await waiter is None  # None: StreamState.wake_readers; False: the timer
        return woke
    finally:
        if timer is not None:
            timer.cancel()
        if not woke:
            withdraw(state, loop, waiter)


def withdraw(state: StreamState, loop: asyncio.AbstractEventLoop,
             waiter: asyncio.Future[Any]) -> None:
    """Take a waiter back from ``state.async_waiters`` (gone already if the stream woke it)."""
    with state.lock, contextlib.suppress(ValueError):
        state.async_waiters.remove((loop, waiter))


def in_memory(paths: StreamPaths, state: StreamState, start: int) -> bool:
    """Whether a fetch from ``start`` reads only the log cache (and needs no look at a shared
    metadata), so that it may run on the event loop."""
    with state.lock:
        if start < state.memory_start:
            return False
        at_end = start >= state.acked_end
    return not (at_end and paths.remote(state))  # the end of another node's stream: a look


async def fetch(paths: StreamPaths, state: StreamState, start: int, end: int | None,
                max_bytes: int, cache_only: bool, reader: Reader | None = None) -> FetchResult:
    """A fetch for asyncio, with the answers and errors of ``paths.fetch``: what the log cache
    holds is read on the event loop (no thread, no hop); what needs the object store or the
    metadata on a store thread (``cache_only``: raise CacheMiss instead)."""
    if cache_only or in_memory(paths, state, start):
        try:
            return paths.fetch(state, start, end, max_bytes, True, reader)
        except CacheMiss:  # evicted meanwhile, or not in memory
            if cache_only:
                raise
    return await paths.workers.run(functools.partial(paths.fetch, state, start, end,
                                                     max_bytes, False, reader))


class Tail:
    """One reader's place in a stream, for asyncio code: the offset it reads next, its reader
    in the message cache (which keeps blocks ahead of it), and its read of the object store in
    flight on a store thread, if any. :meth:`Stream.read_async
    <streamlib.Stream.read_async>` and :class:`~streamlib.Follower` are built on it. Used by
    one task at a time; :meth:`close` it when done."""

    __slots__ = ("_closed", "_job", "_paths", "_reader", "_state", "_usable", "offset")

    def __init__(self, paths: StreamPaths, state: StreamState, offset: int,
                 closed: Callable[[], bool], usable: Callable[[], None]) -> None:
        self.offset = offset
        self._paths = paths
        self._state = state
        self._closed = closed  # whether the handle is closed
        self._usable = usable  # raises what a closed handle, store or destroyed stream meets
        self._reader: Reader | None = paths.new_reader(state, offset)
        self._job: Future[FetchResult] | None = None  # the read on a store thread

    def __repr__(self) -> str:
        return f"<Tail stream={self._state.id} offset={self.offset}>"

    @property
    def state(self) -> StreamState:
        return self._state

    def ended(self) -> bool:
        """Whether the reader is done: the handle or the store closed (or is closing)."""
        return self._closed() or self._paths.closing()

    def check(self) -> None:
        """Raise what a read now meets: StreamClosed, or StreamNotFound for a destroyed
        stream."""
        self._usable()

    def has_data(self) -> bool:
        """Whether the stream holds records at or past :attr:`offset` (a moment's value)."""
        return self._state.acked_end > self.offset

    def remote(self) -> bool:
        """Whether another node writes the stream (its appends wake nobody here)."""
        return self._paths.remote(self._state)

    def poll_interval(self) -> float:
        """How often a reader of another node's stream looks for its new data (seconds)."""
        return self._paths.config.reader_poll_ms / 1000

    def store_key(self) -> int:
        """Which store the stream is of: one look at its shared metadata serves all its
        streams."""
        return id(self._paths)

    async def look(self) -> None:
        """Read the store's shared metadata now (on a store thread): another node's appends
        show."""
        await self._paths.workers.run(self._paths.sync)

    def watch(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool | None] | None:
        """A future of ``loop`` that the stream's next acknowledgement (or its end) resolves,
        registered; None if there is data (or an end) to see now."""
        waiter: asyncio.Future[bool | None] = loop.create_future()
        state = self._state
        with state.lock:
            if state.acked_end > self.offset or state.destroyed or self.ended():
                return None
            state.async_waiters.append((loop, waiter))  # type: ignore[arg-type]
        return waiter

    def unwatch(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any]) -> None:
        withdraw(self._state, loop, waiter)

    async def wait(self, timeout: float | None) -> bool:
        """Wait for data past :attr:`offset` (see :func:`wait_for_append`)."""
        return await wait_for_append(self._paths, self._state, self.offset, timeout,
                                     self._closed)

    def fetch_now(self, max_bytes: int) -> FetchResult | None:
        """From :attr:`offset`, on the caller's thread, if all of it is in memory (then the
        offset moves past it); None if it needs the object store."""
        if not in_memory(self._paths, self._state, self.offset):
            return None
        try:
            result = self._paths.fetch(self._state, self.offset, None, max_bytes, True,
                                       self._reader)
        except CacheMiss:
            return None
        self.offset = result.next_fetch_offset
        return result

    def fetch_later(self, max_bytes: int) -> Future[FetchResult]:
        """From :attr:`offset`, on a store thread: its future. Give the result to
        :meth:`advance` (one read at a time)."""
        job = self._job = self._paths.workers.submit(functools.partial(
            self._paths.fetch, self._state, self.offset, None, max_bytes, False, self._reader))
        return job

    def advance(self, result: FetchResult) -> None:
        """The read on a store thread ended with ``result``: the offset moves past it."""
        self._job = None
        self.offset = result.next_fetch_offset

    async def fetch(self, max_bytes: int) -> FetchResult:
        """From :attr:`offset`: on the loop if in memory, else on a store thread."""
        result = self.fetch_now(max_bytes)
        if result is None:
            result = await asyncio.wrap_future(self.fetch_later(max_bytes))
            self.advance(result)
        return result

    def close(self) -> None:
        """Done: the cache stops keeping blocks for this reader — at once, or once its read
        on a store thread ends (a queued one is cancelled)."""
        reader, self._reader = self._reader, None
        if reader is None:
            return
        job, self._job = self._job, None
        if job is None or job.cancel() or job.done():
            self._paths.forget_reader(reader)
        else:
            job.add_done_callback(lambda _: self._paths.forget_reader(reader))


# ---- appends ----


def append_later(paths: StreamPaths, state: StreamState, epoch: int, batch: RecordBatch,
                 expected_offset: int | None, producer_id: object, sequence: int | None,
                 timeout: float | None) -> asyncio.Future[AppendResult]:
    """Hand an append (checked by the handle) to the write path on the store's appending thread,
    after the ones handed before (offsets follow the calls' order), with the others made in
    this turn of the loop (:class:`_Relay`): a future of the running loop for its result.
    Cancelled while it waits its turn, it is never appended; once taken, it goes on (the
    append's own future cannot be cancelled). ``timeout`` counts from now."""
    loop = asyncio.get_running_loop()
    relay = _Relay.of(loop)
    answer: asyncio.Future[AppendResult] = loop.create_future()
    wait = paths.config.append_timeout_ms / 1000 if timeout is None else timeout
    deadline = time.monotonic() + wait

    def submit() -> None:
        # Cancelled on the loop, read here: an append cancelled after this look is taken.
        if answer.cancelled():
            return
        try:
            appended = paths.append(state, epoch, batch, expected_offset, producer_id,
                                    sequence, max(0.0, deadline - time.monotonic()), False)
        except BaseException as error:
            relay.put(answer, None, error)
        else:
            appended.add_done_callback(functools.partial(_forward, relay, answer))

    relay.send(paths.workers.appends, answer, submit)
    return answer


def _forward(relay: _Relay, answer: asyncio.Future[Any], appended: Future[Any]) -> None:
    """On the thread that completed the append: quick, waits on nothing."""
    error = appended.exception()
    relay.put(answer, None if error is not None else appended.result(), error)


class _Relay:
    """One event loop's appends and their answers, each way in bursts and in order: the appends
    made in one turn of the loop go to a store's appending thread as one call (one wake-up of
    that thread), and the answers that come while the loop has not taken the last ones go back
    with one ``call_soon_threadsafe`` (one wake-up of the loop: a WAL group completes many
    appends at once). ``_lock`` is a leaf."""

    __slots__ = ("__weakref__", "_answers", "_lock", "_loop", "_outgoing")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the loop keeps its relay alive, not the reverse
        # Calls for each lane made in this turn of the loop (the loop's thread only).
        self._outgoing: dict[Lane, list[tuple[asyncio.Future[Any], Callable[[], None]]]] = {}
        self._lock = threading.Lock()
        # Answers not handed over yet; None: no hand-over pending. GUARDED_BY(_lock)
        self._answers: list[tuple[asyncio.Future[Any], object, BaseException | None]] | None = (
            None)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Relay:
        """The relay of ``loop`` (on the loop's thread)."""
        relay = _RELAYS.get(loop)
        if relay is None:
            relay = _RELAYS[loop] = cls(loop)
        return relay

    def send(self, lane: Lane, answer: asyncio.Future[Any], call: Callable[[], None]) -> None:
        """Post ``call`` (which answers ``answer``) to ``lane`` with the others made in this
        turn of the loop, in order: one wake-up of the lane's thread for all (on the loop's
        thread)."""
        calls = self._outgoing.get(lane)
        if calls is None:
            calls = self._outgoing[lane] = []
            loop = self._loop()
            assert loop is not None  # its own thread calls
            loop.call_soon(self._post, lane)
        calls.append((answer, call))

    def _post(self, lane: Lane) -> None:
        calls = self._outgoing.pop(lane)
        try:
            lane.post(functools.partial(_run_all, [call for _, call in calls]))
        except StreamClosed as error:  # the store closed meanwhile: nothing was appended
            for answer, _ in calls:
                if not answer.done():
                    answer.set_exception(error)

    def put(self, answer: asyncio.Future[Any], result: object,
            error: BaseException | None) -> None:
        with self._lock:
            if self._answers is not None:
                self._answers.append((answer, result, error))
                return
            self._answers = [(answer, result, error)]
        loop = self._loop()
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        with self._lock:
            answers, self._answers = self._answers, None
        for answer, result, error in answers or ():
            if answer.done():
                continue  # cancelled meanwhile: the append went on, its answer is dropped
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(result)


def _run_all(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        call()


_RELAYS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Relay] = (
    weakref.WeakKeyDictionary())
"""Each event loop's relay (made on its thread, used by others through the appends)."""

__all__ = ["AsyncStore", "Opening", "Tail", "append_later", "fetch", "in_memory", "in_thread",
           "open_async", "wait_for_append", "withdraw", "woken"]
