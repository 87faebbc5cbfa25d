"""``streamlib dump``: a stream's records, read from outside (docs/guide.md, "Operating"): what
is committed in objects, then what the node's file WAL holds beyond the committed end
(acknowledged, not yet uploaded). Nothing is written."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from streamlib.errors import OffsetOutOfRange, StreamNotFound, describe
from streamlib.meta import StreamMeta
from streamlib.objects import ObjectReader
from streamlib.records import Record, RecordBatch
from streamlib.tools.inspection import read_wal
from streamlib.tools.opening import OpenedStore


def find_stream(store: OpenedStore, stream: str) -> StreamMeta:
    """The live stream named ``stream``, or with that id (StreamNotFound naming it)."""
    try:
        return store.meta.get_stream_by_name(stream)
    except StreamNotFound:
        if not stream.isdigit():
            raise StreamNotFound(describe("no live stream of that name", stream=stream)) from None
    try:
        return store.meta.get_stream(int(stream))
    except StreamNotFound:
        raise StreamNotFound(describe("no live stream of that name or id",
                                      stream=stream)) from None


def batches(store: OpenedStore, meta: StreamMeta, from_offset: int | None = None, *,
            wal: bool = True) -> Iterator[RecordBatch]:
    """The stream's batches holding records at or after ``from_offset`` (default: its start),
    in offset order, each with its ``base_offset``: the committed ones, then (``wal``) those of
    the file WAL beyond them. The first may begin before ``from_offset``."""
    start = meta.start_offset if from_offset is None else from_offset
    if not meta.start_offset <= start:
        raise OffsetOutOfRange(meta.id, start, meta.start_offset, meta.end_offset)
    end = meta.start_offset
    for obj in store.meta.stream_objects(meta.id, start):
        reader = ObjectReader(store.store_for(obj.tier), obj.key, obj.size)
        for batch in reader.read(meta.id, max(start, obj.range.start_offset),
                                 obj.range.end_offset):
            yield batch
            end = batch.next_offset
    end = max(end, meta.end_offset)
    report = read_wal(store, keep_stream=meta.id) if wal else None
    if report is None:
        return
    for record in report.records:
        held = record.batch
        if held is None or record.base_offset + record.record_count <= max(end, start):
            continue
        if record.base_offset != end:
            break  # a gap (verify reports it): what follows cannot be placed
        yield held
        end = held.next_offset


def records(store: OpenedStore, meta: StreamMeta, from_offset: int | None = None,
            count: int | None = None) -> Iterator[tuple[int, Record | RecordBatch]]:
    """``(offset, record)`` of the stream from ``from_offset``, at most ``count`` of them; an
    opaque batch (a broker's own format) comes whole, as ``(base offset, batch)``."""
    start = meta.start_offset if from_offset is None else from_offset
    left = count
    for batch in batches(store, meta, start):
        base = batch.base_offset or 0
        if batch.encoding != "records":
            if base + batch.count > start:
                yield base, batch
                if left is not None:
                    left -= 1
            if left is not None and left <= 0:
                return
            continue
        for i, record in enumerate(batch.records()):
            if left is not None and left <= 0:
                return
            if base + i >= start:
                yield base + i, record
                if left is not None:
                    left -= 1
        if left is not None and left <= 0:
            return


def shown_bytes(data: bytes) -> str | dict[str, str]:
    """``data`` as UTF-8 text when it is printable text (tabs and line ends allowed), else
    ``{"base64": ...}``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}
    if text.translate(_WHITESPACE).isprintable():
        return text
    return {"base64": base64.b64encode(data).decode("ascii")}


_WHITESPACE = str.maketrans("\t\n\r", "   ")


def as_json(offset: int, item: Record | RecordBatch) -> dict[str, Any]:
    """One line of ``dump --format json``."""
    if isinstance(item, RecordBatch):
        return {"offset": offset, "count": item.count, "timestamp": item.base_timestamp,
                "opaque": shown_bytes(item.payload)}
    return {"offset": offset, "timestamp": item.timestamp,
            "key": None if item.key is None else shown_bytes(item.key),
            "headers": [[name, shown_bytes(value)] for name, value in item.headers],
            "value": shown_bytes(item.value)}


def raw_value(item: Record | RecordBatch) -> bytes:
    """What ``dump --format raw`` writes of one record (an opaque batch: its payload)."""
    return item.payload if isinstance(item, RecordBatch) else item.value


__all__ = ["as_json", "batches", "find_stream", "raw_value", "records", "shown_bytes"]
