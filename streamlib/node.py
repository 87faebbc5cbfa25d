"""What the parts of one open store share (docs/store.md, "Modules and the data flow"): the
node's identity and metadata, its stream table, the backlog of data waiting for upload, its
share of the message cache, and whether it is open, closing or failed.

Lock order of a node — a thread holding one of these takes only those further down:

1. ``StreamState.order`` (one stream's appends and opens)
2. ``Node.changes`` (metadata changes of streams: commits, trims, destroys hold it alone;
   opens share it, each holding its own stream's locks)
3. ``StreamState.opening`` (an open here against a fence decision, shared stores)
4. the shared coordination's sync lock
5. ``MessageCache`` lock (it calls ``StreamState.release_kept``, never the reverse)
6. ``StreamState.lock`` (and its condition ``changed``)
7. ``Backlog`` lock (and its conditions), ``StreamTable`` lock, ``Node`` status lock,
   ``Recorder`` lock (``node.metrics``), the asyncio face's pool and lane locks (``node.workers``):
   leaves

Locks of the parts below (WAL, object store, metadata backend) are taken inside any of these and
never call back up, with one exception: a WAL completes append futures on its own thread (the
group WALs' writer; the object WAL holding its release lock, so that outcomes go out in order),
and their callbacks run the acknowledgement (locks 5 to 7) and then users' callbacks, which must
be quick and must not wait on the store (``Stream.append_future``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from streamlib.cache import MessageCache, weight
from streamlib.config import Config
from streamlib.errors import FencedError, StorageUnavailable, StreamClosed, describe
from streamlib.meta import MetadataStore
from streamlib.metrics import Recorder
from streamlib.state import StreamState, StreamTable
from streamlib.workers import Workers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from streamlib.cache import StreamKey

log = logging.getLogger(__name__)


class Backlog:
    """Data acknowledged and not yet committed: how many payload bytes, since when, and the
    **frontier** (the WAL position of the last acknowledged append); plus the appends inside
    their WAL call. Appends wait on it for room (the object WAL's bound), the uploader for a
    reason to run a round."""

    def __init__(self, threshold: int, interval: float) -> None:
        self.threshold = threshold  # a round starts once this many bytes wait
        self.interval = interval  # ... or this long after the first of them
        self._lock = threading.Lock()
        self.room = threading.Condition(self._lock)  # bytes went down (appends wait)
        self.wake = threading.Condition(self._lock)  # a round may be due (the uploader waits)
        self.bytes = 0  # GUARDED_BY(_lock)
        self.since: float | None = None  # GUARDED_BY(_lock): when the first of them came
        self.frontier = -1  # GUARDED_BY(_lock)
        self.requested = False  # GUARDED_BY(_lock): a round is wanted now, whatever waits
        self._entering: dict[int, int] = {}  # GUARDED_BY(_lock): token -> lowest position
        self._tokens = 0  # GUARDED_BY(_lock)

    def acknowledged(self, position: int, added: int) -> None:
        """Appends up to WAL ``position`` were acknowledged, ``added`` bytes of them to
        upload."""
        with self._lock:
            self.frontier = max(self.frontier, position)
            before = self.bytes
            self.bytes += added
            if before == 0 and added:
                self.since = time.monotonic()
                self.wake.notify_all()
            elif before < self.threshold <= self.bytes:
                self.wake.notify_all()

    def recovered(self, position: int, added: int) -> None:
        """Recovery put ``added`` bytes in the log cache, up to WAL ``position``."""
        with self._lock:
            self.bytes += added
            self.frontier = position
            if self.bytes:
                self.since = time.monotonic()

    def committed(self, freed: int) -> None:
        """``freed`` bytes were committed (or dropped: a destroyed stream)."""
        with self._lock:
            self.bytes -= freed
            self.since = time.monotonic() if self.bytes > 0 else None
            self.room.notify_all()

    def dropped(self, freed: int) -> None:
        """``freed`` bytes will never be uploaded (their stream was destroyed)."""
        with self._lock:
            self.bytes -= freed
            self.room.notify_all()

    def enter(self, end: Callable[[], int]) -> int:
        """An append enters its WAL call: any position it gets is at or above ``end()`` (the
        WAL's end, read under this lock so that :meth:`entering` sees both or neither).
        Returns a token for :meth:`entered`."""
        with self._lock:
            self._tokens += 1
            self._entering[self._tokens] = end()
            return self._tokens

    def entered(self, token: int) -> None:
        with self._lock:
            del self._entering[token]

    def entering(self, end: Callable[[], int]) -> tuple[int | None, int]:
        """The lowest position an append still inside its WAL call may get (None: none is),
        and ``end()`` read at the same moment: an append entering later gets a position at or
        above that end."""
        with self._lock:
            return min(self._entering.values(), default=None), end()

    def request(self) -> None:
        """Run a round as soon as anything waits, whatever the triggers say."""
        with self._lock:
            self.requested = True
            self.wake.notify_all()

    def notify(self) -> None:
        """Something changed that the uploader may want to know (it is stopping)."""
        with self._lock:
            self.wake.notify_all()
            self.room.notify_all()

    def due(self) -> float | None:
        """Seconds until the next round is due (0: now), or None if nothing waits (caller
        holds the lock: it waits on :attr:`wake`)."""
        if self.since is None or self.bytes == 0:
            return None
        if self.bytes >= self.threshold or self.requested:
            return 0.0
        return max(0.0, self.since + self.interval - time.monotonic())

    def wait_for_room(self, size: int, limit: int, timeout: float,
                      stop: threading.Event) -> bool:
        """Wait until ``size`` more bytes fit under ``limit`` (or nothing waits at all, or
        ``stop`` is set); False after ``timeout`` seconds."""
        with self.room:
            return self.room.wait_for(lambda: self.bytes + size <= limit or self.bytes == 0
                                      or stop.is_set(), timeout)


def lease_clock() -> float:
    """Seconds on a monotonic clock that keeps counting while the machine is suspended
    (``CLOCK_BOOTTIME`` on Linux; ``time.monotonic`` elsewhere): a lease measured on a clock
    that stopped while the process lived would outlast what other nodes wait for."""
    return time.clock_gettime(_BOOT_CLOCK)


_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class ChangeLock:
    """``Node.changes``: held alone (``with node.changes``) by the metadata changes that take
    a picture of many streams — a commit and its epochs, a trim, a destroy — and shared
    (``with node.changes.shared()``) by opens for write, each of one stream and ordered against
    the others of that stream by the stream's own locks. So opens of many streams reach the
    metadata together (a shared manifest writes them in one delta) and never in the middle of
    a commit. A thread waiting to hold it alone goes before sharers that come after it."""

    def __init__(self) -> None:
        self._turn = threading.Condition(threading.Lock())
        self._sharers = 0  # GUARDED_BY(_turn)
        self._alone = False  # GUARDED_BY(_turn): held alone
        self._waiting_alone = 0  # GUARDED_BY(_turn)

    def __enter__(self) -> None:
        with self._turn:
            self._waiting_alone += 1
            try:
                while self._alone or self._sharers:
                    self._turn.wait()
            finally:
                self._waiting_alone -= 1
            self._alone = True

    def __exit__(self, *exc: object) -> None:
        with self._turn:
            self._alone = False
            self._turn.notify_all()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._turn:
            while self._alone or self._waiting_alone:
                self._turn.wait()
            self._sharers += 1
        try:
            yield
        finally:
            with self._turn:
                self._sharers -= 1
                if not self._sharers:
                    self._turn.notify_all()


class Node:
    """One open store's shared parts and life (see the module docstring for the lock order).

    ``closing`` is an Event: set once close() began (appends are refused, waiters give up).
    ``failure`` is the error that stopped appends for good: a failed WAL write, or this node
    taken over by another process (a :class:`~streamlib.errors.FencedError`). ``clock``
    (monotonic seconds, :func:`lease_clock`) orders the events of a shared store's
    acknowledgement gate: when an append was seen durable, when a look at the metadata began,
    when the node's lease ends."""

    def __init__(self, *, node_id: str, node_epoch: int, config: Config, meta: MetadataStore,
                 cache: MessageCache, scope: str, objects_url: str, backlog: Backlog,
                 clock: Callable[[], float] = lease_clock) -> None:
        self.id = node_id
        self.clock = clock
        self.epoch = node_epoch
        self.config = config
        self.cache = cache
        self.scope = scope  # this node's reservations and log chunks in the cache
        self.objects_url = objects_url
        self.backlog = backlog
        self.streams = StreamTable()
        self.changes = ChangeLock()  # metadata changes of streams (see ChangeLock)
        self.metrics = Recorder()  # what the data path observes (streamlib.metrics)
        self.closing = threading.Event()
        # The asyncio face's threads for calls that may wait (streamlib.workers); ended by close.
        self.workers = Workers(config.async_threads)
        self._meta = meta
        self._lock = threading.Lock()
        self._closed = False  # GUARDED_BY(_lock); read alone
        self._failure: BaseException | None = None  # GUARDED_BY(_lock); read alone

    # ---- life ----

    @property
    def closed(self) -> bool:
        return self._closed

    def begin_closing(self) -> bool:
        """Close begins: True for the one caller that begins it."""
        with self._lock:
            if self._closed or self.closing.is_set():
                return False
            self.closing.set()
            return True

    def close(self) -> None:
        """Closed: the asyncio face's threads end once the calls they run have answered."""
        with self._lock:
            self._closed = True
        self.workers.stop()

    def closing_or_closed(self) -> bool:
        return self.closing.is_set() or self._closed

    def check_open(self) -> None:
        if self._closed:
            raise StreamClosed("the store is closed")

    @property
    def meta(self) -> MetadataStore:
        """The metadata store (StreamClosed once the store is closed)."""
        if self._closed:
            raise StreamClosed("the store is closed")
        return self._meta

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def fail(self, error: BaseException) -> bool:
        """Appends stop for good (the first failure is kept). Returns whether it was the
        first. This node taken over is logged here, once (a failed WAL, by the WAL)."""
        with self._lock:
            if self._failure is not None:
                return False
            self._failure = error
        if isinstance(error, FencedError):
            log.warning(describe(
                "this node is fenced: another process registered its node id (a take-over, or "
                "the same node opened elsewhere); it appends and commits nothing more, and "
                "its streams are the other process's", node=self.id, node_epoch=self.epoch,
                error=error))
        return True

    @property
    def taken_over(self) -> bool:
        """Whether another process registered this node since it opened (a take-over, or the
        same node id opened again elsewhere)."""
        return isinstance(self._failure, FencedError)

    def check_appendable(self) -> None:
        """Raise what an append meets on a node that can no longer append."""
        if self.closing.is_set():
            raise StreamClosed("the store is closing")
        failure = self._failure
        if isinstance(failure, FencedError):
            raise FencedError(describe("another process took over this store's node",
                                       node=self.id, error=str(failure)))
        if failure is not None:
            raise StorageUnavailable(describe("the WAL failed; reopen the store",
                                              error=repr(failure)))

    def fenced_by_metadata(self) -> bool:
        """Whether the metadata says another process registered this node id since it opened
        (a commit refused as fenced may be one stream's: that stops this stream, not the
        node)."""
        try:
            return self.meta.node(self.id).node_epoch != self.epoch
        except Exception:  # cannot tell: assume the worst
            return True

    # ---- streams ----

    def stream_key(self, state: StreamState) -> StreamKey:
        """The stream's name in the message cache (stores on one bucket share it)."""
        return (self.objects_url, state.id)

    def forget(self, state: StreamState) -> None:
        """The stream was destroyed (here or by another node): drop what this node holds of
        it; appends still in the WAL complete but nothing uploads them."""
        forgotten = state.forget()
        if forgotten is not None:
            freed, pinned = forgotten
            self.cache.unpin(self.scope, weight(pinned))
            self.cache.drop_log(self.scope, state.id)
            self.backlog.dropped(freed)
        self.streams.remove(state)


__all__ = ["Backlog", "Node"]
