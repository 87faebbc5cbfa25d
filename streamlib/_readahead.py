"""The catch-up readers the message cache tracks and their readahead windows (docs/cache.md,
"Readers and readahead"): each :class:`Reader`, the :class:`Readers` of a cache (found by where
their next fetch starts), the room the cache can give a window, and how a window grows and
shrinks.

A window never asks for more than that room: the budget less pinned bytes, loads in flight, and
the blocks and log chunks ahead of a reader (the other readers' and its own current ones), but
for the blocks already in its window. A block loaded for a window and then not read from memory
(evicted unread, or not kept for lack of room) halves the window, from what the room allowed.

Lock order: none of its own; every function and method runs under ``MessageCache._lock`` (the
caller's), but for :meth:`Readers.forget`, which takes no lock.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from streamlib.objects import IndexEntry, ObjectReader

REFILL = 4
"""A background readahead starts once its window has this fraction (1/REFILL) of its room
free, so that it asks for a few large GETs rather than a block after each fetch."""
COOLDOWN = 5.0
"""Seconds a reader's window stops growing after a block loaded for it went unread."""

StreamKey = tuple[str, int]
"""``(objects URL, stream id)``."""


@dataclass(slots=True)
class Reader:
    """One sequential reader of one stream, as the cache sees it. ``id`` and ``stream`` are
    fixed; every other field is GUARDED_BY(MessageCache._lock): only the cache reads or changes
    them, under its lock."""

    id: int
    stream: StreamKey
    position: int
    last_seen: float
    window: int
    room: int = 0
    """What the cache could give its window when it last asked (:func:`window_left`)."""
    sequential: int = 0
    """Fetches so far that continued where the one before ended."""
    prefetched_to: int = 0
    """Offset up to which readahead was already asked for."""
    cooldown_until: float = 0.0
    ahead: list[tuple[int, int]] = field(default_factory=list)
    """(end offset, bytes) of the blocks prefetched beyond ``position`` and kept."""
    prefetching: bool = False
    """A readahead of it is being planned (its parts then load on their own)."""
    loading: int = 0
    """Bytes reserved for its readahead's loads in flight (claimed, not yet admitted)."""


class Readers:
    """The readers of one message cache: every method runs under ``MessageCache._lock`` (the
    caller's), and so every field is GUARDED_BY(MessageCache._lock), but ``_forgotten``
    (appended alone: a deque's append is atomic; emptied under the lock)."""

    def __init__(self, first_window: int, timeout: float) -> None:
        self.first_window = first_window
        self.timeout = timeout
        self._readers: dict[int, Reader] = {}
        self._by_position: dict[tuple[StreamKey, int], list[int]] = {}  # where fetches start
        self._forgotten: deque[Reader] = deque()
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._readers)

    def __contains__(self, reader: Reader) -> bool:
        return reader.id in self._readers

    def get(self, reader_id: int | None) -> Reader | None:
        return None if reader_id is None else self._readers.get(reader_id)

    def values(self) -> Iterable[Reader]:
        return self._readers.values()

    def positions(self) -> dict[StreamKey, list[int]]:
        """Where the readers of each stream are."""
        found: dict[StreamKey, list[int]] = {}
        for reader in self._readers.values():
            found.setdefault(reader.stream, []).append(reader.position)
        return found

    def at(self, stream: StreamKey, offset: int, mine: Reader | None, now: float) -> Reader:
        """The reader of a fetch at ``offset``: ``mine`` (a ``read()`` iterator's own), else
        one whose last fetch ended at ``offset``, else a new one."""
        self.settle(now)
        reader = None
        if mine is not None and mine.position == offset and mine.stream == stream:
            reader = mine
            self._unplace(reader)
            self._readers.setdefault(reader.id, reader)  # expired meanwhile: it is back
        else:
            waiting = self._by_position.get((stream, offset))
            while waiting and reader is None:
                reader = self._readers.get(waiting.pop())
            if waiting == []:
                del self._by_position[(stream, offset)]
        if reader is None:
            reader = Reader(next(self._ids), stream, offset, now, self.first_window,
                            prefetched_to=offset)
            self._readers[reader.id] = reader
        else:
            reader.sequential += 1
        reader.last_seen = now
        return reader

    def advance(self, reader: Reader, offset: int) -> None:
        """``reader``'s fetch ended at ``offset``: its next fetch starts there."""
        self._unplace(reader)
        reader.position = offset
        reader.prefetched_to = max(reader.prefetched_to, offset)
        reader.ahead = [(end, size) for end, size in reader.ahead if end > offset]
        if reader.id in self._readers:
            self._by_position.setdefault((reader.stream, offset), []).append(reader.id)

    def forget(self, reader: Reader) -> None:
        """``reader`` is done: dropped by the next :meth:`settle` (takes no lock)."""
        self._forgotten.append(reader)

    def settle(self, now: float | None) -> None:
        """Drop the readers forgotten, and (``now`` given) those not seen for ``timeout``."""
        while self._forgotten:
            self._drop(self._forgotten.popleft())
        if now is not None:
            for reader in [r for r in self._readers.values()
                           if now - r.last_seen > self.timeout]:
                self._drop(reader)

    def _unplace(self, reader: Reader) -> None:
        waiting = self._by_position.get((reader.stream, reader.position))
        if waiting is not None and reader.id in waiting:
            waiting.remove(reader.id)
            if not waiting:
                del self._by_position[(reader.stream, reader.position)]

    def _drop(self, reader: Reader) -> None:
        self._readers.pop(reader.id, None)
        self._unplace(reader)


