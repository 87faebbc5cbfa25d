"""A catch-up reader's readahead window, as the message cache sizes it (docs/cache.md, "Readers
and readahead"): the :class:`Reader` the cache tracks, the room the cache can give its window,
and how the window grows and shrinks.

A window never asks for more than that room: the budget less pinned bytes, loads in flight, and
the blocks and log chunks ahead of a reader (the other readers' and its own current ones), but
for the blocks already in its window. A block loaded for a window and then not read from memory
(evicted unread, or not kept for lack of room) halves the window, from what the room allowed.

Lock order: none of its own; every function runs under ``MessageCache._lock`` (the caller's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

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
    give it (``free``, what pinned bytes and loads in flight leave of the budget, less what
    ``held`` holds ahead of ``readers``), less the blocks in it."""
    lowest: dict[StreamKey, int] = {}
    for other in readers:
        lowest[other.stream] = min(other.position, lowest.get(other.stream, other.position))
    mine = {end for end, _ in reader.ahead}
    room = free
    for block in held:
        low = lowest.get(block.stream)
        if low is None or block.end <= low:
            continue  # idle, or behind every reader: a readahead may evict it
        if block.stream == reader.stream and block.release is None and block.end in mine:
            continue  # in this window already
        room -= block.size
    reader.room = max(room, 0)
    return min(reader.window, reader.room) - sum(size for _, size in reader.ahead)


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


__all__ = ["COOLDOWN", "Held", "Reader", "StreamKey", "grow", "shrink", "window_left"]
