"""Retention: each stream's :class:`~streamlib.meta.Retention` (or the store's default) applied
by the stream's owner as ordinary trims, at block granularity from the object indexes, no data
read (docs/lifecycle.md, "Retention").

- ``max_age``: trim to the first block whose newest record is at or after ``now - max_age``:
  every record younger than that is kept (a block holding both stays whole);
- ``max_bytes``: trim to the start of the earliest block such that the stored bytes from it
  to the end of the uploaded data are at most ``max_bytes``.

Only uploaded data is considered: what is still in the WAL is never trimmed by retention, and
counts for neither limit. The trimmed objects leave through the deletion pass.

Lock order: no lock of its own; the trim it calls takes the store's (``node.changes``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from streamlib.config import Config
from streamlib.io import ObjectStore
from streamlib.meta import MetadataStore, Retention, StreamObject
from streamlib.objects import IndexCache, IndexEntry, ObjectIndex, ObjectReader

log = logging.getLogger(__name__)


def default_retention(config: Config) -> Retention | None:
    """The store's default retention (``retention_max_age_ms``, ``retention_max_bytes``; 0:
    no limit), for streams that have none of their own."""
    age = config.retention_max_age_ms or None
    size = config.retention_max_bytes or None
    return Retention.from_ms(age, size)


def retention_point(stream_id: int, start_offset: int, objects: Sequence[StreamObject],
                    index_of: Callable[[StreamObject], ObjectIndex], retention: Retention,
                    now_ms: int) -> int:
    """The offset ``retention`` trims the stream to, given its committed ``objects`` (in
    offset order, from ``start_offset``); ``start_offset`` when nothing is to go."""
    point = start_offset
    if retention.max_age_ms is not None and objects:
        point = max(point, _age_point(stream_id, start_offset, objects, index_of,
                                      now_ms - retention.max_age_ms))
    if retention.max_bytes is not None and objects:
        point = max(point, _size_point(stream_id, start_offset, objects, index_of,
                                       retention.max_bytes))
    return point


def _blocks(stream_id: int, start_offset: int, obj: StreamObject,
            index_of: Callable[[StreamObject], ObjectIndex]) -> list[IndexEntry]:
    r = obj.range
    return index_of(obj).blocks(stream_id, max(start_offset, r.start_offset), r.end_offset)


def _age_point(stream_id: int, start_offset: int, objects: Sequence[StreamObject],
               index_of: Callable[[StreamObject], ObjectIndex], cutoff_ms: int) -> int:
    for obj in objects:
        for entry in _blocks(stream_id, start_offset, obj, index_of):
            if entry.max_timestamp >= cutoff_ms:
                return max(start_offset, entry.start_offset)
    return objects[-1].range.end_offset  # everything uploaded is older


def _size_point(stream_id: int, start_offset: int, objects: Sequence[StreamObject],
                index_of: Callable[[StreamObject], ObjectIndex], max_bytes: int) -> int:
    kept = 0
    point = objects[-1].range.end_offset
    for obj in reversed(objects):
        if kept + obj.range.size <= max_bytes:  # the whole range stays
            kept += obj.range.size
            point = obj.range.start_offset
            continue
        for entry in reversed(_blocks(stream_id, start_offset, obj, index_of)):
            if kept + entry.size > max_bytes:
                break
            kept += entry.size
            point = entry.start_offset
        break
    return max(start_offset, point)


@dataclass(frozen=True, slots=True)
class Owned:
    """A stream this node owns, as retention needs it: its id, and how to trim it."""

    stream_id: int
    trim: Callable[[int], None]


class Retainer:
    """Applies retention to the streams this node owns (``owned()``), reading object indexes
    through ``stores`` (by tier)."""

    def __init__(self, *, meta: MetadataStore, stores: dict[str, ObjectStore], config: Config,
                 owned: Callable[[], Iterable[Owned]],
                 clock: Callable[[], float] = time.time) -> None:
        self._meta = meta
        self._stores = stores
        self._config = config
        self._owned = owned
        self._clock = clock
        self._default = default_retention(config)
        self._indexes = IndexCache(4 << 20)

    def apply(self, stopping: Callable[[], bool]) -> int:
        """Trim every owned stream its retention says to; returns how many were trimmed. A
        stream that fails is logged and left for the next pass."""
        trimmed = 0
        now_ms = int(self._clock() * 1000)
        for owned in self._owned():
            if stopping():
                break
            try:
                meta = self._meta.get_stream(owned.stream_id)
                retention = meta.retention or self._default
                if retention is None:
                    continue
                objects = self._meta.stream_objects(meta.id, meta.start_offset)
                point = retention_point(meta.id, meta.start_offset, objects, self._index,
                                        retention, now_ms)
                if point > meta.start_offset:
                    owned.trim(point)
                    trimmed += 1
            except Exception as error:
                log.warning("retention of stream %d failed: %r", owned.stream_id, error)
        return trimmed

    def _index(self, obj: StreamObject) -> ObjectIndex:
        reader = ObjectReader(self._stores[obj.tier], obj.key, obj.size, cache=self._indexes,
                              max_block_bytes=self._config.max_block_bytes)
        return reader.index()


__all__ = ["Owned", "Retainer", "default_retention", "retention_point"]