class Part:
    """A readahead's run of blocks of one object, claimed in the message cache (their room
    reserved, marked loading: a read that needs one waits for it): :meth:`run` loads them with
    one ranged GET and admits them; :meth:`drop` gives the claim back, failing the reads that
    wait with ``error``. Exactly one of the two is called, once, on any thread: the read
    path's readahead pool runs several parts at once."""

    __slots__ = ("_drop", "_run", "entries", "reader")

    def __init__(self, reader: ObjectReader, entries: list[IndexEntry],
                 run: Callable[[], None], drop: Callable[[BaseException], None]) -> None:
        self.reader = reader
        self.entries = entries
        self._run = run
        self._drop = drop

    def run(self) -> None:
        self._run()

    def drop(self, error: BaseException) -> None:
        self._drop(error)


class Held(Protocol):
    """A block or log chunk in the cache, as far as a window's room depends on it."""

    stream: StreamKey
    end: int
    size: int
    release: Callable[[int], None] | None
    """Set for a log chunk."""


def window_left(reader: Reader, readers: Iterable[Reader], held: Iterable[Held],
                free: int) -> int:
    """What ``reader``'s window has left to load: the window, bounded by the room the cache can
    give it (``free``, what pinned bytes and loads in flight leave of the budget, and its own
    loads in flight, less what ``held`` holds ahead of ``readers``), less the blocks in it and
    its loads in flight."""
    lowest: dict[StreamKey, int] = {}
    for other in readers:
        lowest[other.stream] = min(other.position, lowest.get(other.stream, other.position))
    mine = {end for end, _ in reader.ahead}
    room = free + reader.loading
    for block in held:
        low = lowest.get(block.stream)
        if low is None or block.end <= low:
            continue  # idle, or behind every reader: a readahead may evict it
        if block.stream == reader.stream and block.release is None and block.end in mine:
            continue  # in this window already
        room -= block.size
    reader.room = max(room, 0)
    return (min(reader.window, reader.room) - sum(size for _, size in reader.ahead)
            - reader.loading)


def grow(reader: Reader, now: float, most: int) -> None:
    """``reader`` read a block loaded for it: its window doubles, up to ``most``, unless it
    cools down."""
    if now >= reader.cooldown_until:
        reader.window = min(reader.window * 2, most)


def shrink(reader: Reader, block: Held, now: float, most: int) -> None:
    """A block loaded for ``reader`` went unread: its window halves from what the room allowed
    (no less than that block, no more than ``most``) and cools down; the block leaves it."""
    reader.window = min(max(min(reader.window, reader.room) // 2, block.size), most)
    reader.cooldown_until = now + COOLDOWN
    if (block.end, block.size) in reader.ahead:
        reader.ahead.remove((block.end, block.size))


__all__ = ["COOLDOWN", "REFILL", "Held", "Part", "Reader", "Readers", "StreamKey", "grow",
           "shrink", "window_left"]
